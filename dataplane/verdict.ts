// What the gateway does with the first packet of a flow, read off the ruleset the kernel holds by
// tracing the packet through it: allowed or denied, through which uplink, by which rule.
import type { Flow } from './conntrack.ts';
import type { L4, Table } from './nft/model.ts';
import { TableIndex, trace, type Packet } from './nft/trace.ts';
import { canonicalAddress, valueOf, type MarkField } from '../contracts/gateway/index.ts';
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

/**
 * What one ruleset does with the first packets of new flows (flowPacket, associationPacket), each
 * kind of flow traced once. Such a packet meets the rules with its family, protocol, addresses and
 * destination port; its source port matters only to the association maps, so flows that differ in
 * their source port alone share a verdict unless the maps hold one of them. At most `limit` kinds
 * are kept; past that all are forgotten and traced again.
 */
export class FlowVerdicts {
  readonly #index: TableIndex;
  readonly #marks: MarkField;
  readonly #uplinkName: (id: number) => string | undefined;
  readonly #limit: number;
  readonly #verdicts = new Map<string, FlowVerdict>();
  /** The (source address, protocol, source port) of each association map element, read when first needed. */
  #associations: Set<string> | undefined;
  /** Source addresses as the association maps write them (canonicalAddress). */
  readonly #sources = new Map<string, string>();

  constructor(table: Table, marks: MarkField, uplinkName: (id: number) => string | undefined, limit = 10_000) {
    this.#index = new TableIndex(table);
    this.#marks = marks;
    this.#uplinkName = uplinkName;
    this.#limit = limit;
  }

  of(packet: Packet): FlowVerdict {
    const { family, protocol, saddr, daddr, dport } = packet;
    const key = `${family} ${protocol} ${saddr} ${daddr} ${dport}${this.#associated(packet) ? ` ${packet.sport}` : ''}`;
    let verdict = this.#verdicts.get(key);
    if (!verdict) {
      if (this.#verdicts.size >= this.#limit) {
        this.#verdicts.clear();
        this.#sources.clear();
      }
      verdict = traceVerdict(this.#index, packet, this.#marks, this.#uplinkName);
      this.#verdicts.set(key, verdict);
    }
    return verdict;
  }

  /** Whether an association map holds the packet's source address and port. */
  #associated(packet: Packet): boolean {
    this.#associations ??= associationKeys(this.#index);
    if (!this.#associations.size || packet.sport === undefined) return false;
    let source = this.#sources.get(packet.saddr);
    if (source === undefined) this.#sources.set(packet.saddr, (source = canonicalAddress(packet.saddr)));
    return this.#associations.has(`${source} ${packet.protocol} ${packet.sport}`);
  }
}

/** The keys of the elements of every map that `lookupFlow` statements look into. */
function associationKeys(index: TableIndex): Set<string> {
  const keys = new Set<string>();
  for (const chain of index.chains.values()) {
    for (const rule of chain.rules) {
      for (const s of rule.then) {
        if (s.kind !== 'lookupFlow') continue;
        for (const { key } of index.sets.get(s.map)?.elements ?? []) {
          const [address, protocol, port] = key;
          if (address?.kind === 'address' && protocol?.kind === 'protocol' && port?.kind === 'port')
            keys.add(`${address.address} ${protocol.protocol} ${port.port}`);
        }
      }
    }
  }
  return keys;
}

/** `namespace/name#rule` as the rule's comment holds it, split. */
export function ruleOf(verdict: FlowVerdict | undefined): Pick<AttributionUpdate, 'policy' | 'rule'> {
  const named = verdict?.rule;
  if (!named || !named.includes('#')) return {};
  let parts = ruleParts.get(named);
  if (!parts) {
    const at = named.lastIndexOf('#');
    if (ruleParts.size >= ruleLimit) ruleParts.clear();
    ruleParts.set(named, (parts = { policy: named.slice(0, at), rule: named.slice(at + 1) }));
  }
  return parts;
}

/**
 * Each rule's parts, made once: every attribution record of a rule holds the same two strings,
 * not two of its own (100,000 records). Rules come and go with edits: past `ruleLimit` the table
 * starts afresh.
 */
const ruleParts = new Map<string, { policy: string; rule: string }>();
const ruleLimit = 10_000;
