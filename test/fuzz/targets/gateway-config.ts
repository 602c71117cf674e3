// The gateway config parser on any bytes read as JSON (what the operator writes and a file may
// hold). Invariant: `parseGatewayConfig` returns a config or throws a ConfigError, nothing else;
// and whatever it returns renders (the ruleset and its nft text, the steering tunnel on a node
// with an underlay of both families) without throwing.
import { ConfigError, parseGatewayConfig, type GatewayConfig } from '../../../contracts/gateway/index.ts';
import { renderTable } from '../../../dataplane/nft/model.ts';
import { maxUplinkId, render, uplinkMarks } from '../../../dataplane/render.ts';
import { allocateUplinkIds } from '../../../dataplane/uplink-ids.ts';
import { jsonOf } from '../json.ts';

const underlay = new Map([
  [4, { address: '192.0.2.1', mtu: 1500 }],
  [6, { address: '2001:db8::1', mtu: 1500 }],
] as const);

export function fuzz(data: Buffer): void {
  const input = jsonOf(data);
  if (input === undefined) return;
  let config: GatewayConfig;
  try {
    config = parseGatewayConfig(input);
  } catch (error) {
    if (error instanceof ConfigError) return;
    throw error;
  }
  const names = config.uplinks.map((u) => u.name);
  const ids = allocateUplinkIds(new Map(), names, maxUplinkId(uplinkMarks(config)));
  // The first uplink's first node, so that uplinks limited to some nodes render too.
  const node = config.uplinks.find((u) => u.nodes?.length)?.nodes?.[0] ?? 'node-1';
  renderTable(render({ config, node, ids, health: new Map(), underlay }).table);
}
