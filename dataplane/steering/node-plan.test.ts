import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseNodeConfig } from '../../contracts/gateway/index.ts';
import { renderTable } from '../nft/model.ts';
import { trace, type Packet } from '../nft/trace.ts';
import { nodeTableName, peerKey, peerKeys, planNode, type NodePlanInput } from './node-plan.ts';
import { rendezvous } from '../../common/index.ts';
import { tunnelLinkLocal, tunnelMac } from './tunnel.ts';

const testdata = join(import.meta.dirname, 'testdata');
const config = parseNodeConfig(JSON.parse(await readFile(join(testdata, 'node.json'), 'utf8')));
const ids = new Map(peerKeys(config).map((key, i) => [key, i + 1]));
const underlay = new Map([[4 as const, { address: '192.168.0.1', mtu: 1500 }]]);
const input = (change: Partial<NodePlanInput> = {}): NodePlanInput => ({
  config,
  ids,
  up: new Set(ids.keys()),
  underlay,
  ...change,
});
const mark = (gateway: string, node: string) => ids.get(peerKey(gateway, node))! << 5;
const newFlow = (saddr: string, daddr: string, extra: Partial<Packet> = {}): Packet => ({
  family: saddr.includes(':') ? 6 : 4,
  saddr,
  daddr,
  protocol: 'tcp',
  dport: 443,
  iifname: 'veth-web',
  ...extra,
});

describe('planNode', () => {
  it('renders the golden table for the sample config (UPDATE_GOLDEN=1 rewrites it)', async () => {
    const text = renderTable(planNode(input()).table, nodeTableName);
    const file = join(testdata, 'node.nft');
    if (process.env.UPDATE_GOLDEN) await writeFile(file, text);
    expect(text).toBe(await readFile(file, 'utf8'));
  });

  it("pins a pod's new flows of both families to its rendezvous peer, the same on every node", () => {
    const { table } = planNode(input());
    const chosen = rendezvous('shop/web-1', ['gateway-a', 'gateway-b'])!;
    for (const [saddr, daddr] of [
      ['10.244.1.2', '203.0.113.10'],
      ['fd00:244:1::2', '2001:db8:113::10'],
    ] as const) {
      const result = trace(table, 'prerouting', newFlow(saddr, daddr));
      expect(result.verdict).toBe('accept');
      expect(result.ctMark).toBe(mark('egress', chosen));
      expect(result.mark).toBe(mark('egress', chosen));
    }
  });

  it('moves the pods of a peer that is down, and drops new flows when no peer is up', () => {
    const chosen = rendezvous('shop/web-1', ['gateway-a', 'gateway-b'])!;
    const other = chosen === 'gateway-a' ? 'gateway-b' : 'gateway-a';
    const down = planNode(input({ up: new Set([peerKey('egress', other)]) }));
    expect(trace(down.table, 'prerouting', newFlow('10.244.1.2', '203.0.113.10')).ctMark).toBe(mark('egress', other));
    const none = planNode(input({ up: new Set() }));
    expect(trace(none.table, 'prerouting', newFlow('10.244.1.2', '203.0.113.10')).verdict).toBe('drop');
    expect(trace(none.table, 'prerouting', newFlow('10.244.1.4', '203.0.113.10')).verdict).toBe('drop');
  });

  it('leaves bypassed and local destinations, other sources and known flows alone', () => {
    const { table } = planNode(input());
    for (const packet of [
      newFlow('10.244.1.2', '10.96.0.1'),
      newFlow('10.244.1.2', '192.168.0.1', { local: true }),
      newFlow('10.244.9.9', '203.0.113.10'),
      newFlow('10.244.1.2', '203.0.113.10', { isNew: false }),
    ]) {
      const result = trace(table, 'prerouting', packet);
      expect(result.verdict).toBe('accept');
      expect(result.ctMark).toBe(0);
    }
  });

  it('restores a pinned flow into the packet mark, keeping the bits of others', () => {
    const { table } = planNode(input());
    const pinned = mark('egress', 'gateway-b');
    const result = trace(table, 'prerouting', {
      ...newFlow('203.0.113.10', '10.244.1.2', { direction: 'reply', isNew: false }),
      ctMark: pinned | 0x4000,
      mark: 0x4000,
    });
    expect(result.mark).toBe(pinned | 0x4000);
  });

  it('places each new flow of a Flow-selection gateway on its own among the up peers', () => {
    const { table } = planNode(input());
    const first = trace(table, 'prerouting', newFlow('10.244.1.4', '203.0.113.10'), { random: () => 0 });
    const second = trace(table, 'prerouting', newFlow('10.244.1.4', '203.0.113.10'), { random: () => 1 });
    expect(new Set([first.ctMark, second.ctMark])).toEqual(
      new Set([mark('batch', 'gateway-a'), mark('batch', 'gateway-c')]),
    );
  });

  it('pins a new flow from the tunnel to the peer that sent it, so that its replies go back there', () => {
    const { table } = planNode(input());
    const result = trace(
      table,
      'prerouting',
      newFlow('203.0.113.10', '10.244.1.2', { iifname: 'naatn7700', etherSaddr: tunnelMac('gateway-b') }),
    );
    expect(result.ctMark).toBe(mark('egress', 'gateway-b'));
  });

  it("binds a steered flow's source to the pod's own address before the CNI's masquerade", () => {
    const { table } = planNode(input());
    const postrouting = table.chains.find((c) => c.name === 'postrouting')!;
    expect(postrouting.base).toEqual({ type: 'nat', hook: 'postrouting', priority: 99 });
    const result = trace(table, 'postrouting', {
      ...newFlow('10.244.1.2', '203.0.113.10', { oifname: 'naatn7700' }),
      ctMark: mark('egress', 'gateway-a'),
    });
    expect(result.nat).toEqual({ kind: 'snat', address: '10.244.1.2' });
  });

  it('plans one device per gateway with its peers, a table per peer and the rules that lead to them', () => {
    const { tunnels } = planNode(input());
    expect(tunnels.devices.map((d) => [d.name, d.vni, d.mtu, d.local, d.peers.map((p) => p.remote)])).toEqual([
      ['naatn7700', 7700, 1450, '192.168.0.1', ['192.168.0.11', '192.168.0.12']],
      ['naatn7701', 7701, 1450, '192.168.0.1', ['192.168.0.11', '192.168.0.13']],
    ]);
    // Replies from the tunnels pass strict reverse-path filtering by their mark.
    expect(tunnels.sysctls).toEqual([['net/ipv4/conf/all/src_valid_mark', '1']]);
    const id = ids.get(peerKey('egress', 'gateway-a'))!;
    expect(tunnels.routes).toContainEqual({
      family: 4,
      table: 7800 + id,
      destination: 'default',
      device: 'naatn7700',
      via: tunnelLinkLocal('gateway-a'),
    });
    expect(tunnels.rules).toEqual(
      expect.arrayContaining([
        { family: 4, preference: 7800, table: 7800 + id, fwmark: { value: id << 5, mask: 0xe0 } },
        { family: 6, preference: 7798, table: 'main', iif: 'naatn7700' },
        { family: 4, preference: 7797, table: 'main', from: '192.168.0.1' },
      ]),
    );
  });

  it('says which gateway it cannot set up without an underlay of its family', () => {
    const plan = planNode(input({ underlay: new Map([[6, { address: 'fd00:192::1', mtu: 1500 }]]) }));
    expect([...plan.problems.keys()]).toEqual(['egress', 'batch']);
    expect(plan.tunnels.devices).toEqual([]);
    expect(plan.tunnels.sysctls).toBeUndefined();
  });
});
