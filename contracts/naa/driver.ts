// The driver's connection to the NAA server on its node. It keeps the gateway's picture of the
// pod equal to the scanner's: on every (re)connect a Hello and a full snapshot, then changes as
// they happen. It never gives up: a lost stream is retried with capped, jittered backoff.
// With a tracer (telemetry on), each association is traced from when its socket was seen to the
// gateway's acknowledgement, and carries its span's context so that the gateway's spans join it.
import { credentials, type ChannelCredentials } from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import {
  AssociationMode,
  AssociationServiceClient,
  Protocol,
  type Application,
  type AssociateRequest,
  type AssociateResponse,
  type FlowKey,
  type Limits,
  type PodRef,
  type EffectivePolicy,
  type TraceContext,
  type Verdict,
} from '../../proto/index.ts';
import { addressToBytes } from '../../common/index.ts';
import { diffAssociations, flowKey as associationKey, type Association, type Flow } from './associations.ts';

/** Starts the span of an association as it is first sent (tracing.ts); undefined leaves it untraced. */
export interface AssociationTracer {
  start(association: Association): AssociationSpan | undefined;
}

export interface AssociationSpan {
  /** The W3C context the association carries. */
  trace: TraceContext;
  /** Ends the span: acknowledged, or not (`error` says why). */
  end(error?: string): void;
}

/**
 * The most spans waiting for the gateway's acknowledgement. Associations sent beyond it go
 * without a trace: a burst of thousands of sockets would hold as many spans, which the SDK's
 * batch processor (2,048 by default) would mostly drop anyway.
 */
const maxPendingSpans = 1_024;

/**
 * The driver's end of one Associate stream, as it uses it: a grpc-js client call, or a stream
 * handed over within an agent's process (the node agent's relay, the gateway agent's NAA server:
 * dataplane/naa/local-call.ts). 'error' carries the status the other end closed it with; 'end'
 * comes when it ended the stream well.
 */
export interface AssociateStream {
  write(request: AssociateRequest): boolean;
  /** Ends the driver's side; the other end finishes its own. */
  end(): void;
  cancel(): void;
  on(event: 'data', listener: (response: AssociateResponse) => void): this;
  on(event: 'error', listener: (error: Error) => void): this;
  on(event: 'end', listener: () => void): this;
}

export interface DriverOptions {
  /**
   * host:port (or unix:path) of the NAA server, or what opens a stream within this process (an
   * agent's own drivers of its node's pods): then there is no gRPC client, and `channelCredentials`
   * is unused.
   */
  target: string | (() => AssociateStream);
  pod: PodRef;
  /**
   * The projected service-account token; read anew on every connect, as the kubelet rotates it.
   * Without it the Hello is node-driven (the node agent drives the pod, docs/naa.md): it carries
   * no token, and the gateways judge the stream by the node agent it comes from.
   */
  tokenFile?: string;
  version: string;
  mode?: AssociationMode;
  channelCredentials?: ChannelCredentials;
  backoff?: { initialMs: number; maxMs: number };
  /** Associations in one snapshot message. */
  snapshotChunk?: number;
  onVerdict?: (verdict: Verdict) => void;
  /** The rules the gateway applies to this pod, on connect and whenever they change. */
  onPolicy?: (policy: EffectivePolicy) => void;
  onState?: (state: DriverState) => void;
  /** Traces associations (telemetry on); without it, associations carry no trace context. */
  tracer?: AssociationTracer;
  /** Strict mode: the stamps handed out so far, announced again on every connect before the snapshot. */
  stamps?: () => ReadonlyArray<{ stamp: number; application: Application }>;
}

export type DriverState = 'connecting' | 'connected' | 'disconnected' | 'stopped';

type Body = NonNullable<AssociateRequest['body']>;

/** A stamp waiting for the gateway's Ack; `sequence` is unset until sent on the current stream. */
interface StampWaiter {
  stamp: number;
  application: Application;
  sequence?: number;
  done: () => void;
}

export class Driver {
  readonly #options: DriverOptions;
  /** Opens a stream: a call of the gRPC client, or the target's own. */
  readonly #open: () => AssociateStream;
  readonly #client: InstanceType<typeof AssociationServiceClient> | undefined;
  #stream: AssociateStream | undefined;
  #ready = false;
  #sequence = 0;
  #acked = 0;
  #generation = 0;
  #current = new Map<string, Association>();
  #limits: Limits | undefined;
  #retryMs: number;
  #timer: NodeJS.Timeout | undefined;
  /**
   * The context each association was first sent with, by its key: snapshots on reconnect carry
   * it again instead of starting new spans. Only associations of #current are kept.
   */
  readonly #traces = new Map<string, TraceContext>();
  /** Spans not yet acknowledged, in sequence order. */
  #pending: Array<{ sequence: number; span: AssociationSpan }> = [];
  #stamping: StampWaiter[] = [];
  #stopped = false;
  /** Why the last stream was lost, for logs and status. */
  lastError: Error | undefined;

  constructor(options: DriverOptions) {
    this.#options = options;
    this.#retryMs = options.backoff?.initialMs ?? 100;
    const { target } = options;
    if (typeof target === 'string') {
      const client = new AssociationServiceClient(target, options.channelCredentials ?? credentials.createInsecure(), {
        'grpc.keepalive_time_ms': 10_000,
        'grpc.keepalive_timeout_ms': 5_000,
      });
      this.#client = client;
      this.#open = () => client.associate();
    } else this.#open = target;
  }

  start(): void {
    void this.#connect();
  }

  /** The highest sequence the gateway has acknowledged as applied, and the last one sent. */
  get progress(): { acked: number; sent: number } {
    return { acked: this.#acked, sent: this.#sequence };
  }

  /**
   * Sends what changed between the last picture and `current`, or keeps it for the next
   * snapshot. A burst (a pod opening thousands of sockets at once) goes as a snapshot when that
   * takes fewer messages, which keeps the stream within the server's message rate. The scanner
   * hands back the same map when nothing changed: then there is nothing to compare.
   */
  update(current: Map<string, Association>): void {
    if (current === this.#current) return;
    const changes = diffAssociations(this.#current, current);
    this.#current = current;
    // A new association, or a socket with a new owner, gets a new span when it is next sent.
    for (const association of changes.associate) this.#traces.delete(associationKey(association.flow));
    for (const flow of changes.dissociate) this.#traces.delete(associationKey(flow));
    if (!this.#ready) return;
    if (changes.associate.length + changes.dissociate.length > this.#snapshotMessages()) {
      this.#sendSnapshot();
      return;
    }
    for (const association of changes.associate) {
      this.#send({ $case: 'associate', value: toProto(association, this.#traced(association)) });
    }
    for (const flow of changes.dissociate) {
      this.#send({ $case: 'dissociate', value: { flow: flowKey(flow), observedAt: new Date() } });
    }
  }

  /**
   * Strict mode: tells the gateway that packets stamped `stamp` are `application`'s. Resolves once
   * the gateway acknowledges it; waits for a stream if there is none.
   */
  stamp(stamp: number, application: Application): Promise<void> {
    return new Promise((done) => {
      const waiter: StampWaiter = { stamp, application, done };
      this.#stamping.push(waiter);
      if (this.#ready) this.#sendStamp(waiter);
    });
  }

  #sendStamp(waiter: StampWaiter): void {
    this.#send({ $case: 'stamp', value: { stamp: waiter.stamp, application: waiter.application } });
    waiter.sequence = this.#sequence;
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#endSpans(Infinity, 'the sidecar stopped before the gateway acknowledged');
    this.#stream?.end();
    this.#client?.close();
    this.#options.onState?.('stopped');
  }

  async #connect(): Promise<void> {
    if (this.#stopped) return;
    this.#options.onState?.('connecting');
    const { tokenFile } = this.#options;
    let token = '';
    try {
      if (tokenFile) token = (await readFile(tokenFile, 'utf8')).trim();
    } catch (error) {
      this.#retry(error as Error);
      return;
    }
    // stop() may have come while the token was read, and closed the client.
    if (this.#stopped) return;
    let stream: AssociateStream;
    try {
      stream = this.#open();
    } catch (error) {
      this.#retry(error as Error);
      return;
    }
    this.#stream = stream;
    this.#sequence = 0;
    this.#acked = 0;
    stream.on('data', (message: AssociateResponse) => this.#receive(message));
    stream.on('error', (error) => this.#lost(stream, error));
    stream.on('end', () => this.#lost(stream, new Error('the server ended the stream')));
    this.#send({
      $case: 'hello',
      value: {
        protocolVersion: 1,
        pod: this.#options.pod,
        token,
        driverVersion: this.#options.version,
        mode: this.#options.mode ?? AssociationMode.ASSOCIATION_MODE_OBSERVE,
        nodeDriven: !tokenFile,
      },
    });
  }

  #receive(message: AssociateResponse): void {
    const body = message.body;
    if (!body) return;
    switch (body.$case) {
      case 'helloAck':
        this.#limits = body.value.limits;
        this.#ready = true;
        this.#retryMs = this.#options.backoff?.initialMs ?? 100;
        this.#options.onState?.('connected');
        // Stamps first: the snapshot's flows may already carry them.
        for (const { stamp, application } of this.#options.stamps?.() ?? []) {
          this.#send({ $case: 'stamp', value: { stamp, application } });
        }
        for (const waiter of this.#stamping) this.#sendStamp(waiter);
        this.#sendSnapshot();
        break;
      case 'ack':
        this.#acked = Math.max(this.#acked, body.value.sequence);
        this.#endSpans(this.#acked);
        this.#stamping = this.#stamping.filter((w) => {
          if (w.sequence === undefined || w.sequence > this.#acked) return true;
          w.done();
          return false;
        });
        break;
      case 'verdict':
        this.#options.onVerdict?.(body.value);
        break;
      case 'policy':
        this.#options.onPolicy?.(body.value);
        break;
    }
  }

  #snapshotChunk(): number {
    return Math.max(1, Math.min(this.#options.snapshotChunk ?? 500, this.#limits?.maxAssociations || Infinity));
  }

  #snapshotMessages(): number {
    return Math.max(1, Math.ceil(this.#current.size / this.#snapshotChunk()));
  }

  #sendSnapshot(): void {
    const all = [...this.#current.values()];
    const chunk = this.#snapshotChunk();
    const generation = ++this.#generation;
    for (let i = 0; i === 0 || i < all.length; i += chunk) {
      const associations = all.slice(i, i + chunk).map((a) => toProto(a, this.#traced(a)));
      this.#send({ $case: 'snapshot', value: { generation, associations, last: i + chunk >= all.length } });
    }
  }

  /**
   * The context an association goes with in the next message: the one it was first sent with, or
   * that of a new span, which ends when the gateway acknowledges that message. None without a
   * tracer, or while too many spans wait.
   */
  #traced(association: Association): TraceContext | undefined {
    if (!this.#options.tracer) return undefined;
    const key = associationKey(association.flow);
    const known = this.#traces.get(key);
    if (known || this.#pending.length >= maxPendingSpans) return known;
    const span = this.#options.tracer.start(association);
    if (!span) return undefined;
    this.#pending.push({ sequence: this.#sequence + 1, span });
    this.#traces.set(key, span.trace);
    return span.trace;
  }

  /** Ends the spans of messages up to `sequence`. */
  #endSpans(sequence: number, error?: string): void {
    let done = 0;
    while (done < this.#pending.length && this.#pending[done]!.sequence <= sequence) {
      this.#pending[done++]!.span.end(error);
    }
    if (done) this.#pending = this.#pending.slice(done);
  }

  #send(body: Body): void {
    this.#stream?.write({ sequence: ++this.#sequence, body });
  }

  #lost(stream: AssociateStream, error: Error): void {
    if (stream !== this.#stream) return;
    this.#stream = undefined;
    this.#ready = false;
    stream.cancel();
    // The next stream's snapshot carries these associations again, with the same contexts, and
    // the stamps still waiting are sent again.
    this.#endSpans(Infinity, 'the stream was lost before the gateway acknowledged');
    for (const waiter of this.#stamping) delete waiter.sequence;
    this.#retry(error);
  }

  #retry(error: Error): void {
    if (this.#stopped) return;
    this.#options.onState?.('disconnected');
    const delay = this.#retryMs * (0.5 + Math.random() / 2);
    this.#retryMs = Math.min(this.#retryMs * 2, this.#options.backoff?.maxMs ?? 10_000);
    this.lastError = error;
    this.#timer = setTimeout(() => void this.#connect(), delay);
  }
}

export function flowKey(flow: Flow): FlowKey {
  return {
    protocol: flow.transport === 'tcp' ? Protocol.PROTOCOL_TCP : Protocol.PROTOCOL_UDP,
    sourceAddress: addressToBytes(flow.sourceAddress),
    sourcePort: flow.sourcePort,
    destinationAddress: addressToBytes(flow.destinationAddress),
    destinationPort: flow.destinationPort,
  };
}

function toProto(association: Association, trace: TraceContext | undefined) {
  return {
    flow: flowKey(association.flow),
    application: association.application,
    observedAt: association.observedAt,
    trace,
  };
}
