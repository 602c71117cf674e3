// The ordered policy rules compiled into a decision structure: for each family and protocol,
// the space of source address × destination address (× destination port for TCP and UDP) cut
// into disjoint boxes, each holding the first rule, in the given order, that matches every
// packet in it. What no rule matches is left out (the default action). The kernel looks a new
// flow up in one interval map per family and protocol, whatever the number of rules.
//
// Size: the boxes of one family and protocol are at most S × D × P, where S, D and P are one
// more than twice the number of source intervals, destination networks and port ranges of the
// rules; adjacent boxes with the same outcome are merged. A cut in one dimension is paid only
// where the rules that own it apply: destinations are cut per set of rules that share the
// source addresses, and ports per destination network, so rules of disjoint sources (policies
// of distinct pods) add their boxes rather than multiply them.
import type { CompiledRule } from '../contracts/gateway/index.ts';
import { allAddresses, prefixInterval, type Interval } from './nft/intervals.ts';
import type { Family } from './nft/model.ts';

/**
 * What the kernel's lookups tell apart: TCP and UDP with their destination port, ICMP (ICMPv6
 * for IPv6), and `any`, which only rules for any protocol match (every other protocol; a TCP,
 * UDP or ICMP packet that missed its own map misses it too, as its boxes are in theirs).
 */
export type Protocol = 'tcp' | 'udp' | 'icmp' | 'any';
export const protocols: readonly Protocol[] = ['tcp', 'udp', 'icmp', 'any'];
export const hasPorts = (p: Protocol) => p === 'tcp' || p === 'udp';

export interface Box<R> {
  source: Interval;
  destination: Interval;
  /** The destination ports, for TCP and UDP. */
  ports?: Interval;
  /** The first rule that matches every packet in the box. */
  rule: R;
}

export interface Decision<R> {
  family: Family;
  protocol: Protocol;
  /** Disjoint, in the order of their source, destination and ports. */
  boxes: Array<Box<R>>;
}

const allPorts: Interval = [0n, 65535n];

/** Where one rule's destination sends packets of a family and protocol; ports undefined for all. */
interface Target {
  destination: Interval;
  ports?: Interval[];
}

export interface RulesCompiler<R> {
  /** The decision of each family and protocol that some rule of `rules` matches, for the rules in this order. */
  compile(rules: readonly R[]): Array<Decision<R>>;
  /** Those of `rules`, in order, whose sources meet the sources of one of `these`. */
  meeting(rules: readonly R[], these: readonly R[]): R[];
  /** Each list of sources read so far, as intervals of each family. */
  readonly sources: ReadonlyMap<string, Record<Family, Interval[]>>;
}

/**
 * A compiler of lists of rules. The sources of a rule are read once for all the lists it is in
 * (the classes of a table share most of their rules, the rules of a policy their sources), and
 * a list read by the `last` compiler (of the config before) is taken from it.
 */
export function rulesCompiler<R extends CompiledRule>(last?: RulesCompiler<R>): RulesCompiler<R> {
  const read = new Map<string, Record<Family, Interval[]>>();
  // Only what the last one read, not the last compiler, which would hold its own last.
  const earlier = last?.sources;
  const sourcesOf = new Map<R, Record<Family, Interval[]>>();
  const sources = (rule: R, family: Family) => {
    let found = sourcesOf.get(rule);
    if (!found) {
      const text = rule.sources.join(' ');
      found = read.get(text) ?? earlier?.get(text);
      if (!found) {
        const intervals = (f: Family) =>
          mergeIntervals(rule.sources.filter((p) => p.includes(':') === (f === 6)).map((p) => prefixInterval(p, f)));
        found = { 4: intervals(4), 6: intervals(6) };
      }
      read.set(text, found);
      sourcesOf.set(rule, found);
    }
    return found[family];
  };
  const compile = (rules: readonly R[]) => {
    const decisions: Array<Decision<R>> = [];
    for (const family of [4, 6] as const) {
      for (const protocol of protocols) {
        const candidates = rules.flatMap((rule) => {
          const targets = targetsOf(rule, family, protocol);
          return targets.length && sources(rule, family).length
            ? [{ rule, sources: sources(rule, family), targets }]
            : [];
        });
        const boxes = decide(candidates, hasPorts(protocol));
        if (boxes.length) decisions.push({ family, protocol, boxes });
      }
    }
    return decisions;
  };
  const meeting = (rules: readonly R[], these: readonly R[]) => {
    const theirs = {
      4: mergeIntervals(these.flatMap((r) => sources(r, 4))),
      6: mergeIntervals(these.flatMap((r) => sources(r, 6))),
    };
    const meets = (rule: R) =>
      ([4, 6] as const).some((f) =>
        sources(rule, f).some(([first, last]) => {
          const i = firstEndingAtOrAfter(theirs[f], first);
          return i < theirs[f].length && theirs[f][i]![0] <= last;
        }),
      );
    return rules.filter(meets);
  };
  return { compile, meeting, sources: read };
}

/** The first of sorted disjoint intervals that ends at `value` or later. */
function firstEndingAtOrAfter(sorted: readonly Interval[], value: bigint): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (sorted[middle]![1] < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

function targetsOf(rule: CompiledRule, family: Family, protocol: Protocol): Target[] {
  return (rule.destinations ?? [{ protocol: 'Any' as const }]).flatMap((d): Target[] => {
    const applies = d.protocol === 'Any' || d.protocol.toLowerCase() === protocol;
    if (!applies || (d.cidr && d.cidr.includes(':') !== (family === 6))) return [];
    const destination = d.cidr ? prefixInterval(d.cidr, family) : allAddresses(family);
    const ports = d.ports?.map((p): Interval => [BigInt(p.port), BigInt(p.endPort ?? p.port)]);
    return [{ destination, ...(ports ? { ports } : {}) }];
  });
}

/** The boxes of the candidates (rules in order, each with its sources and targets). */
function decide<R>(
  candidates: ReadonlyArray<{ rule: R; sources: Interval[]; targets: Target[] }>,
  withPorts: boolean,
): Array<Box<R>> {
  // Destination × ports per distinct list of rules that share a source segment.
  const planes = new Map<string, { cells: Cell[]; signature: string }>();
  const plane = (owners: readonly number[]) => {
    const key = owners.join(',');
    let found = planes.get(key);
    if (!found) {
      const cells = decidePlane(
        owners.flatMap((i) => candidates[i]!.targets.map((t) => ({ rule: i, range: t.destination, ports: t.ports }))),
        withPorts,
      );
      found = { cells, signature: cells.map(cellText).join(',') };
      planes.set(key, found);
    }
    return found;
  };
  const sources = segment(candidates.flatMap((c, i) => c.sources.map((range) => ({ range, value: i }))));
  const merged = mergeAdjacent(
    sources.map(({ range, values }) => ({ range, value: plane(values) })),
    (p) => p.signature,
  );
  return merged.flatMap(({ range, value }) =>
    value.cells.map(({ rule, ...cell }) => ({ source: range, ...cell, rule: candidates[rule]!.rule })),
  );
}

/** A destination (× ports) cell and the index of the rule that decides it. */
interface Cell {
  destination: Interval;
  ports?: Interval;
  rule: number;
}

const cellText = (c: Cell) => `${c.destination[0]}-${c.destination[1]}/${c.ports?.[0]}-${c.ports?.[1]}:${c.rule}`;

/** Destination (× ports) cells of the targets of the rules that apply to one source segment, in rule order. */
function decidePlane(
  entries: ReadonlyArray<{ rule: number; range: Interval; ports: Interval[] | undefined }>,
  withPorts: boolean,
): Cell[] {
  const lines = segment(entries.map((entry) => ({ range: entry.range, value: entry }))).map(({ range, values }) => {
    if (!withPorts) return { range, value: [{ rule: values[0]!.rule }] as Array<{ ports?: Interval; rule: number }> };
    // The first entry for every port ends the list: later ones never decide.
    const all = values.findIndex((v) => !v.ports);
    const deciding = all < 0 ? values : values.slice(0, all + 1);
    const ports = segment(deciding.flatMap((v) => (v.ports ?? [allPorts]).map((p) => ({ range: p, value: v.rule }))));
    const merged = mergeAdjacent(ports.map(({ range: p, values: rules }) => ({ range: p, value: rules[0]! })));
    return { range, value: merged.map(({ range: p, value }) => ({ ports: p, rule: value })) };
  });
  const merged = mergeAdjacent(lines, (line) => line.map((c) => `${c.ports?.[0]}-${c.ports?.[1]}:${c.rule}`).join(','));
  return merged.flatMap(({ range, value }) => value.map((c) => ({ destination: range, ...c })));
}

/**
 * The segments that `items` cut their space into, each covered by at least one item, with the
 * values of the items that cover it in the items' order.
 */
function segment<T>(items: ReadonlyArray<{ range: Interval; value: T }>): Array<{ range: Interval; values: T[] }> {
  const cuts = [...new Set(items.flatMap(({ range }) => [range[0], range[1] + 1n]))].sort((a, b) =>
    a < b ? -1 : a > b ? 1 : 0,
  );
  const segments = cuts
    .slice(0, -1)
    .map((start, i) => ({ range: [start, cuts[i + 1]! - 1n] as Interval, values: [] as T[] }));
  for (const { range, value } of items) {
    for (let i = firstAtOrAfter(cuts, range[0]); i < segments.length && segments[i]!.range[0] <= range[1]; i++) {
      segments[i]!.values.push(value);
    }
  }
  return segments.filter((s) => s.values.length);
}

function firstAtOrAfter(sorted: readonly bigint[], value: bigint): number {
  let low = 0;
  let high = sorted.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (sorted[middle]! < value) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** Touching segments of the same value (same key) made one. */
function mergeAdjacent<T>(
  segments: ReadonlyArray<{ range: Interval; value: T }>,
  key: (value: T) => unknown = (value) => value,
): Array<{ range: Interval; value: T }> {
  const merged: Array<{ range: Interval; value: T }> = [];
  for (const s of segments) {
    const last = merged.at(-1);
    if (last && last.range[1] + 1n === s.range[0] && key(last.value) === key(s.value)) {
      last.range = [last.range[0], s.range[1]];
    } else merged.push({ range: s.range, value: s.value });
  }
  return merged;
}

/** Overlapping and touching intervals made one, in order. */
function mergeIntervals(intervals: readonly Interval[]): Interval[] {
  const sorted = [...intervals].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const merged: Array<[bigint, bigint]> = [];
  for (const [first, last] of sorted) {
    const previous = merged.at(-1);
    if (previous && first <= previous[1] + 1n) previous[1] = last > previous[1] ? last : previous[1];
    else merged.push([first, last]);
  }
  return merged;
}
