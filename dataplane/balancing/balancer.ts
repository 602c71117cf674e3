// How a choice chain picks one of several uplinks for a new flow. One balancer per mode of the
// EgressGateway's `balancing.mode`, each in a file of its own; `balancerFor` (index.ts) chooses.
import type { CompiledUplink } from '../../contracts/gateway/index.ts';
import type { Operation } from '../nft/nftables.ts';
import type { Family, NamedSet, Rule } from '../nft/model.ts';

/** A source address whose flows use the uplink with this id. */
export interface SourceOnUplink {
  uplink: number;
  family: Family;
  source: string;
}

/** An uplink a new flow may take now, with its id and the chain that marks a flow for it. */
export interface Candidate {
  uplink: CompiledUplink;
  id: number;
  chain: string;
}

export interface Balancer {
  /**
   * The rules of a choice chain that send a new flow of family `f` to one of `candidates` (two
   * or more, healthy and allowed). `load` is the active flows per uplink name.
   */
  pickRules(f: Family, candidates: readonly Candidate[], load: ReadonlyMap<string, number>): Rule[];
  /** What a healthy uplink's chain adds for the flows it takes (the SourceSticky memory), with its sets. */
  uplinkParts?(id: number, f: Family): { set: NamedSet; rule: Rule };
  /**
   * Where the ruleset depends on the load: a value that changes when a sync would render other
   * choices for `uplinks` under `load`. Absent when the load does not matter.
   */
  loadKey?(uplinks: readonly CompiledUplink[], load: ReadonlyMap<string, number>): string;
  /**
   * What the agent renews every `intervalMs` (the SourceSticky memory): the kernel operations for
   * the sources of the open flows and of the flows that ended since the last renewal, given the
   * sets the table holds.
   */
  renewal?: {
    intervalMs: number;
    operations(sources: Iterable<SourceOnUplink>, sets: ReadonlySet<string>): Operation[];
  };
}

/** Picks a slot per new flow by `numgen random`, in proportion to `counts`. */
export function randomPick(f: Family, candidates: readonly Candidate[], counts: readonly number[]): Rule[] {
  const slots = candidates.map((c, i) => ({ chain: c.chain, count: counts[i]! }));
  return [{ match: [{ kind: 'family', family: f }], then: [{ kind: 'pick', by: 'random', slots }] }];
}
