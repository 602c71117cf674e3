// naat's nftables table as data. Rules are built from a small vocabulary of matches and
// statements rather than free text, so that one model renders to `nft` syntax for the kernel and
// is evaluated by the packet tracer in tests: the tracer and the kernel read the same rules.
import { addressValue, intervalText } from './intervals.ts';

export const tableFamily = 'inet';
export const tableName = 'naat';

export type Family = 4 | 6;
export type L4 = 'tcp' | 'udp' | 'icmp' | 'icmpv6';

export type Match =
  | { kind: 'family'; family: Family }
  | { kind: 'saddr' | 'daddr'; family: Family; set?: string; prefixes?: string[]; negate?: boolean }
  | { kind: 'l4proto'; protocols: L4[] }
  /** Inclusive ranges; the rule must also match l4proto tcp and/or udp. */
  | { kind: 'dport'; ranges: Array<[number, number]> }
  | { kind: 'ctDirection'; direction: 'original' | 'reply' }
  | { kind: 'ctStateNew'; negate?: boolean }
  /** Whether conntrack translated the flow's source (snat) or destination (dnat). */
  | { kind: 'ctStatus'; status: 'snat' | 'dnat'; negate?: boolean }
  /** `ct mark & mask != 0`: the flow already has an uplink. */
  | { kind: 'ctMarkSet'; mask: number }
  /** `meta mark & mask == value` */
  | { kind: 'mark'; mask: number; value: number }
  | { kind: 'oifname'; name: string }
  | { kind: 'localDestination' }
  /** A DSCP other than 0 (CS0): in strict mode, the application stamp of a pod's packet. */
  | { kind: 'dscpStamped'; family: Family }
  /** `ct mark & mask == value`: the flow is pinned to one value of the bits. */
  | { kind: 'ctMark'; mask: number; value: number }
  | { kind: 'iifname'; name: string }
  /** The packet arrived on any of these interfaces. */
  | { kind: 'iifnames'; names: string[] }
  /** The link-layer source of a packet that arrived on an Ethernet device (a tunnel peer's MAC). */
  | { kind: 'etherSaddr'; address: string }
  /** A TCP segment with SYN set whose MSS option is above `size`. */
  | { kind: 'synMssAbove'; size: number }
  /**
   * `ct packets 0`, which no packet a hook sees matches (conntrack counted it already). Loading a
   * rule that reads a flow's counters turns conntrack accounting on in the network namespace, as
   * net.netfilter.nf_conntrack_acct=1 does, which a container without a writable /proc/sys cannot.
   */
  | { kind: 'ctAccounting' };

/** Continues in another chain: a rule's statement, or the value of a verdict map's element. */
export interface ChainVerdict {
  kind: 'goto' | 'jump';
  chain: string;
}

export type Statement =
  | { kind: 'verdict'; verdict: 'accept' | 'drop' | 'return' }
  | ChainVerdict
  | { kind: 'counter' }
  /** meta mark set ct mark & mask */
  | { kind: 'restoreMark'; mask: number }
  /** Sets the bits under mask in both the conntrack mark and the packet mark. */
  | { kind: 'setMark'; mask: number; value: number }
  | { kind: 'ctHelper'; object: string }
  | { kind: 'ctTimeout'; object: string }
  /**
   * Picks one of `slots` in proportion to its count: by a random number per flow, or by a hash of
   * the source address (so a source always lands on the same slot while the slots are unchanged).
   */
  | { kind: 'pick'; by: 'random' | 'source'; family?: Family; slots: Array<{ chain: string; count: number }> }
  /** Looks up (source address, protocol, source port) in an association verdict map. */
  | { kind: 'lookupFlow'; family: Family; map: string }
  /**
   * Continues by the interval verdict map keyed by (source address, destination address) and,
   * with `ports`, the destination port: the chain of the policy rule that decides the flow.
   */
  | { kind: 'classify'; family: Family; ports: boolean; map: string }
  /** Jumps by the verdict map keyed by (source address, DSCP): the chain of a stamped application. */
  | { kind: 'lookupStamp'; family: Family; map: string }
  /** Sets the DSCP back to 0, so that a stamp never leaves the gateway. */
  | { kind: 'clearDscp'; family: Family }
  /** Counts in a named counter object, which keeps its count across syncs (chains are refilled). */
  | { kind: 'namedCounter'; name: string }
  /** Adds or refreshes the packet's source address in a dynamic set with a timeout. */
  | { kind: 'updateSet'; family: Family; set: string }
  /** Sets the bits under mask in the packet mark only, keeping the others. */
  | { kind: 'setPacketMark'; mask: number; value: number }
  /** Looks up the source address in a verdict map (address → chain). */
  | { kind: 'lookupSource'; family: Family; map: string }
  /** Sets a TCP SYN's MSS option. */
  | { kind: 'setMss'; size: number }
  /**
   * Binds the flow's source NAT to its own source address: later source NAT rules of the same
   * hook (a CNI's masquerade) no longer run for it, since a flow gets one binding.
   */
  | { kind: 'keepSource'; family: Family }
  | { kind: 'snat'; family: Family; address: string; ports?: [number, number] }
  | { kind: 'masquerade'; ports?: [number, number] };

export interface Rule {
  match: Match[];
  then: Statement[];
  /** Which policy rule this is (namespace/name#rule), shown by `nft list` and by traces. */
  comment?: string;
}

export interface BaseHook {
  type: 'filter' | 'nat';
  hook: 'prerouting' | 'postrouting' | 'forward';
  priority: number;
}

export interface Chain {
  name: string;
  base?: BaseHook;
  rules: Rule[];
}

/**
 * One field of a set element's key, of the set's type of that position: an address
 * (`ipv4_addr`/`ipv6_addr`; in an interval set also a prefix), a protocol (`inet_proto`), a port
 * (`inet_service`) or a DSCP value (`dscp`). Addresses are in the form nft lists them
 * (canonicalAddress, normalisePrefixes), so that equal keys render equal.
 */
export type KeyPart =
  | { kind: 'address'; address: string }
  | { kind: 'protocol'; protocol: L4 }
  | { kind: 'port'; port: number }
  | { kind: 'dscp'; dscp: number }
  /** The addresses from `first` to `last` (canonical), in an interval map of concatenations. */
  | { kind: 'addresses'; first: string; last: string }
  /** The ports from `first` to `last`, in an interval map of concatenations. */
  | { kind: 'ports'; first: number; last: number };

/**
 * An element of a set or map: its key, one part per field of a concatenation (`a . b . c`), and
 * in a verdict map the chain it continues in.
 */
export interface SetElement {
  key: KeyPart[];
  value?: ChainVerdict;
}

export interface NamedSet {
  name: string;
  /** nft type, e.g. `ipv4_addr`, or for maps `ipv4_addr . inet_proto . inet_service : verdict`. */
  type: string;
  map?: boolean;
  interval?: boolean;
  /** Dynamic sets filled by the packet path; their elements survive re-syncs. */
  dynamicTimeoutSeconds?: number;
  /** Ignored for dynamic sets. */
  elements: SetElement[];
}

/** A stateful object: a conntrack timeout policy or a conntrack helper, declared by its nft body. */
export interface NftObject {
  kind: 'ct timeout' | 'ct helper' | 'counter';
  name: string;
  body: string;
}

export interface Table {
  chains: Chain[];
  sets: NamedSet[];
  objects: NftObject[];
}

const hex = (value: number) => `0x${value.toString(16).padStart(8, '0')}`;
const saddrField = (family: Family) => (family === 4 ? 'ip saddr' : 'ip6 saddr');
const daddrField = (family: Family) => (family === 4 ? 'ip daddr' : 'ip6 daddr');
const list = (items: string[]) => (items.length === 1 ? items[0]! : `{ ${items.join(', ')} }`);

export function renderMatch(m: Match): string {
  switch (m.kind) {
    case 'family':
      return `meta nfproto ${m.family === 4 ? 'ipv4' : 'ipv6'}`;
    case 'saddr':
    case 'daddr': {
      const field = m.kind === 'saddr' ? saddrField(m.family) : daddrField(m.family);
      const value = m.set ? `@${m.set}` : list(m.prefixes ?? []);
      return `${field} ${m.negate ? '!= ' : ''}${value}`;
    }
    case 'l4proto':
      return `meta l4proto ${list(m.protocols)}`;
    case 'dport':
      return `th dport ${list(m.ranges.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)))}`;
    case 'ctDirection':
      return `ct direction ${m.direction}`;
    case 'ctStateNew':
      return `ct state ${m.negate ? '!= ' : ''}new`;
    case 'ctStatus':
      return `ct status & ${m.status} == ${m.negate ? '0' : m.status}`;
    case 'ctMarkSet':
      return `ct mark & ${hex(m.mask)} != 0x00000000`;
    case 'mark':
      return `meta mark & ${hex(m.mask)} == ${hex(m.value)}`;
    case 'oifname':
      return `oifname ${JSON.stringify(m.name)}`;
    case 'localDestination':
      return 'fib daddr type local';
    case 'dscpStamped':
      return `${m.family === 4 ? 'ip' : 'ip6'} dscp != cs0`;
    case 'ctMark':
      return `ct mark & ${hex(m.mask)} == ${hex(m.value)}`;
    case 'iifname':
      return `iifname ${JSON.stringify(m.name)}`;
    case 'iifnames':
      return `iifname ${list(m.names.map((name) => JSON.stringify(name)))}`;
    case 'etherSaddr':
      return `ether saddr ${m.address}`;
    case 'synMssAbove':
      return `tcp flags syn tcp option maxseg size > ${m.size}`;
    case 'ctAccounting':
      return 'ct packets 0';
  }
}

export function renderStatement(s: Statement): string {
  switch (s.kind) {
    case 'verdict':
      return s.verdict;
    case 'goto':
    case 'jump':
      return `${s.kind} ${s.chain}`;
    case 'counter':
      return 'counter';
    case 'restoreMark':
      return `meta mark set ct mark & ${hex(s.mask)}`;
    case 'setMark': {
      const keep = hex(~s.mask >>> 0);
      return `ct mark set ct mark & ${keep} | ${hex(s.value)} meta mark set meta mark & ${keep} | ${hex(s.value)}`;
    }
    case 'setPacketMark':
      return `meta mark set meta mark & ${hex(~s.mask >>> 0)} | ${hex(s.value)}`;
    case 'lookupSource':
      return `${saddrField(s.family)} vmap @${s.map}`;
    case 'setMss':
      return `tcp option maxseg size set ${s.size}`;
    case 'keepSource':
      return s.family === 4 ? 'snat ip to ip saddr' : 'snat ip6 to ip6 saddr';
    case 'ctHelper':
      return `ct helper set ${JSON.stringify(s.object)}`;
    case 'ctTimeout':
      return `ct timeout set ${JSON.stringify(s.object)}`;
    case 'pick': {
      let next = 0;
      const slots = s.slots.map(({ chain, count }) => {
        const from = next;
        next += count;
        return `${from === next - 1 ? from : `${from}-${next - 1}`} : goto ${chain}`;
      });
      const source = s.by === 'random' ? 'numgen random' : `jhash ${saddrField(s.family ?? 4)}`;
      return `${source} mod ${next} vmap { ${slots.join(', ')} }`;
    }
    case 'lookupFlow':
      return `${saddrField(s.family)} . meta l4proto . th sport vmap @${s.map}`;
    case 'lookupStamp':
      return `${saddrField(s.family)} . ${s.family === 4 ? 'ip' : 'ip6'} dscp vmap @${s.map}`;
    case 'classify':
      return `${saddrField(s.family)} . ${daddrField(s.family)}${s.ports ? ' . th dport' : ''} vmap @${s.map}`;
    case 'clearDscp':
      return `${s.family === 4 ? 'ip' : 'ip6'} dscp set cs0`;
    case 'namedCounter':
      return `counter name ${JSON.stringify(s.name)}`;
    case 'updateSet':
      return `update @${s.set} { ${saddrField(s.family)} }`;
    case 'snat': {
      const address = s.family === 6 ? `[${s.address}]` : s.address;
      const ports = s.ports ? `:${s.ports[0]}-${s.ports[1]}` : '';
      return `snat ${s.family === 4 ? 'ip' : 'ip6'} to ${address}${ports}`;
    }
    case 'masquerade':
      return s.ports ? `masquerade to :${s.ports[0]}-${s.ports[1]}` : 'masquerade';
  }
}

function renderKeyPart(part: KeyPart): string {
  switch (part.kind) {
    case 'address':
      return part.address;
    case 'protocol':
      return part.protocol;
    case 'port':
      return `${part.port}`;
    case 'dscp':
      // As nft lists elements of type dscp, e.g. 0x05.
      return `0x${part.dscp.toString(16).padStart(2, '0')}`;
    case 'addresses':
      return intervalText([addressValue(part.first), addressValue(part.last)], part.first.includes(':') ? 6 : 4);
    case 'ports':
      return part.first === part.last ? `${part.first}` : `${part.first}-${part.last}`;
  }
}

/** A key as nft writes it; being canonical, it is also what identifies an element in its set. */
export const renderKey = (key: readonly KeyPart[]): string => key.map(renderKeyPart).join(' . ');

export const renderElement = (element: SetElement): string =>
  element.value ? `${renderKey(element.key)} : ${renderStatement(element.value)}` : renderKey(element.key);

/**
 * A comment as nft takes it: its quoted strings have no escapes, so quotes and control characters
 * become `?`, and it keeps at most 127 bytes (NFTNL_UDATA_COMMENT_MAXLEN less the final NUL),
 * cut between characters.
 */
export function commentText(text: string): string {
  let kept = '';
  let bytes = 0;
  for (const char of text.replace(/["\p{Cc}]/gu, '?')) {
    bytes += Buffer.byteLength(char);
    if (bytes > 127) break;
    kept += char;
  }
  return `"${kept}"`;
}

export function renderRule(rule: Rule): string {
  const comment = rule.comment === undefined ? [] : [`comment ${commentText(rule.comment)}`];
  return [...rule.match.map(renderMatch), ...rule.then.map(renderStatement), ...comment].join(' ');
}

/** What a rule names, all of which must exist while it does: chains, sets and maps, objects. */
export interface References {
  chains: string[];
  sets: string[];
  objects: Array<{ kind: NftObject['kind']; name: string }>;
}

export function ruleReferences(rule: Rule): References {
  const refs: References = { chains: [], sets: [], objects: [] };
  for (const m of rule.match) if ((m.kind === 'saddr' || m.kind === 'daddr') && m.set) refs.sets.push(m.set);
  for (const s of rule.then) {
    switch (s.kind) {
      case 'goto':
      case 'jump':
        refs.chains.push(s.chain);
        break;
      case 'pick':
        refs.chains.push(...s.slots.map((slot) => slot.chain));
        break;
      case 'lookupFlow':
      case 'lookupStamp':
      case 'lookupSource':
      case 'classify':
        refs.sets.push(s.map);
        break;
      case 'updateSet':
        refs.sets.push(s.set);
        break;
      case 'ctHelper':
        refs.objects.push({ kind: 'ct helper', name: s.object });
        break;
      case 'ctTimeout':
        refs.objects.push({ kind: 'ct timeout', name: s.object });
        break;
      case 'namedCounter':
        refs.objects.push({ kind: 'counter', name: s.name });
        break;
    }
  }
  return refs;
}

/** The `{ … }` body of a set or map declaration, without elements. */
export function setDeclaration(set: NamedSet): string {
  const flags = [set.interval ? 'interval' : '', set.dynamicTimeoutSeconds ? 'dynamic, timeout' : ''].filter(Boolean);
  return [
    `type ${set.type};`,
    flags.length ? ` flags ${flags.join(', ')};` : '',
    set.dynamicTimeoutSeconds ? ` timeout ${set.dynamicTimeoutSeconds}s;` : '',
  ].join('');
}

export function baseDeclaration(base: BaseHook): string {
  return `type ${base.type} hook ${base.hook} priority ${base.priority}; policy accept;`;
}

/** The whole table as `nft list` would print it (order as given); used for golden files and dumps. */
export function renderTable(table: Table, name = tableName): string {
  const lines = [`table ${tableFamily} ${name} {`];
  for (const object of table.objects) lines.push(`\t${object.kind} ${object.name} { ${object.body} }`);
  for (const set of table.sets) {
    lines.push(`\t${set.map ? 'map' : 'set'} ${set.name} { ${setDeclaration(set)} }`);
    if (!set.dynamicTimeoutSeconds)
      for (const element of set.elements) lines.push(`\t\t${set.name} ${renderElement(element)}`);
  }
  for (const chain of table.chains) {
    lines.push(`\tchain ${chain.name} {`);
    if (chain.base) lines.push(`\t\t${baseDeclaration(chain.base)}`);
    for (const rule of chain.rules) lines.push(`\t\t${renderRule(rule)}`);
    lines.push('\t}');
  }
  lines.push('}');
  return `${lines.join('\n')}\n`;
}
