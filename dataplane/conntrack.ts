// The kernel's connection tracking as naat sees it: the flows leaving through each uplink (from
// conntrack events, joined with the uplink in their mark), and the removal of the flows pinned to
// an uplink that failed so that their applications reconnect through another.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { exec, type Command } from './exec.ts';
import { sourceKey } from './flow-key.ts';
import { defaultMarks, markField, markOf, valueOf, type MarkField } from '../contracts/gateway/index.ts';

export interface Flow {
  id: number;
  family: 4 | 6;
  protocol: string;
  source: string;
  sourcePort?: number;
  destination: string;
  destinationPort?: number;
  /** Where the reply goes after translation: the uplink address and port the server saw. */
  mappedAddress: string;
  mappedPort?: number;
  /** Uplink id from the mark (under the uplink id bits it was parsed with), 0 when the flow is not naat's. */
  uplink: number;
  startedAt: Date;
  /** Packets and bytes each way so far; conntrack prints them only with net.netfilter.nf_conntrack_acct=1. */
  counters?: FlowCounters;
}

/** Sent: from the pod towards the destination; received: the replies. */
export interface FlowCounters {
  packetsSent: number;
  bytesSent: number;
  packetsReceived: number;
  bytesReceived: number;
}

export type FlowEvent = { type: 'new' | 'destroy'; flow: Flow };

/**
 * One line of `conntrack -L|-E -o id,extended`, e.g.
 * `[NEW] ipv4 2 tcp 6 120 SYN_SENT src=10.244.1.2 dst=203.0.113.10 sport=40000 dport=80 [UNREPLIED]
 *  src=203.0.113.10 dst=100.64.1.2 sport=80 dport=61000 mark=65536 id=1234`
 * (one line), its uplink id read from the `uplinks` bits of the mark. Returns undefined for anything else.
 */
export function parseConntrackLine(
  line: string,
  now = new Date(),
  uplinks: MarkField = markField(defaultMarks.uplinks),
): FlowEvent | undefined {
  const type = line.includes('[DESTROY]') ? 'destroy' : 'new';
  const words = line.trim().split(/\s+/);
  const at = words.findIndex((w) => w === 'ipv4' || w === 'ipv6');
  if (at < 0) return undefined;
  const pairs = words.filter((w) => w.includes('=')).map((w) => w.split('=') as [string, string]);
  const first = (key: string, nth = 0) => pairs.filter(([k]) => k === key)[nth]?.[1];
  const src = first('src');
  const dst = first('dst');
  const replyDst = first('dst', 1);
  // ICMP flows carry their identifier as id= too; the conntrack id is the last one.
  const id = Number(pairs.filter(([k]) => k === 'id').at(-1)?.[1]);
  if (!src || !dst || !replyDst || !Number.isFinite(id)) return undefined;
  const port = (value: string | undefined) => (value === undefined ? undefined : Number(value));
  const mark = Number(first('mark') ?? 0);
  // With accounting on, each direction's tuple is followed by its packets= and bytes=.
  const counter = (key: string, nth: number) => Number(first(key, nth));
  const counters =
    first('bytes', 1) === undefined
      ? undefined
      : {
          packetsSent: counter('packets', 0),
          bytesSent: counter('bytes', 0),
          packetsReceived: counter('packets', 1),
          bytesReceived: counter('bytes', 1),
        };
  return {
    type,
    flow: {
      id,
      family: words[at] === 'ipv4' ? 4 : 6,
      protocol: words[at + 2] ?? 'unknown',
      source: src,
      sourcePort: port(first('sport')),
      destination: dst,
      destinationPort: port(first('dport')),
      mappedAddress: replyDst,
      mappedPort: port(first('dport', 1)),
      uplink: valueOf(uplinks, mark),
      startedAt: now,
      ...(counters ? { counters } : {}),
    },
  };
}

/**
 * naat's flows by conntrack id, bounded: past `limit` the oldest are forgotten (and counted), so a
 * flood of flows cannot grow the agent without bound.
 */
export class FlowTable {
  readonly #flows = new Map<number, Flow>();
  /** The flow of each (protocol, source address, source port), for associations to find theirs. */
  readonly #bySource = new Map<string, Flow>();
  readonly #limit: number;
  dropped = 0;

  constructor(limit = 200_000) {
    this.#limit = limit;
  }

  apply(event: FlowEvent): void {
    if (event.type === 'destroy') {
      this.#forget(event.flow.id);
      return;
    }
    const flow = event.flow;
    if (!flow.uplink) return;
    this.#flows.set(flow.id, flow);
    this.#bySource.set(sourceKey(flow.protocol, flow.source, flow.sourcePort), flow);
    if (this.#flows.size > this.#limit) {
      this.#forget(this.#flows.keys().next().value!);
      this.dropped++;
    }
  }

  #forget(id: number): void {
    const flow = this.#flows.get(id);
    if (!flow) return;
    this.#flows.delete(id);
    const key = sourceKey(flow.protocol, flow.source, flow.sourcePort);
    if (this.#bySource.get(key)?.id === id) this.#bySource.delete(key);
  }

  replace(flows: Flow[]): void {
    this.#flows.clear();
    this.#bySource.clear();
    for (const flow of flows) this.apply({ type: 'new', flow });
  }

  /** The open flow from this source address and port, if naat routes one. */
  fromSource(protocol: string, address: string, port: number): Flow | undefined {
    return this.#bySource.get(sourceKey(protocol, address, port));
  }

  get size(): number {
    return this.#flows.size;
  }

  flows(): IterableIterator<Flow> {
    return this.#flows.values();
  }

  /** Active flows per uplink id. */
  activeByUplink(): Map<number, number> {
    const counts = new Map<number, number>();
    for (const flow of this.#flows.values()) counts.set(flow.uplink, (counts.get(flow.uplink) ?? 0) + 1);
    return counts;
  }

  /**
   * Per uplink id, the most flows sharing one (translated address, destination, destination
   * port, protocol): the kernel has `range` source ports for each such tuple, no more.
   */
  busiestMapping(): Map<number, number> {
    const counts = new Map<string, number>();
    for (const f of this.#flows.values()) {
      if (f.mappedPort === undefined) continue;
      const key = `${f.uplink} ${f.protocol} ${f.mappedAddress} ${f.destination} ${f.destinationPort}`;
      counts.set(key, (counts.get(key) ?? 0) + 1);
    }
    const busiest = new Map<number, number>();
    for (const [key, count] of counts) {
      const uplink = Number(key.split(' ')[0]);
      busiest.set(uplink, Math.max(busiest.get(uplink) ?? 0, count));
    }
    return busiest;
  }
}

/** Every method reads or matches uplink ids in the `uplinks` bits of the conntrack mark. */
export interface Conntrack {
  /** Deletes the flows whose mark holds this uplink id; resolves with how many were deleted. */
  deleteUplink(id: number, uplinks: MarkField): Promise<number>;
  /** Deletes the flows from this source address and port; resolves with how many were deleted. */
  deleteFlow(transport: 'tcp' | 'udp', sourceAddress: string, sourcePort: number): Promise<number>;
  list(uplinks: MarkField): Promise<Flow[]>;
  /** Streams new and destroyed flows until the returned function is called. */
  watch(uplinks: MarkField, onEvent: (event: FlowEvent) => void, onError: (error: Error) => void): () => void;
}

const hex = (n: number) => `0x${n.toString(16)}`;

export class ExecConntrack implements Conntrack {
  readonly #conntrack: Command;
  constructor(conntrack: Command = ['conntrack']) {
    this.#conntrack = conntrack;
  }

  async deleteUplink(id: number, uplinks: MarkField): Promise<number> {
    return this.deleteMarked(markOf(uplinks, id), uplinks.mask);
  }

  /** Deletes the flows whose mark has `value` under `mask`, of both families; resolves with how many. */
  async deleteMarked(value: number, mask: number): Promise<number> {
    let deleted = 0;
    for (const family of ['ipv4', 'ipv6']) {
      deleted += await this.#deleted(['-D', '-f', family, '--mark', `${hex(value)}/${hex(mask)}`]);
    }
    return deleted;
  }

  async deleteFlow(transport: 'tcp' | 'udp', sourceAddress: string, sourcePort: number): Promise<number> {
    const family = sourceAddress.includes(':') ? 'ipv6' : 'ipv4';
    const args = ['-D', '-f', family, '-p', transport, '-s', sourceAddress, '--sport', String(sourcePort)];
    return this.#deleted(args);
  }

  async #deleted(args: string[]): Promise<number> {
    const { code, stderr } = await exec(this.#conntrack, args);
    const count = /(\d+) flow entries have been deleted/.exec(stderr);
    if (code !== 0 && !count) throw new Error(`conntrack ${args.join(' ')} failed: ${stderr.trim()}`);
    return Number(count?.[1] ?? 0);
  }

  async list(uplinks: MarkField): Promise<Flow[]> {
    const flows: Flow[] = [];
    for (const family of ['ipv4', 'ipv6']) {
      const { code, stdout, stderr } = await exec(this.#conntrack, ['-L', '-f', family, '-o', 'id,extended']);
      if (code !== 0) throw new Error(`conntrack -L failed: ${stderr.trim()}`);
      for (const line of stdout.split('\n')) {
        // A TCP flow that is closing holds its entry for a while but is no longer active.
        if (/ (TIME_WAIT|CLOSE|LAST_ACK|FIN_WAIT|CLOSE_WAIT) /.test(line)) continue;
        const event = parseConntrackLine(line, new Date(), uplinks);
        if (event?.flow.uplink) flows.push(event.flow);
      }
    }
    return flows;
  }

  watch(uplinks: MarkField, onEvent: (event: FlowEvent) => void, onError: (error: Error) => void): () => void {
    const children = new Set<ChildProcess>();
    let stopped = false;
    const start = (family: string) => {
      const args = ['-E', '-f', family, '-e', 'NEW,DESTROY', '-o', 'id,extended', '--buffer-size', '8388608'];
      const child = spawn(this.#conntrack[0]!, [...this.#conntrack.slice(1), ...args], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
      children.add(child);
      createInterface({ input: child.stdout! }).on('line', (line) => {
        const event = parseConntrackLine(line, new Date(), uplinks);
        if (event) onEvent(event);
      });
      child.on('error', onError);
      // conntrack exits with 0 on SIGTERM, so only `stopped` tells an asked-for end from a failure.
      child.on('exit', (code, signal) => {
        children.delete(child);
        if (stopped) return;
        onError(new Error(`conntrack -E -f ${family} exited (${code ?? signal}); restarting it`));
        setTimeout(() => stopped || start(family), 1000).unref();
      });
    };
    start('ipv4');
    start('ipv6');
    return () => {
      stopped = true;
      for (const child of children) child.kill('SIGTERM');
    };
  }
}

/** The conntrack table's fill and what the kernel dropped for want of room, in this network namespace. */
export interface ConntrackStats {
  /** Entries now (nf_conntrack_count). */
  entries: number;
  /** The most it holds (nf_conntrack_max); the kernel drops new flows past it once it cannot evict an unconfirmed one. */
  max: number;
  /**
   * Packets conntrack dropped (the `drop` column of /proc/net/stat/nf_conntrack): with the table
   * full and nothing to evict, and when a new flow failed to enter it (`insertFailed` too).
   */
  dropped: number;
  /** Flows that failed to enter the table, among them those that found no free SNAT port (`insert_failed`). */
  insertFailed: number;
}

/**
 * Reads the conntrack table's fill and drop counters from /proc, synchronously (a few small files
 * read at each scrape); undefined where conntrack is not loaded. The count and the counters are
 * the network namespace's own; the maximum is the whole host's (only the initial namespace may set it).
 */
export function readConntrackStats(proc = '/proc'): ConntrackStats | undefined {
  try {
    const number = (path: string) => Number(readFileSync(`${proc}/sys/net/netfilter/${path}`, 'utf8').trim());
    const [header, ...cpus] = readFileSync(`${proc}/net/stat/nf_conntrack`, 'utf8').trim().split('\n');
    const columns = header!.trim().split(/\s+/);
    const sum = (name: string) => {
      const at = columns.indexOf(name);
      return at < 0 ? 0 : cpus.reduce((total, row) => total + parseInt(row.trim().split(/\s+/)[at] ?? '0', 16), 0);
    };
    return {
      entries: number('nf_conntrack_count'),
      max: number('nf_conntrack_max'),
      dropped: sum('drop'),
      insertFailed: sum('insert_failed'),
    };
  } catch {
    return undefined;
  }
}
