// The kernel's connection tracking as naat sees it: the flows leaving through each uplink (from
// conntrack events, joined with the uplink in their mark), and the removal of the flows pinned to
// an uplink that failed so that their applications reconnect through another.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, createServer, isIPv6, type Socket } from 'node:net';
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
  /** The whole conntrack mark, as parsed from conntrack's output. */
  mark?: number;
  /** Seconds left before the kernel forgets the flow, as conntrack printed it (not in destroy events). */
  timeoutSeconds?: number;
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
  return new ConntrackParser(uplinks).push(Buffer.from(`${line}\n`, 'latin1'), now)[0];
}

/** The bytes of conntrack's text output that the parser looks for. */
const newline = 0x0a;
const space = 0x20;
const equals = 0x3d;
const bracket = 0x5b;

/** The TCP states of a flow that is closing (no longer active), as conntrack names them. */
const closingStates = new Set(['TIME_WAIT', 'CLOSE', 'LAST_ACK', 'FIN_WAIT', 'CLOSE_WAIT']);

/**
 * Pods' and uplinks' addresses as the same strings every time: they repeat across flows, and each
 * flow and attribution record holds them (a log of 100,000 records would otherwise hold 200,000
 * copies). Destinations are not kept: they may all differ, and would push the others out. Past
 * `knownLimit` addresses the table starts afresh.
 */
const knownAddresses = new Map<string, string>();
const knownLimit = 65_536;
function known(address: string): string {
  const kept = knownAddresses.get(address);
  if (kept !== undefined) return kept;
  if (knownAddresses.size >= knownLimit) knownAddresses.clear();
  knownAddresses.set(address, address);
  return address;
}

/** Protocol names as the same strings every time. */
const protocols = new Map(['tcp', 'udp', 'icmp', 'icmpv6', 'sctp', 'dccp', 'gre', 'udplite'].map((p) => [p, p]));

/** The decimal number of bytes [start, end), or NaN where that is not one. */
function decimal(b: Buffer, start: number, end: number): number {
  let n = 0;
  for (let i = start; i < end; i++) {
    const digit = b[i]! - 0x30;
    if (digit < 0 || digit > 9) return NaN;
    n = n * 10 + digit;
  }
  return n;
}

const isUpper = (byte: number) => byte >= 0x41 && byte <= 0x5a;

/** Whether bytes [start, end) spell `word`. */
function spells(b: Buffer, start: number, end: number, word: string): boolean {
  if (end - start !== word.length) return false;
  for (let i = 0; i < word.length; i++) if (b[start + i] !== word.charCodeAt(i)) return false;
  return true;
}

/**
 * Reads the lines of `conntrack -L|-E -o id,extended` as they arrive in chunks (see
 * parseConntrackLine for one). Each line is scanned once, byte by byte, with no string per line or
 * per word: only the addresses and the protocol become strings, made afresh so that they do not
 * keep the chunk they came in alive, the source and translated addresses shared (`known`). A line
 * cut between chunks waits for the rest. Lines that are not flows are skipped, and with
 * `skipClosing` TCP flows that are closing.
 */
export class ConntrackParser {
  readonly #uplinks: MarkField;
  readonly #skipClosing: boolean;
  #rest: Buffer | undefined;

  constructor(uplinks: MarkField, options: { skipClosing?: boolean } = {}) {
    this.#uplinks = uplinks;
    this.#skipClosing = options.skipClosing ?? false;
  }

  /** The events of the complete lines so far, each flow started (or ended) at `now`. */
  push(chunk: Buffer, now: Date): FlowEvent[] {
    const b = this.#rest ? Buffer.concat([this.#rest, chunk]) : chunk;
    const events: FlowEvent[] = [];
    let start = 0;
    for (let end = b.indexOf(newline); end >= 0; end = b.indexOf(newline, start)) {
      const event = this.#line(b, start, end, now);
      if (event) events.push(event);
      start = end + 1;
    }
    // A copy: a view would keep the whole chunk.
    this.#rest = start < b.length ? Buffer.from(b.subarray(start)) : undefined;
    return events;
  }

  #line(b: Buffer, start: number, end: number, now: Date): FlowEvent | undefined {
    let type: FlowEvent['type'] = 'new';
    let family: 4 | 6 | undefined;
    let familyWord = -1;
    let protocol = 'unknown';
    let words = 0;
    let source: string | undefined;
    let destination: string | undefined;
    let mappedAddress: string | undefined;
    let sourcePort: number | undefined;
    let destinationPort: number | undefined;
    let mappedPort: number | undefined;
    let mark = 0;
    let timeoutSeconds: number | undefined;
    let id = NaN;
    // Each tuple's src=, dst=, sport=, dport=, packets= and bytes= in turn: the original's, then the reply's.
    let srcs = 0;
    let dsts = 0;
    let sports = 0;
    let dports = 0;
    let packets = 0;
    let bytes = 0;
    let marks = 0;
    let packetsSent = NaN;
    let packetsReceived = NaN;
    let bytesSent = NaN;
    let bytesReceived = NaN;
    let i = start;
    while (i < end) {
      while (i < end && b[i] === space) i++;
      if (i === end) break;
      const word = i;
      let eq = -1;
      for (; i < end && b[i] !== space; i++) if (eq < 0 && b[i] === equals) eq = i;
      const wordEnd = i;
      const at = words++;
      if (eq < 0) {
        if (b[word] === bracket) {
          if (spells(b, word, wordEnd, '[DESTROY]')) type = 'destroy';
        } else if (familyWord < 0 && (spells(b, word, wordEnd, 'ipv4') || spells(b, word, wordEnd, 'ipv6'))) {
          family = b[word + 3] === 0x34 ? 4 : 6;
          familyWord = at;
        } else if (familyWord >= 0 && at === familyWord + 2) {
          const name = b.toString('latin1', word, wordEnd);
          protocol = protocols.get(name) ?? name;
        } else if (familyWord >= 0 && at === familyWord + 4) {
          const seconds = decimal(b, word, wordEnd);
          if (Number.isFinite(seconds)) timeoutSeconds = seconds;
        } else if (this.#skipClosing && isUpper(b[word]!) && closingStates.has(b.toString('latin1', word, wordEnd))) {
          return undefined;
        }
        continue;
      }
      const value = eq + 1;
      switch (eq - word) {
        case 2:
          // ICMP flows carry their identifier as id= too; the conntrack id is the last one.
          if (spells(b, word, eq, 'id')) id = decimal(b, value, wordEnd);
          break;
        case 3:
          if (spells(b, word, eq, 'src')) {
            if (srcs++ === 0) source = known(b.toString('latin1', value, wordEnd));
          } else if (spells(b, word, eq, 'dst')) {
            const n = dsts++;
            if (n === 0) destination = b.toString('latin1', value, wordEnd);
            else if (n === 1) mappedAddress = known(b.toString('latin1', value, wordEnd));
          }
          break;
        case 4:
          if (spells(b, word, eq, 'mark') && marks++ === 0) mark = decimal(b, value, wordEnd);
          break;
        case 5:
          if (spells(b, word, eq, 'sport')) {
            if (sports++ === 0) sourcePort = decimal(b, value, wordEnd);
          } else if (spells(b, word, eq, 'dport')) {
            const n = dports++;
            if (n === 0) destinationPort = decimal(b, value, wordEnd);
            else if (n === 1) mappedPort = decimal(b, value, wordEnd);
          } else if (spells(b, word, eq, 'bytes')) {
            const n = bytes++;
            if (n === 0) bytesSent = decimal(b, value, wordEnd);
            else if (n === 1) bytesReceived = decimal(b, value, wordEnd);
          }
          break;
        case 7:
          if (spells(b, word, eq, 'packets')) {
            const n = packets++;
            if (n === 0) packetsSent = decimal(b, value, wordEnd);
            else if (n === 1) packetsReceived = decimal(b, value, wordEnd);
          }
          break;
      }
    }
    if (!family || !source || !destination || !mappedAddress || !Number.isFinite(id)) return undefined;
    const flow: Flow = {
      id,
      family,
      protocol,
      source,
      sourcePort,
      destination,
      destinationPort,
      mappedAddress,
      mappedPort,
      uplink: valueOf(this.#uplinks, mark),
      mark,
      // Every field in the literal, so that every flow has one shape and no properties apart.
      timeoutSeconds,
      startedAt: now,
      // With accounting on, each direction's tuple is followed by its packets= and bytes=.
      counters: bytes > 1 ? { packetsSent, bytesSent, packetsReceived, bytesReceived } : undefined,
    };
    return { type, flow };
  }
}

/** Whether two sightings are of one flow: conntrack reuses ids, so the tuples must be the same too. */
export function sameTuples(a: FlowTuples, b: FlowTuples): boolean {
  return (
    a.protocol === b.protocol &&
    a.source === b.source &&
    a.sourcePort === b.sourcePort &&
    a.destination === b.destination &&
    a.destinationPort === b.destinationPort &&
    a.mappedAddress === b.mappedAddress &&
    a.mappedPort === b.mappedPort
  );
}

type FlowTuples = Pick<
  Flow,
  'protocol' | 'source' | 'sourcePort' | 'destination' | 'destinationPort' | 'mappedAddress' | 'mappedPort'
>;

/**
 * naat's flows by conntrack id, bounded: past `limit` the oldest are forgotten (and counted), so a
 * flood of flows cannot grow the agent without bound.
 */
export class FlowTable {
  readonly #flows = new Map<number, Flow>();
  /** The flow of each (protocol, source address, source port), for associations to find theirs. */
  readonly #bySource = new Map<string, Flow>();
  /**
   * Kept as flows come and go, for the agent's report (read at every /status, /metrics and status
   * write), which would otherwise walk every flow and make a string for each, each time: flows
   * per uplink id; per uplink id, the flows of each (protocol, translated address, destination,
   * destination port); and the most of those per uplink id, exact unless the uplink is `#stale`.
   */
  readonly #active = new Map<number, number>();
  readonly #mappings = new Map<number, Map<string, number>>();
  readonly #busiest = new Map<number, number>();
  readonly #stale = new Set<number>();
  readonly #limit: number;
  dropped = 0;

  constructor(limit = 200_000) {
    this.#limit = limit;
  }

  /**
   * A flow seen again (a listing, or its NEW event after a listing found it) keeps the start it was
   * first seen at: each sighting is stamped with the moment it was parsed. The flow known is
   * updated in place, not replaced: its strings are those its attribution record holds, where a
   * new object every listing (every 10 s, for every flow) would hold copies of its own.
   */
  apply(event: FlowEvent): void {
    const seen = event.flow;
    if (event.type === 'destroy') {
      this.#forget(seen.id);
      return;
    }
    if (!seen.uplink) return;
    const known = this.#flows.get(seen.id);
    if (known && sameTuples(known, seen) && known.uplink === seen.uplink) {
      if (seen.startedAt < known.startedAt) known.startedAt = seen.startedAt;
      known.mark = seen.mark;
      known.timeoutSeconds = seen.timeoutSeconds;
      known.counters = seen.counters;
      return;
    }
    // The id reused for another flow: the one it named is gone.
    if (known) this.#forget(known.id);
    this.#flows.set(seen.id, seen);
    this.#bySource.set(sourceKey(seen.protocol, seen.source, seen.sourcePort), seen);
    this.#count(seen, 1);
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
    this.#count(flow, -1);
  }

  #count(flow: Flow, by: 1 | -1): void {
    const { uplink } = flow;
    const active = (this.#active.get(uplink) ?? 0) + by;
    if (active) this.#active.set(uplink, active);
    else this.#active.delete(uplink);
    if (flow.mappedPort === undefined) return;
    let mappings = this.#mappings.get(uplink);
    if (!mappings) this.#mappings.set(uplink, (mappings = new Map()));
    // One flat string, as sourceKey's.
    const key = [flow.protocol, flow.mappedAddress, flow.destination, String(flow.destinationPort)].join(' ');
    const count = (mappings.get(key) ?? 0) + by;
    if (count) mappings.set(key, count);
    else mappings.delete(key);
    const busiest = this.#busiest.get(uplink) ?? 0;
    if (count > busiest) this.#busiest.set(uplink, count);
    // The busiest one fewer: another may be as busy, or none; found when next asked.
    else if (by < 0 && count + 1 === busiest) this.#stale.add(uplink);
  }

  /** The kernel's flows now (a listing): the others are forgotten, those known keep their start. */
  replace(flows: Flow[]): void {
    const listed = new Set(flows.map((flow) => flow.id));
    for (const id of [...this.#flows.keys()]) if (!listed.has(id)) this.#forget(id);
    for (const flow of flows) this.apply({ type: 'new', flow });
  }

  get(id: number): Flow | undefined {
    return this.#flows.get(id);
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
    return new Map(this.#active);
  }

  /**
   * Per uplink id, the most flows sharing one (translated address, destination, destination
   * port, protocol): the kernel has `range` source ports for each such tuple, no more.
   */
  busiestMapping(): Map<number, number> {
    for (const uplink of this.#stale) {
      let most = 0;
      for (const count of this.#mappings.get(uplink)?.values() ?? []) most = Math.max(most, count);
      if (most) this.#busiest.set(uplink, most);
      else {
        this.#busiest.delete(uplink);
        this.#mappings.delete(uplink);
      }
    }
    this.#stale.clear();
    return new Map(this.#busiest);
  }
}

/** Every method reads or matches uplink ids in the `uplinks` bits of the conntrack mark. */
export interface Conntrack {
  /** Deletes the flows whose mark holds this uplink id; resolves with how many were deleted. */
  deleteUplink(id: number, uplinks: MarkField): Promise<number>;
  /** Deletes the flows from this source address and port; resolves with how many were deleted. */
  deleteFlow(transport: 'tcp' | 'udp', sourceAddress: string, sourcePort: number): Promise<number>;
  list(uplinks: MarkField): Promise<Flow[]>;
  /**
   * Streams new and destroyed flows until the returned function is called, in batches: the events
   * that came together, in order, so that what can be done once per batch is.
   */
  watch(
    uplinks: MarkField,
    onEvents: (events: readonly FlowEvent[]) => void,
    onError: (error: Error) => void,
  ): () => void;
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

  /** Deletes the flows whose replies go to `address` (translated to it); resolves with how many. */
  async deleteTranslatedTo(address: string): Promise<number> {
    return this.#deleted(['-D', '-f', isIPv6(address) ? 'ipv6' : 'ipv4', '--reply-dst', address]);
  }

  async #deleted(args: string[]): Promise<number> {
    const { code, stderr } = await exec(this.#conntrack, args);
    const count = /(\d+) flow entries have been deleted/.exec(stderr);
    if (code !== 0 && !count) throw new Error(`conntrack ${args.join(' ')} failed: ${stderr.trim()}`);
    return Number(count?.[1] ?? 0);
  }

  /** With `replyDestination`, only the flows whose replies go to that address (translated to it). */
  async list(uplinks: MarkField, replyDestination?: string): Promise<Flow[]> {
    const flows: Flow[] = [];
    const filter = replyDestination === undefined ? [] : ['--reply-dst', replyDestination];
    const families = replyDestination === undefined ? ['ipv4', 'ipv6'] : [isIPv6(replyDestination) ? 'ipv6' : 'ipv4'];
    for (const family of families) {
      // A TCP flow that is closing holds its entry for a while but is no longer active.
      const parser = new ConntrackParser(uplinks, { skipClosing: true });
      const now = new Date();
      const { code, stderr } = await this.#run(['-L', '-f', family, '-o', 'id,extended', ...filter], (chunk) => {
        for (const { flow } of parser.push(chunk, now)) if (flow.uplink) flows.push(flow);
      });
      if (code !== 0) throw new Error(`conntrack -L failed: ${stderr.trim()}`);
    }
    return flows;
  }

  /** Runs conntrack to its end, its output to `onChunk` as it comes: a listing is parsed without holding all of its text. */
  #run(args: string[], onChunk: (chunk: Buffer) => void): Promise<{ code: number; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.#conntrack[0]!, [...this.#conntrack.slice(1), ...args], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stderr = '';
      child.stdout!.on('data', onChunk);
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code: code ?? 1, stderr }));
    });
  }

  watch(
    uplinks: MarkField,
    onEvents: (events: readonly FlowEvent[]) => void,
    onError: (error: Error) => void,
  ): () => void {
    const running = new Set<{ child?: ChildProcess; reader: Socket }>();
    let stopped = false;
    const restart = (why: string) => {
      if (stopped) return;
      onError(new Error(`conntrack -E ${why}; restarting it`));
      setTimeout(() => stopped || void start(), 1000).unref();
    };
    const start = async () => {
      const parser = new ConntrackParser(uplinks);
      let pair: { reader: Socket; writer: Socket };
      try {
        pair = await socketPair((chunk) => {
          const events = parser.push(chunk, new Date());
          if (events.length) onEvents(events);
          setTimeout(() => pair.reader.resume(), eventRestMs);
          return false;
        });
      } catch (error) {
        return restart(`had no socket to write to (${(error as Error).message})`);
      }
      const stream = { reader: pair.reader, child: undefined as ChildProcess | undefined };
      running.add(stream);
      pair.reader.on('error', () => {});
      if (stopped) {
        pair.writer.destroy();
        return stop();
      }
      // One process for both families: every listener gets every event, and -f only filters them
      // in conntrack itself, so a second process would receive and decode them all again.
      const args = ['-E', '-e', 'NEW,DESTROY', '-o', 'id,extended', '--buffer-size', '8388608'];
      const child = spawn(this.#conntrack[0]!, [...this.#conntrack.slice(1), ...args], {
        stdio: ['ignore', pair.writer, 'ignore'],
      });
      // The child holds the writer now.
      pair.writer.destroy();
      stream.child = child;
      child.on('error', onError);
      // conntrack exits with 0 on SIGTERM, so only `stopped` tells an asked-for end from a failure.
      // What it wrote before it exited is still read; the reader closes at the end of it.
      child.on('exit', (code, signal) => {
        running.delete(stream);
        restart(`exited (${code ?? signal})`);
      });
    };
    const stop = () => {
      stopped = true;
      for (const { child, reader } of running) {
        child?.kill('SIGTERM');
        reader.destroy();
      }
    };
    void start();
    return stop;
  }
}

/**
 * How long the event stream rests after each read. conntrack writes each event on its own, and
 * read as they come each would cost the agent a wakeup, a read and a parse; resting lets the events
 * of the next milliseconds gather in the socket to be read and handled as one batch. It is also
 * how late an event may be handled (and its flow's start or end time taken) once the stream is busy.
 */
const eventRestMs = 10;

/**
 * A connected pair of Unix stream sockets, in the abstract namespace (nothing on disk): the writer
 * for a child's stdout, the reader for the agent. The reader reads into one buffer, handed to
 * `onRead`, and stops reading from the socket when `onRead` returns false until it is resumed
 * (net's `onread`); a child's stdout pipe would go on being read into memory while paused.
 */
async function socketPair(onRead: (chunk: Buffer) => boolean): Promise<{ reader: Socket; writer: Socket }> {
  const server = createServer();
  try {
    const path = `\0naat-conntrack-${process.pid}-${randomUUID()}`;
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(path, resolve));
    const buffer = Buffer.alloc(256 * 1024);
    const reader = connect({ path, onread: { buffer, callback: (n) => onRead(buffer.subarray(0, n)) } });
    const [[writer]] = (await Promise.all([once(server, 'connection'), once(reader, 'connect')])) as [
      [Socket],
      unknown,
    ];
    return { reader, writer };
  } finally {
    server.close();
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
