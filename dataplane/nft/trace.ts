// Evaluates a packet against a table in the model, the way the kernel walks the same rules: base
// chains of a hook in priority order, jump/goto/return, sets and verdict maps. It answers "what
// happens to this packet" for tests and explanations without a kernel.
import { canonicalAddress, contains, prefixRange } from '../../contracts/gateway/index.ts';
import { addressValue } from './intervals.ts';
import {
  renderKey,
  type Chain,
  type ChainVerdict,
  type Family,
  type KeyPart,
  type L4,
  type Match,
  type NamedSet,
  type Rule,
  type SetElement,
  type Statement,
  type Table,
} from './model.ts';

export interface Packet {
  family: Family;
  saddr: string;
  daddr: string;
  protocol: L4;
  sport?: number;
  dport?: number;
  direction?: 'original' | 'reply';
  /** Whether conntrack sees the first packet of a flow. */
  isNew?: boolean;
  /** The translations conntrack holds for the flow. */
  ctStatus?: Array<'snat' | 'dnat'>;
  ctMark?: number;
  mark?: number;
  oifname?: string;
  iifname?: string;
  /** The link-layer source address, for packets that arrived on an Ethernet device. */
  etherSaddr?: string;
  /** A TCP SYN's MSS option. */
  mss?: number;
  /** Whether the destination is an address of the node itself. */
  local?: boolean;
  /** The DSCP field: a strict-mode application stamp when not 0. */
  dscp?: number;
}

export interface TraceOptions {
  /** A number in [0, total) standing for `numgen random mod total`. */
  random?: (total: number) => number;
  /** A number in [0, total) standing for `jhash <source> mod total`. */
  hash?: (address: string, total: number) => number;
  /** Contents of dynamic sets, updated as the packet passes `update` statements. */
  dynamic?: Map<string, Set<string>>;
}

export interface TraceResult {
  verdict: 'accept' | 'drop';
  ctMark: number;
  mark: number;
  /** Chains entered, in order. */
  path: string[];
  helper?: string;
  timeout?: string;
  /** The comment of the last commented rule that matched: the policy rule that decided. */
  rule?: string;
  /** A pick statement chose where the packet went: another flow of the same kind may go elsewhere. */
  picked?: boolean;
  nat?: { kind: 'snat'; address: string; ports?: [number, number] } | { kind: 'masquerade'; ports?: [number, number] };
}

class Stop {
  readonly verdict: 'accept' | 'drop';
  constructor(verdict: 'accept' | 'drop') {
    this.verdict = verdict;
  }
}

/** An address as the sets hold it: its family and its number (undefined for what is not an address). */
type AddressNumber = { family: Family; value: bigint } | undefined;

/** A set's addresses and prefixes by family, for membership without a pass over its elements. */
class AddressIndex {
  readonly #single = { 4: new Set<bigint>(), 6: new Set<bigint>() };
  readonly #ranges: Record<Family, Array<readonly [bigint, bigint]>> = { 4: [], 6: [] };

  constructor(elements: readonly SetElement[]) {
    for (const { key } of elements) {
      const part = key[0];
      const range = part?.kind === 'address' ? prefixRange(part.address) : undefined;
      if (!range) continue;
      if (range.first === range.last) this.#single[range.family].add(range.first);
      else this.#ranges[range.family].push([range.first, range.last]);
    }
  }

  has(address: AddressNumber): boolean {
    if (!address) return false;
    const { family, value } = address;
    return (
      this.#single[family].has(value) || this.#ranges[family].some(([first, last]) => value >= first && value <= last)
    );
  }
}

/**
 * An interval map's elements sorted by their first field, each field's bounds as numbers: the
 * element that holds a key is found among the few whose first field holds its first value, not by
 * a pass over all of them. Of several that hold it, the first in the map's order wins.
 */
interface IntervalEntry {
  /** The element's place in the map. */
  order: number;
  /** Each field's bounds; undefined where the field is of neither kind and holds nothing. */
  lows: Array<bigint | number | undefined>;
  highs: Array<bigint | number | undefined>;
  value?: ChainVerdict;
}

class IntervalIndex {
  readonly #entries: IntervalEntry[];
  /** The highest bound of the first field among the entries up to each one. */
  readonly #reach: Array<bigint | number> = [];

  constructor(elements: readonly SetElement[]) {
    const bound = (part: KeyPart, end: 'first' | 'last'): bigint | number | undefined =>
      part.kind === 'addresses' ? addressValue(part[end]) : part.kind === 'ports' ? part[end] : undefined;
    this.#entries = elements
      .map(({ key, value }, order) => ({
        order,
        lows: key.map((part) => bound(part, 'first')),
        highs: key.map((part) => bound(part, 'last')),
        ...(value ? { value } : {}),
      }))
      .filter(({ lows }) => lows[0] !== undefined)
      .sort((a, b) => (a.lows[0]! < b.lows[0]! ? -1 : a.lows[0]! > b.lows[0]! ? 1 : a.order - b.order));
    for (const [i, { highs }] of this.#entries.entries()) {
      const before = this.#reach[i - 1];
      this.#reach.push(before !== undefined && before > highs[0]! ? before : highs[0]!);
    }
  }

  find(values: ReadonlyArray<bigint | number>): IntervalEntry | undefined {
    const [first] = values;
    if (first === undefined) return undefined;
    // The last entry whose first field starts at or below the value; those before it that reach it may hold it too.
    let low = 0;
    let high = this.#entries.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (this.#entries[middle]!.lows[0]! <= first) low = middle + 1;
      else high = middle;
    }
    let found: IntervalEntry | undefined;
    for (let i = low - 1; i >= 0 && this.#reach[i]! >= first; i--) {
      const entry = this.#entries[i]!;
      const holds = values.every((v, field) => {
        const lowest = entry.lows[field];
        return lowest !== undefined && v >= lowest && v <= entry.highs[field]!;
      });
      if (holds && (!found || entry.order < found.order)) found = entry;
    }
    return found;
  }
}

/**
 * A table made ready for many traces (the agent traces every new flow's first packet): chains
 * and sets by name, base chains by hook, and each set and map indexed the first time a trace looks
 * into it, so that a trace costs lookups rather than a pass over every element. The table must not
 * change while its index is in use.
 */
export class TableIndex {
  readonly chains: ReadonlyMap<string, Chain>;
  readonly sets: ReadonlyMap<string, NamedSet>;
  readonly #bases = new Map<string, Chain[]>();
  readonly #addresses = new Map<string, AddressIndex>();
  readonly #exact = new Map<string, Map<string, ChainVerdict | undefined>>();
  readonly #intervals = new Map<string, IntervalIndex>();
  readonly #table: Table;

  constructor(table: Table) {
    this.#table = table;
    this.chains = new Map(table.chains.map((c) => [c.name, c]));
    this.sets = new Map(table.sets.map((s) => [s.name, s]));
  }

  /** The base chains of a hook in priority order. */
  bases(hook: string): Chain[] {
    let bases = this.#bases.get(hook);
    if (!bases) {
      bases = this.#table.chains
        .filter((c) => c.base?.hook === hook)
        .sort((a, b) => a.base!.priority - b.base!.priority);
      this.#bases.set(hook, bases);
    }
    return bases;
  }

  addresses(set: NamedSet): AddressIndex {
    let index = this.#addresses.get(set.name);
    if (!index) this.#addresses.set(set.name, (index = new AddressIndex(set.elements)));
    return index;
  }

  /** The verdict map `name` by rendered key (its first element of each key); undefined when there is no such map. */
  exact(name: string): Map<string, ChainVerdict | undefined> | undefined {
    let index = this.#exact.get(name);
    const set = this.sets.get(name);
    if (!index && set) {
      index = new Map();
      for (const e of set.elements) {
        const key = renderKey(e.key);
        if (!index.has(key)) index.set(key, e.value);
      }
      this.#exact.set(name, index);
    }
    return index;
  }

  intervals(name: string): IntervalIndex | undefined {
    let index = this.#intervals.get(name);
    const set = this.sets.get(name);
    if (!index && set) this.#intervals.set(name, (index = new IntervalIndex(set.elements)));
    return index;
  }
}

/** What `table` (or its index, for many traces) does with `packet` at `hook`. */
export function trace(
  table: Table | TableIndex,
  hook: 'prerouting' | 'postrouting',
  packet: Packet,
  options: TraceOptions = {},
): TraceResult {
  const index = table instanceof TableIndex ? table : new TableIndex(table);
  const state: TraceResult = { verdict: 'accept', ctMark: packet.ctMark ?? 0, mark: packet.mark ?? 0, path: [] };
  const { chains, sets } = index;
  const dynamic = options.dynamic ?? new Map<string, Set<string>>();
  // The packet's addresses as numbers, each read once.
  const numbers = new Map<string, AddressNumber>();
  const numberOf = (address: string): AddressNumber => {
    if (!numbers.has(address)) {
      const range = prefixRange(address);
      numbers.set(address, range && { family: range.family, value: range.first });
    }
    return numbers.get(address);
  };
  const inSet = (name: string, address: string) => {
    const set = sets.get(name);
    if (!set) throw new Error(`trace: missing set ${name}`);
    if (set.dynamicTimeoutSeconds) return dynamic.get(name)?.has(address) ?? false;
    return index.addresses(set).has(numberOf(address));
  };

  const matches = (m: Match): boolean => {
    switch (m.kind) {
      case 'family':
        return packet.family === m.family;
      case 'saddr':
      case 'daddr': {
        if (packet.family !== m.family) return false;
        const address = m.kind === 'saddr' ? packet.saddr : packet.daddr;
        const found = m.set ? inSet(m.set, address) : (m.prefixes ?? []).some((p) => contains(p, address));
        return m.negate ? !found : found;
      }
      case 'l4proto':
        return m.protocols.includes(packet.protocol);
      case 'dport':
        return packet.dport !== undefined && m.ranges.some(([a, b]) => packet.dport! >= a && packet.dport! <= b);
      case 'ctDirection':
        return (packet.direction ?? 'original') === m.direction;
      case 'ctStateNew':
        return (packet.isNew ?? true) !== (m.negate ?? false);
      case 'ctStatus':
        return (packet.ctStatus ?? []).includes(m.status) !== (m.negate ?? false);
      case 'ctMarkSet':
        return (state.ctMark & m.mask) !== 0;
      case 'mark':
        return (state.mark & m.mask) === m.value;
      case 'oifname':
        return packet.oifname === m.name;
      case 'localDestination':
        return packet.local ?? false;
      case 'dscpStamped':
        return packet.family === m.family && (packet.dscp ?? 0) !== 0;
      case 'ctMark':
        return (state.ctMark & m.mask) === m.value;
      case 'iifname':
        return packet.iifname === m.name;
      case 'iifnames':
        return packet.iifname !== undefined && m.names.includes(packet.iifname);
      case 'etherSaddr':
        return packet.etherSaddr === m.address;
      case 'synMssAbove':
        return packet.protocol === 'tcp' && (packet.mss ?? 0) > m.size;
      case 'ctAccounting':
        return false;
    }
  };

  const pickSlot = (slots: Array<{ chain: string; count: number }>, n: number) => {
    let left = n;
    for (const slot of slots) {
      if (left < slot.count) return slot.chain;
      left -= slot.count;
    }
    throw new Error('trace: pick out of range');
  };

  /** Runs a chain; returns 'return' when it falls off its end or returns. */
  const run = (name: string): 'return' => {
    const chain = chains.get(name);
    if (!chain) throw new Error(`trace: missing chain ${name}`);
    state.path.push(name);
    for (const rule of chain.rules) {
      const outcome = applyRule(rule);
      if (outcome === 'return') return 'return';
      if (outcome === 'goto-done') return 'return';
    }
    return 'return';
  };

  // 'goto-done': a goto ran the other chain to its end, which ends this chain too.
  const applyRule = (rule: Rule): 'next' | 'return' | 'goto-done' => {
    if (!rule.match.every(matches)) return 'next';
    if (rule.comment !== undefined) state.rule = rule.comment;
    for (const s of rule.then) {
      const outcome = execute(s);
      if (outcome !== 'next') return outcome;
    }
    return 'next';
  };

  /** A verdict-map lookup: the verdict of the element keyed `key`, if there is one. */
  const lookup = (map: string, key: KeyPart[]): 'next' | 'return' | 'goto-done' => {
    const value = index.exact(map)?.get(renderKey(key));
    return value ? execute(value) : 'next';
  };
  /** An interval verdict-map lookup: the verdict of the element whose intervals hold every value. */
  const lookupInterval = (map: string, values: Array<bigint | number>): 'next' | 'return' | 'goto-done' => {
    const element = index.intervals(map)?.find(values);
    return element?.value ? execute(element.value) : 'next';
  };
  const source = (): KeyPart => ({ kind: 'address', address: canonicalAddress(packet.saddr) });

  const execute = (s: Statement): 'next' | 'return' | 'goto-done' => {
    switch (s.kind) {
      case 'verdict':
        if (s.verdict === 'return') return 'return';
        throw new Stop(s.verdict);
      case 'goto':
        run(s.chain);
        return 'goto-done';
      case 'jump':
        run(s.chain);
        return 'next';
      case 'counter':
        return 'next';
      case 'restoreMark':
        state.mark = state.ctMark & s.mask;
        return 'next';
      case 'setPacketMark':
        state.mark = ((state.mark & ~s.mask) | s.value) >>> 0;
        return 'next';
      case 'setMark':
        state.ctMark = ((state.ctMark & ~s.mask) | s.value) >>> 0;
        state.mark = ((state.mark & ~s.mask) | s.value) >>> 0;
        return 'next';
      case 'ctHelper':
        state.helper = s.object;
        return 'next';
      case 'ctTimeout':
        state.timeout = s.object;
        return 'next';
      case 'pick': {
        const total = s.slots.reduce((sum, slot) => sum + slot.count, 0);
        const n =
          s.by === 'random' ? (options.random ?? (() => 0))(total) : (options.hash ?? defaultHash)(packet.saddr, total);
        state.picked = true;
        run(pickSlot(s.slots, n));
        return 'goto-done';
      }
      case 'lookupFlow':
        if (packet.family !== s.family || packet.sport === undefined) return 'next';
        return lookup(s.map, [
          source(),
          { kind: 'protocol', protocol: packet.protocol },
          { kind: 'port', port: packet.sport },
        ]);
      case 'lookupStamp':
        if (packet.family !== s.family) return 'next';
        return lookup(s.map, [source(), { kind: 'dscp', dscp: packet.dscp ?? 0 }]);
      case 'classify': {
        if (packet.family !== s.family) return 'next';
        const addresses = [addressValue(packet.saddr), addressValue(packet.daddr)];
        if (!s.ports) return lookupInterval(s.map, addresses);
        return packet.dport === undefined ? 'next' : lookupInterval(s.map, [...addresses, packet.dport]);
      }
      case 'lookupSource':
        return packet.family === s.family ? lookup(s.map, [source()]) : 'next';
      // The MSS is clamped on the forward hook, which traces do not walk.
      case 'setMss':
        return 'next';
      // The stamp is cleared on the forward hook, after classification, which traces do not walk.
      case 'clearDscp':
      case 'namedCounter':
        return 'next';
      case 'updateSet': {
        if (packet.family !== s.family) return 'next';
        const members = dynamic.get(s.set) ?? new Set<string>();
        members.add(packet.saddr);
        dynamic.set(s.set, members);
        return 'next';
      }
      case 'snat':
        state.nat = { kind: 'snat', address: s.address, ...(s.ports ? { ports: s.ports } : {}) };
        throw new Stop('accept');
      case 'keepSource':
        state.nat = { kind: 'snat', address: canonicalAddress(packet.saddr) };
        throw new Stop('accept');
      case 'masquerade':
        state.nat = { kind: 'masquerade', ...(s.ports ? { ports: s.ports } : {}) };
        throw new Stop('accept');
    }
  };

  for (const base of index.bases(hook)) {
    try {
      run(base.name);
    } catch (error) {
      if (!(error instanceof Stop)) throw error;
      if (error.verdict === 'drop') return { ...state, verdict: 'drop' };
    }
  }
  return state;
}

function defaultHash(address: string, total: number): number {
  let h = 0;
  for (const c of address) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return h % total;
}
