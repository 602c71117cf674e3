// Established flows survive a takeover: the owner of a failover address streams the conntrack
// entries of the flows translated to it to the gateway's other nodes (flow-source.ts, served at
// /failover/flows over mutual TLS); each keeps a replica per address (flow-follower.ts), and the
// node that claims an address loads the replica of it into its own table (flow-inject.ts) before
// it announces the address. This file is the pure part: the entries, their wire form, the replica
// and the `conntrack -R` file that injects them.
//
// What the kernel does with injected entries (measured with conntrack-tools 1.4.7 on Linux 6.18,
// in network namespaces; test/e2e/failover-flows.test.ts holds the proof):
// - `conntrack -I` creates a source-NAT entry when given the original tuple (pod -> server), the
//   translation with `--src-nat ADDRESS:PORT` (`[ADDRESS]:PORT` for IPv6) and NO reply tuple: the
//   tool makes the reply tuple the inverse of the original, and the kernel's NAT setup then
//   rewrites it to server -> ADDRESS:PORT and sets IPS_SRC_NAT. Given the translated reply tuple
//   itself (`-r`/`-q` server -> ADDRESS:PORT), the entry looks right in `conntrack -L` (and
//   `-L --src-nat` lists it, as that filter compares tuples) but the NAT setup finds nothing to
//   change and leaves IPS_SRC_NAT off: replies are then not translated back, reach the new owner's
//   own stack and are answered with a RST. `-m MARK`, `-t SECONDS`, `-u SEEN_REPLY,ASSURED` and, for
//   TCP, `--state ESTABLISHED` are taken as given (without SEEN_REPLY it is [UNREPLIED]).
// - TCP window tracking: an injected entry carries no window data (td_maxwin 0 both ways), and the
//   kernel then takes up each direction's window from its first packet, as for a flow picked up
//   mid-stream; this does not depend on nf_conntrack_tcp_loose (also seen with it at 0) nor needs
//   nf_conntrack_tcp_be_liberal. A stream moved from node A to node B so continued with the same
//   server-side 4-tuple and no packet counted invalid; UDP likewise.
// - `conntrack -R FILE` reads one `-I ...` command per line in one process: 1,000 TCP entries in
//   18 ms, 10,000 in 99 ms (about 10 us an entry). It stops at the first line that fails (an entry
//   whose original tuple, or whose translated reply tuple, is already in the table: EEXIST), with
//   exit status 1 and the lines before it loaded; flow-inject.ts leaves out what is there and
//   loads the rest again.
//
// Why not Debian's conntrackd (FTFW mode): it replicates every entry of the table (or those its
// filter names) between nodes over UDP multicast or unicast with neither authentication nor
// encryption, so anyone on the path can read every flow or inject entries into a gateway's table;
// naat's links between its components are mutual TLS with node certificates (docs/security.md),
// which the agents already hold and follow as they are renewed (link-tls.ts). conntrackd would
// also be one more daemon per gateway node whose peers and filter (which entries it replicates)
// are static configuration, while a gateway's nodes and addresses change at run time. The agent
// already reads the conntrack event stream (conntrack.ts): replicating from it costs one more
// consumer of events it parses anyway, and the injection is one `conntrack -R` at the claim.
import { isIP } from 'node:net';
import type { Flow, FlowEvent } from '../conntrack.ts';

/** A flow translated to a failover address, as replicated and injected. */
export interface ReplicaFlow {
  family: 4 | 6;
  protocol: 'tcp' | 'udp';
  /** The original tuple: the pod (or the node for it) to the server. */
  source: string;
  sourcePort: number;
  destination: string;
  destinationPort: number;
  /** The failover address the flow leaves with, and its port there: what the server sees. */
  address: string;
  port: number;
  /** The entry's conntrack mark (the uplink id among its bits). */
  mark: number;
  /** Seconds the entry has left (on the node that sent it, when it sent it). */
  timeoutSeconds: number;
}

/** What identifies a replicated flow: its original tuple and the address it is translated to. */
export type ReplicaFlowKey = Pick<
  ReplicaFlow,
  'protocol' | 'source' | 'sourcePort' | 'destination' | 'destinationPort' | 'address'
>;

/**
 * One line of a /failover/flows stream: a flow (new, or seen again with its timeout), a flow gone,
 * or the end of a full round (every live flow of the sender's addresses was sent since the
 * previous `synced`, or since the stream opened): what was not is gone.
 */
export type FlowMessage = { op: 'flow'; flow: ReplicaFlow } | { op: 'gone'; flow: ReplicaFlowKey } | { op: 'synced' };

/** The longest line a stream may carry: a flow of IPv6 addresses at full length fits in 200 bytes. */
export const maxMessageBytes = 512;
/** The longest timeout an entry may carry: the kernel's TCP established timeout is 5 days. */
export const maxTimeoutSeconds = 30 * 86_400;

export const replicaKey = (f: ReplicaFlowKey): string =>
  `${f.address} ${f.protocol} ${f.source} ${f.sourcePort} ${f.destination} ${f.destinationPort}`;

/** The flow to replicate, when `flow` is a TCP or UDP flow translated to one of `owned`. */
export function replicaFlowOf(flow: Flow, owned: ReadonlySet<string>): ReplicaFlow | undefined {
  if (flow.protocol !== 'tcp' && flow.protocol !== 'udp') return undefined;
  if (!owned.has(flow.mappedAddress)) return undefined;
  if (flow.sourcePort === undefined || flow.destinationPort === undefined || flow.mappedPort === undefined) {
    return undefined;
  }
  return {
    family: flow.family,
    protocol: flow.protocol,
    source: flow.source,
    sourcePort: flow.sourcePort,
    destination: flow.destination,
    destinationPort: flow.destinationPort,
    address: flow.mappedAddress,
    port: flow.mappedPort,
    mark: flow.mark ?? 0,
    // A new flow's event carries its timeout; one without lives as long as conntrack's shortest.
    timeoutSeconds: Math.min(flow.timeoutSeconds ?? 30, maxTimeoutSeconds),
  };
}

/** The messages that conntrack events of flows translated to `owned` make. */
export function messagesOf(events: readonly FlowEvent[], owned: ReadonlySet<string>): FlowMessage[] {
  const messages: FlowMessage[] = [];
  for (const event of events) {
    const flow = replicaFlowOf(event.flow, owned);
    if (!flow) continue;
    messages.push(event.type === 'new' ? { op: 'flow', flow } : { op: 'gone', flow });
  }
  return messages;
}

/** One line (with its newline) of a stream. */
export function encodeMessage(message: FlowMessage): string {
  if (message.op === 'synced') return '["synced"]\n';
  const f = message.flow;
  const tuple = [f.protocol, f.source, f.sourcePort, f.destination, f.destinationPort, f.address];
  if (message.op === 'gone') return `${JSON.stringify(['gone', ...tuple])}\n`;
  const flow = message.flow as ReplicaFlow;
  return `${JSON.stringify(['flow', ...tuple, flow.port, flow.mark, flow.timeoutSeconds])}\n`;
}

/** Reads one line of a stream (without its newline); throws an Error that says what is wrong. */
export function parseMessage(line: string): FlowMessage {
  if (line.length > maxMessageBytes) throw new Error(`a message of ${line.length} bytes is over ${maxMessageBytes}`);
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new Error(`not JSON: ${quote(line)}`);
  }
  if (!Array.isArray(value) || typeof value[0] !== 'string') throw new Error(`not a message: ${quote(line)}`);
  const [op, ...fields] = value as [string, ...unknown[]];
  if (op === 'synced') {
    if (fields.length) throw new Error(`synced takes no fields: ${quote(line)}`);
    return { op };
  }
  if (op !== 'flow' && op !== 'gone') throw new Error(`unknown message ${quote(op)}`);
  const want = op === 'flow' ? 9 : 6;
  if (fields.length !== want) throw new Error(`${op} takes ${want} fields, not ${fields.length}: ${quote(line)}`);
  const [protocol, source, sourcePort, destination, destinationPort, address, port, mark, timeout] = fields;
  if (protocol !== 'tcp' && protocol !== 'udp') throw new Error(`protocol ${quote(protocol)} is not tcp or udp`);
  const family = familyOf('address', address);
  if (familyOf('source', source) !== family || familyOf('destination', destination) !== family) {
    throw new Error(`source, destination and address are not of one family: ${quote(line)}`);
  }
  const key: ReplicaFlowKey = {
    protocol,
    source: source as string,
    sourcePort: integer('sourcePort', sourcePort, 1, 65_535),
    destination: destination as string,
    destinationPort: integer('destinationPort', destinationPort, 1, 65_535),
    address: address as string,
  };
  if (op === 'gone') return { op, flow: key };
  return {
    op,
    flow: {
      family,
      ...key,
      port: integer('port', port, 1, 65_535),
      mark: integer('mark', mark, 0, 0xffff_ffff),
      timeoutSeconds: integer('timeoutSeconds', timeout, 0, maxTimeoutSeconds),
    },
  };
}

const quote = (value: unknown) => JSON.stringify(value)?.slice(0, 80) ?? String(value);

function familyOf(field: string, value: unknown): 4 | 6 {
  // isIP takes an IPv6 address with a zone (fe80::1%eth0), which conntrack does not.
  const family = typeof value === 'string' && !value.includes('%') ? isIP(value) : 0;
  if (family === 0) throw new Error(`${field} ${quote(value)} is not an IP address`);
  return family as 4 | 6;
}

function integer(field: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${field} ${quote(value)} is not an integer from ${min} to ${max}`);
  }
  return value;
}

interface Entry {
  flow: ReplicaFlow;
  /** The node that sent it. */
  peer: string;
  /** When it was last sent (ms). */
  seenAt: number;
  expiresAt: number;
}

/**
 * The flows of the gateway's failover addresses as their owners last sent them, bounded: an entry
 * expires with the timeout it came with (counted from when it came), and past `limit` entries the
 * one seen longest ago is forgotten (and counted in `dropped`). An entry takes about 670 bytes of
 * heap (100,000 IPv4 flows read from a stream: 67 MB), so the default limit holds up to 134 MB.
 */
export class FlowReplica {
  readonly #entries = new Map<string, Entry>();
  readonly #limit: number;
  dropped = 0;

  constructor(limit = 200_000) {
    this.#limit = limit;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Takes one message from `peer` at `now` (ms); `synced` ends that peer's round begun at `roundStart`. */
  apply(peer: string, message: FlowMessage, now: number, roundStart = now): void {
    if (message.op === 'synced') return this.synced(peer, roundStart);
    const key = replicaKey(message.flow);
    // Deleted and set again, so that the map's order is the order flows were last seen in.
    this.#entries.delete(key);
    if (message.op === 'gone') return;
    const flow = message.flow;
    this.#entries.set(key, { flow, peer, seenAt: now, expiresAt: now + flow.timeoutSeconds * 1000 });
    if (this.#entries.size > this.#limit) {
      this.#entries.delete(this.#entries.keys().next().value!);
      this.dropped++;
    }
  }

  /** Forgets the flows that `peer` has not sent since `since` (ms): its round ended without them. */
  synced(peer: string, since: number): void {
    for (const [key, entry] of this.#entries)
      if (entry.peer === peer && entry.seenAt < since) this.#entries.delete(key);
  }

  /** Forgets the flows whose timeout has passed at `now`. */
  expire(now: number): void {
    for (const [key, entry] of this.#entries) if (entry.expiresAt <= now) this.#entries.delete(key);
  }

  /** Forgets the flows of `address` (once they were injected, say). */
  forget(address: string): void {
    for (const [key, entry] of this.#entries) if (entry.flow.address === address) this.#entries.delete(key);
  }

  /** The live flows of `address` at `now`, each with the seconds it has left. */
  flows(address: string, now: number): ReplicaFlow[] {
    const flows: ReplicaFlow[] = [];
    for (const { flow, expiresAt } of this.#entries.values()) {
      if (flow.address !== address || expiresAt <= now) continue;
      flows.push({ ...flow, timeoutSeconds: Math.ceil((expiresAt - now) / 1000) });
    }
    return flows;
  }

  /** The addresses with flows, and how many each. */
  counts(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const { flow } of this.#entries.values()) counts.set(flow.address, (counts.get(flow.address) ?? 0) + 1);
    return counts;
  }
}

/**
 * The `conntrack -R` file that creates these entries: each translated to its address and port
 * with source NAT, and no reply tuple given (see above); TCP ones established, whatever state they
 * were sent in (one that had only begun is then taken up mid-stream as well).
 */
export function injectionCommands(flows: readonly ReplicaFlow[]): string {
  let text = '';
  for (const f of flows) {
    const nat = f.family === 6 ? `[${f.address}]:${f.port}` : `${f.address}:${f.port}`;
    const state = f.protocol === 'tcp' ? ' --state ESTABLISHED' : '';
    text +=
      `-I -p ${f.protocol} -s ${f.source} -d ${f.destination} --sport ${f.sourcePort} --dport ${f.destinationPort}` +
      `${state} -u SEEN_REPLY,ASSURED -t ${Math.max(1, f.timeoutSeconds)} -m ${f.mark} --src-nat ${nat}\n`;
  }
  return text;
}
