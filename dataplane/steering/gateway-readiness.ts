// Whether a gateway node can take steered flows, as its agent answers node agents on
// `GET /steering`: the status code is the contract (200 ready, 503 not), the body says why for
// people and logs. The body holds no flow, pod or uplink detail: node agents anywhere in the
// cluster may read it.
import type { ServerResponse } from 'node:http';
import type { CompiledUplink } from '../../contracts/gateway/index.ts';
import type { AgentReport } from '../agent-report.ts';
import { carries } from '../render.ts';

export interface SteeringReadiness {
  /** The agent applied its config and at least one uplink of either family is healthy. */
  ready: boolean;
  /** Hash of the config the kernel holds; absent before the first sync or for a config without one. */
  hash?: string;
  /** Per family, whether a healthy uplink of this node carries it. */
  ipv4: boolean;
  ipv6: boolean;
  /**
   * The gateway's failover addresses this node owns now (canonical, sorted): a node agent steers a
   * pod whose egress address is one of them to this node. Absent for a gateway without failover.
   */
  addresses?: string[];
  /**
   * Whether this node renews its failover Lease on schedule, so reaches the API server (a gateway
   * with failover addresses only): the other gateway nodes keep their addresses through an outage
   * of the API server only while every node they hear has lost it too.
   */
  apiserver?: boolean;
}

/**
 * The answer to `/steering` from the agent's report and this node's uplinks (localUplinks). The
 * config counts as applied when the last sync succeeded, as for `/readyz`; an uplink the report
 * does not name yet counts as healthy, as everywhere in the agent.
 */
export function steeringReadiness(report: AgentReport, uplinks: readonly CompiledUplink[]): SteeringReadiness {
  const applied = report.lastSync !== undefined && !report.lastSync.error;
  const healthy = new Map(report.uplinks.map((u) => [u.name, u.healthy]));
  const up = uplinks.filter((u) => healthy.get(u.name) !== false);
  const ipv4 = up.some((u) => carries(u, 4));
  const ipv6 = up.some((u) => carries(u, 6));
  return {
    ready: applied && (ipv4 || ipv6),
    ...(report.appliedHash ? { hash: report.appliedHash } : {}),
    ipv4,
    ipv6,
    ...(report.failoverAddresses ? { addresses: report.failoverAddresses } : {}),
  };
}

/**
 * The request header that asks `/steering` for a stream of answers instead of one: its value is the
 * interval in milliseconds. The stream is a 200 with one SteeringReadiness JSON line per interval
 * (application/x-ndjson), the first at once, so that a node agent follows a gateway node on one
 * connection. An agent that does not know the header answers once, as to any GET.
 */
export const steeringStreamHeader = 'naat-stream-interval-ms';

/** The interval a request asks for in steeringStreamHeader, kept within 50 ms – 10 s; undefined when it asks for none. */
export function steeringStreamInterval(value: string | string[] | undefined): number | undefined {
  const ms = Number(Array.isArray(value) ? value[0] : value);
  if (value === undefined || !Number.isFinite(ms) || ms <= 0) return undefined;
  return Math.min(10_000, Math.max(50, Math.round(ms)));
}

/**
 * Streams `/steering` answers on `res` (the request asked for them with steeringStreamHeader): the
 * first at once, then one every `intervalMs`, and one at once whenever `follow` calls its
 * listener (a claim or release of a failover address, so that node agents move an address's flows
 * without waiting for the next interval; a change of the node's word on the apiserver, which the
 * other gateway nodes must hear before their fences fall). `follow` returns what stops the
 * listening; both end when the connection does.
 */
export function streamSteering(
  res: ServerResponse,
  intervalMs: number,
  answer: () => SteeringReadiness,
  follow?: (listener: () => void) => () => void,
): void {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  const send = () => res.write(`${JSON.stringify(answer())}\n`);
  send();
  const timer = setInterval(send, intervalMs);
  const unfollow = follow?.(send);
  res.on('close', () => {
    clearInterval(timer);
    unfollow?.();
  });
}
