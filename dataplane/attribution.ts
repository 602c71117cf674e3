// The NAT attribution log: one record per translation the gateway made, from the flow's start
// (conntrack NEW) to its end (DESTROY), with who was behind it (pod, container, application),
// what decided (policy rule, verdict) and where it went (uplink, mapped address and port). It
// answers "who used this public address and port at this time" after the flow has ended, which
// conntrack cannot. Pure and bounded: at most `maxRecords` records, and ended ones only for
// `maxAgeMs`; past that the oldest go first and are counted. A record a line of JSON
// (encodeRecord, decodeRecord) is how a stopped agent keeps the log for its next run (restore).
import { isIP } from 'node:net';
import { addressToBytes, bytesToAddress } from '../common/index.ts';
import type { TraceContext } from '../proto/index.ts';
import type { Flow, FlowCounters } from './conntrack.ts';

export interface AttributedApplication {
  processName: string;
  executable: string;
  uid: number;
}

/** The flow's tuples as conntrack gave them, and who and what was behind it. */
export interface AttributionRecord extends Pick<
  Flow,
  | 'id'
  | 'family'
  | 'protocol'
  | 'source'
  | 'sourcePort'
  | 'destination'
  | 'destinationPort'
  | 'mappedAddress'
  | 'mappedPort'
  | 'counters'
> {
  start: Date;
  /** Absent while the flow is open. */
  end?: Date;
  uplink?: string;
  pod?: { namespace: string; name: string };
  container?: string;
  /** Known once the pod's sidecar has reported the socket, which may be after the flow started. */
  application?: AttributedApplication;
  /** namespace/name of the EgressPolicy whose rule decided; absent for the default action. */
  policy?: string;
  rule?: string;
  /** Deny when an association that arrived after the flow started had it ended. */
  verdict: 'Allow' | 'Deny';
  /** The W3C context of the sidecar's span for the flow's association (telemetry on): the flow span's parent. */
  trace?: TraceContext;
}

/** What may change while a flow is open: who is behind it and what that means for it. */
export type AttributionUpdate = Partial<
  Pick<AttributionRecord, 'pod' | 'container' | 'application' | 'policy' | 'rule' | 'verdict' | 'trace'>
>;

export interface Retention {
  maxRecords: number;
  maxAgeMs: number;
}

export const defaultRetention: Retention = { maxRecords: 100_000, maxAgeMs: 24 * 3600_000 };

export interface AttributionQuery {
  address: string;
  port: number;
  at: Date;
}

/**
 * `address`, `port` and `at` (ISO 8601) from a request, the address written as conntrack writes
 * it; a string naming the first bad parameter otherwise.
 */
export function parseAttributionQuery(params: URLSearchParams): AttributionQuery | string {
  const address = params.get('address') ?? '';
  if (!isIP(address)) return `address: ${JSON.stringify(address)} is not an IP address`;
  const port = params.get('port') ?? '';
  if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535)
    return `port: ${JSON.stringify(port)} is not a port number`;
  const at = params.get('at') ?? '';
  // Date also takes forms like "3" or "March 7"; only ISO 8601 is unambiguous.
  if (!/^\d{4}-\d{2}-\d{2}T/.test(at) || Number.isNaN(Date.parse(at)))
    return `at: ${JSON.stringify(at)} is not an ISO 8601 time`;
  return { address: bytesToAddress(addressToBytes(address)), port: Number(port), at: new Date(at) };
}

export class AttributionStore {
  readonly #retention: Retention;
  /** Open flows by conntrack id, oldest start first. */
  readonly #open = new Map<number, AttributionRecord>();
  /** Ended flows, oldest end first: age retention drops from the front. */
  readonly #ended = new Set<AttributionRecord>();
  /** Records dropped before their age, to stay within maxRecords. */
  dropped = 0;

  constructor(retention: Retention = defaultRetention) {
    this.#retention = retention;
  }

  /** Starts a record. A record still open under the same id lost its end event: it ends now. */
  open(record: AttributionRecord): void {
    this.close(record.id, record.start);
    this.#open.set(record.id, record);
    this.#expire(record.start);
    this.#trim();
  }

  /** Every record: the ended ones, oldest end first, then the open ones, oldest start first. */
  records(): AttributionRecord[] {
    return [...this.#ended, ...this.#open.values()];
  }

  /**
   * Takes back the records a former run of the agent kept, before this run records any: an open
   * one whose flow is still in the kernel (`live`) stays open, for the flow's end to close it; one
   * whose flow ended while no agent ran is closed at `now`, the first moment known to be after
   * its end (so that a question about the time in between still finds it).
   */
  restore(records: Iterable<AttributionRecord>, live: (record: AttributionRecord) => boolean, now: Date): void {
    const ended: AttributionRecord[] = [];
    for (const record of records) {
      if (!record.end && live(record)) this.#open.set(record.id, record);
      else ended.push(record.end ? record : { ...record, end: now });
    }
    for (const record of ended.sort((a, b) => a.end!.getTime() - b.end!.getTime())) this.#ended.add(record);
    this.#expire(now);
    this.#trim();
  }

  /** The open record of a flow, updated in place; undefined when the flow is not open. */
  update(id: number, change: AttributionUpdate): AttributionRecord | undefined {
    const record = this.#open.get(id);
    if (record) Object.assign(record, change);
    return record;
  }

  isOpen(id: number): boolean {
    return this.#open.has(id);
  }

  /** Ends the record of a flow; returns it, or undefined when none was open. */
  close(id: number, end: Date, counters?: FlowCounters): AttributionRecord | undefined {
    const record = this.#open.get(id);
    if (!record) return undefined;
    this.#open.delete(id);
    record.end = end;
    if (counters) record.counters = counters;
    this.#ended.add(record);
    return record;
  }

  /**
   * The records whose translation held `address`:`port` at `at`, ended or not: the shortest
   * first, since a flow that covers only the moment asked about says more than a long one that
   * merely overlaps it (the kernel reuses a mapped port for flows to other destinations).
   */
  query({ address, port, at }: AttributionQuery, now = new Date()): AttributionRecord[] {
    this.#expire(now);
    const t = at.getTime();
    const held = (r: AttributionRecord) =>
      r.mappedPort === port && r.mappedAddress === address && r.start.getTime() <= t && t <= (r.end ?? now).getTime();
    const duration = (r: AttributionRecord) => (r.end ?? now).getTime() - r.start.getTime();
    return [...this.#open.values(), ...this.#ended].filter(held).sort((a, b) => duration(a) - duration(b));
  }

  get size(): number {
    return this.#open.size + this.#ended.size;
  }

  /** Past maxRecords, the oldest ended record goes, else the oldest open one. */
  #trim(): void {
    while (this.size > this.#retention.maxRecords) {
      const oldest = this.#ended.values().next().value;
      if (oldest) this.#ended.delete(oldest);
      else this.#open.delete(this.#open.keys().next().value!);
      this.dropped++;
    }
  }

  #expire(now: Date): void {
    const cutoff = now.getTime() - this.#retention.maxAgeMs;
    for (const record of this.#ended) {
      if (record.end!.getTime() >= cutoff) return;
      this.#ended.delete(record);
    }
  }
}

/** A record as a line of JSON, for the agent's next run on the node to take back: its times in ISO 8601. */
export function encodeRecord(record: AttributionRecord): string {
  return JSON.stringify(record);
}

/** A line encodeRecord wrote, or an error that names what is wrong with it. */
export function decodeRecord(line: string): AttributionRecord {
  const value: unknown = JSON.parse(line);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not a JSON object');
  const record = value as Record<string, unknown>;
  for (const key of ['id', 'family'])
    if (typeof record[key] !== 'number') throw new Error(`${key}: ${JSON.stringify(record[key])} is not a number`);
  for (const key of ['protocol', 'source', 'destination', 'mappedAddress', 'verdict'])
    if (typeof record[key] !== 'string') throw new Error(`${key}: ${JSON.stringify(record[key])} is not a string`);
  const time = (key: 'start' | 'end') => {
    const at = new Date(record[key] as string);
    if (typeof record[key] !== 'string' || Number.isNaN(at.getTime()))
      throw new Error(`${key}: ${JSON.stringify(record[key])} is not a time`);
    return at;
  };
  return {
    ...(record as unknown as AttributionRecord),
    start: time('start'),
    ...(record.end === undefined ? {} : { end: time('end') }),
  };
}

/** The answer as people read it: one paragraph per translation, the most likely first. */
export function describeAttribution(query: AttributionQuery, records: AttributionRecord[]): string {
  const where = `${endpoint(query.address, query.port)} at ${query.at.toISOString()}`;
  if (!records.length) return `No translation held ${where}.`;
  const lines = [`${records.length === 1 ? '1 translation' : `${records.length} translations`} held ${where}:`];
  for (const r of records) {
    const app = r.application;
    lines.push(
      `  ${r.protocol} ${endpoint(r.source, r.sourcePort)} -> ${endpoint(r.destination, r.destinationPort)} via ${r.uplink ?? 'an unknown uplink'}`,
      `    from ${r.start.toISOString()} to ${r.end?.toISOString() ?? 'now (open)'}`,
      `    pod ${r.pod ? `${r.pod.namespace}/${r.pod.name}` : 'unknown'}${r.container ? `, container ${r.container}` : ''}` +
        (app ? `, application ${app.processName} (${app.executable}, uid ${app.uid})` : ', application unknown'),
      `    ${r.verdict} by ${r.policy ? `${r.policy}#${r.rule}` : 'the default action'}` +
        (r.counters
          ? `; sent ${r.counters.packetsSent} packets, ${r.counters.bytesSent} bytes; received ${r.counters.packetsReceived} packets, ${r.counters.bytesReceived} bytes`
          : ''),
    );
  }
  return lines.join('\n');
}

/** address:port, [address]:port for IPv6, or the address alone when there is no port. */
export const endpoint = (address: string, port: number | undefined): string =>
  port === undefined ? address : address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
