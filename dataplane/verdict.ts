// What the gateway does with the first packet of a flow, read off the ruleset the kernel holds by
// tracing the packet through it: allowed or denied, through which uplink, by which rule.
import type { Flow } from './conntrack.ts';
import type { L4, Table } from './nft/model.ts';
import { trace, type Packet, type TableIndex } from './nft/trace.ts';
import { valueOf, type MarkField } from '../contracts/gateway/index.ts';
import type { FlowAssociation } from './render.ts';
import type { AttributionUpdate } from './attribution.ts';

export interface FlowVerdict {
  allowed: boolean;
  /**
   * The uplink new flows of this kind leave through; absent when they are balanced over several
   * (`balanced`) or leave through none (a bypassed destination, the node itself).
   */
  uplink?: string;
  /** New flows of this kind are balanced over several uplinks: each may take another. */
  balanced?: boolean;
  /** namespace/name#rule of the policy rule that decided; absent for the default action. */
  rule?: string;
}

/** The first packet of an association's flow; undefined for an unconnected socket, whose destinations vary. */
export function associationPacket(a: FlowAssociation): Packet | undefined {
  if (!a.destinationAddress || !a.destinationPort) return undefined;
  return {
    family: a.sourceAddress.includes(':') ? 6 : 4,
    saddr: a.sourceAddress,
    daddr: a.destinationAddress,
    protocol: a.transport,
    sport: a.sourcePort,
    dport: a.destinationPort,
  };
}

/** The first packet of a flow conntrack reported. */
export function flowPacket(flow: Flow): Packet {
  return {
    family: flow.family,
    saddr: flow.source,
    daddr: flow.destination,
    protocol: flow.protocol as L4,
    sport: flow.sourcePort,
    dport: flow.destinationPort,
  };
}

/**
 * What `table` does with `packet` in prerouting; `uplinkName` names the uplink of the id in the
 * `uplinks` bits of the mark. The trace balances as if every pick chose its first slot, so the
 * uplink it reached is named only when no pick chose it.
 */
export function traceVerdict(
  table: Table | TableIndex,
  packet: Packet,
  uplinks: MarkField,
  uplinkName: (id: number) => string | undefined,
): FlowVerdict {
  const result = trace(table, 'prerouting', packet);
  const uplink = uplinkName(valueOf(uplinks, result.ctMark));
  const through = result.verdict === 'accept' && uplink !== undefined;
  return {
    allowed: result.verdict === 'accept',
    ...(through ? (result.picked ? { balanced: true } : { uplink }) : {}),
    ...(result.rule ? { rule: result.rule } : {}),
  };
}

/** `namespace/name#rule` as the rule's comment holds it, split. */
export function ruleOf(verdict: FlowVerdict | undefined): Pick<AttributionUpdate, 'policy' | 'rule'> {
  const at = verdict?.rule?.lastIndexOf('#') ?? -1;
  if (!verdict?.rule || at < 0) return {};
  return { policy: verdict.rule.slice(0, at), rule: verdict.rule.slice(at + 1) };
}
