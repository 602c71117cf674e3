// The NAA server: one bidirectional stream per pod's driver (see proto/naat/naa/v1/naa.proto for
// the contract). A stream that breaks the rules is closed with a status that says why; each
// stream's state is its own, so a bad stream never touches another.
import { Server, ServerCredentials, status, type ServerDuplexStream, type ServiceError } from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { isIPv4 } from 'node:net';
import {
  Action,
  AssociationMode,
  AssociationServiceService,
  Protocol,
  type AssociateRequest,
  type AssociateResponse,
  type Application,
  type Association,
  type FlowKey,
  type Hello,
  type EffectivePolicy,
  type Limits,
  type TraceContext,
  type Verdict,
} from '../../proto/index.ts';
import { addressToBytes, bytesToAddress } from '../../common/index.ts';
import { AuthenticationError, type Authenticator, type PodIdentity } from './auth.ts';
import type { FlowVerdict } from '../verdict.ts';
import { AssociationTable, type AssociationChanges, type AssociationEntry } from './table.ts';

/** Where accepted associations go: the kernel state that classifies flows, applied in batches. */
export interface AssociationSink {
  /**
   * Applies the changes; resolves with what the gateway now decides for new flows of each
   * upserted entry, in order (undefined where it cannot say), which is sent to its driver.
   */
  apply(changes: AssociationChanges): Promise<ReadonlyArray<FlowVerdict | undefined> | void>;
  /** The rules that apply to a pod; sent after the HelloAck and again by `pushPolicies`. */
  policy?(identity: PodIdentity): EffectivePolicy | undefined;
  /** Strict mode: packets of the pod's addresses stamped `stamp` are `application`'s; resolves once applied. */
  stamp?(addresses: readonly string[], stamp: number, application: Application): Promise<void>;
  /** Whether the gateway classifies the pod's flows by their stamps (strict mode). */
  strict?(identity: PodIdentity): boolean;
}

export interface NaaServerOptions {
  authenticator: Authenticator;
  sink: AssociationSink;
  limits?: Partial<Limits>;
  /** How long a new stream may take to send its Hello. */
  helloTimeoutMs?: number;
  log?: (message: string, fields: Record<string, unknown>) => void;
  /**
   * Streams closed for the same reason (status code) are logged once per this period, the next
   * line counting those left out: a flood of bad streams costs a line, not a line each. 60 s.
   */
  refusalLogPeriodMs?: number;
  /** Continues the sidecars' traces (telemetry on); without it, associations' trace contexts are ignored. */
  tracing?: AssociationTracing;
}

/** The gateway's spans of applied associations (tracing.ts). */
export interface AssociationTracing {
  /** The carried context, checked, as the gateway keeps it; undefined when invalid. Never throws. */
  context(trace: TraceContext | undefined): TraceContext | undefined;
  /** An association that carried a context is in the kernel since `appliedAt`. */
  applied(entry: AssociationEntry, decision: FlowVerdict | undefined, appliedAt: Date): void;
}

export const defaultLimits: Limits = { maxMessageBytes: 1 << 20, maxAssociations: 10_000, maxMessagesPerSecond: 1_000 };

const maxTextLength = 4096;
/**
 * Messages of one stream read but not yet handled (a Hello waits for its TokenReview, a batch for
 * the kernel). Past this the stream is no longer read, so HTTP/2 flow control holds the driver back
 * and a stream's memory stays bounded however fast it sends.
 */
const maxPendingMessages = 64;
type Call = ServerDuplexStream<AssociateRequest, AssociateResponse>;

class StreamError extends Error {
  readonly code: status;
  constructor(code: status, message: string) {
    super(message);
    this.code = code;
  }
}

export class NaaServer {
  readonly table = new AssociationTable();
  readonly #options: NaaServerOptions;
  readonly #limits: Limits;
  readonly #server: Server;
  /** The live stream of each pod (by uid); a newer stream of the same pod replaces the older. */
  readonly #sessions = new Map<string, { call: Call; identity: PodIdentity }>();
  /** Applies to the sink in order, so that a later change never overtakes an earlier one. */
  #applying: Promise<void> = Promise.resolve();
  readonly #logRefusal: (code: status, fields: Record<string, unknown>) => void;

  constructor(options: NaaServerOptions) {
    this.#options = options;
    this.#limits = { ...defaultLimits, ...options.limits };
    this.#logRefusal = refusalLog(options.log ?? (() => {}), options.refusalLogPeriodMs ?? 60_000);
    this.#server = new Server({
      'grpc.max_receive_message_length': this.#limits.maxMessageBytes,
      'grpc.keepalive_time_ms': 20_000,
      'grpc.keepalive_permit_without_calls': 1,
    });
    this.#server.addService(AssociationServiceService, { associate: (call: Call) => this.#serve(call) });
  }

  /** Listens on `address` (host:port, port 0 for any); resolves with the port. */
  listen(address: string): Promise<number> {
    return new Promise((resolve, reject) =>
      this.#server.bindAsync(address, ServerCredentials.createInsecure(), (error, port) =>
        error ? reject(error) : resolve(port),
      ),
    );
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.#server.tryShutdown(() => resolve()));
  }

  /** Sends every connected driver the rules that apply to its pod now (after a config change). */
  pushPolicies(): void {
    for (const { call, identity } of this.#sessions.values()) this.#sendPolicy(call, identity);
  }

  #sendPolicy(call: Call, identity: PodIdentity): void {
    const policy = this.#options.sink.policy?.(identity);
    if (policy) call.write({ body: { $case: 'policy', value: policy } });
  }

  /** Number of pods with a live stream. */
  get sessions(): number {
    return this.#sessions.size;
  }

  #serve(call: Call): void {
    let identity: PodIdentity | undefined;
    let sequence = 0;
    let closed = false;
    const bucket = tokenBucket(this.#limits.maxMessagesPerSecond);
    const snapshot = { generation: -1, entries: [] as AssociationEntry[] };
    const helloTimer = setTimeout(
      () => fail(new StreamError(status.DEADLINE_EXCEEDED, 'no hello within the time allowed')),
      this.#options.helloTimeoutMs ?? 10_000,
    );
    const fail = (error: unknown) => {
      if (closed) return;
      closed = true;
      clearTimeout(helloTimer);
      const code = error instanceof StreamError ? error.code : status.INTERNAL;
      const details = error instanceof Error ? error.message : String(error);
      this.#logRefusal(code, { pod: identity && `${identity.pod.namespace}/${identity.pod.name}`, code, details });
      call.emit('error', { code, details } as ServiceError);
    };
    const done = () => {
      closed = true;
      clearTimeout(helloTimer);
      if (identity && this.#sessions.get(identity.pod.uid)?.call === call) this.#sessions.delete(identity.pod.uid);
    };
    call.on('cancelled', done);
    call.on('close', done);
    call.on('end', () => {
      done();
      call.end();
    });

    // Messages are handled one at a time, in order: a Hello's authentication finishes before
    // the snapshot behind it is looked at.
    let queue = Promise.resolve();
    let pending = 0;
    call.on('data', (message: AssociateRequest) => {
      if (closed) return;
      // Counted as they arrive, not as they are handled, so that a flood is cut off also while
      // an earlier message waits (for the apiserver or the kernel).
      if (!bucket.take()) {
        fail(
          new StreamError(
            status.RESOURCE_EXHAUSTED,
            `more than ${this.#limits.maxMessagesPerSecond} messages per second`,
          ),
        );
        return;
      }
      if (++pending >= maxPendingMessages) call.pause();
      queue = queue
        .then(async () => {
          if (closed) return;
          if (message.sequence !== sequence + 1) {
            throw new StreamError(
              status.INVALID_ARGUMENT,
              `message sequence ${message.sequence} does not follow ${sequence}`,
            );
          }
          sequence = message.sequence;
          const body = message.body;
          if (!body) throw new StreamError(status.INVALID_ARGUMENT, `message ${sequence} has no body`);
          if (!identity) {
            if (body.$case !== 'hello') {
              throw new StreamError(status.INVALID_ARGUMENT, `the first message must be a hello, not ${body.$case}`);
            }
            identity = await this.#hello(body.value, call);
            clearTimeout(helloTimer);
            return;
          }
          const pod = identity;
          let changes: AssociationChanges;
          switch (body.$case) {
            case 'hello':
              throw new StreamError(status.INVALID_ARGUMENT, 'a stream says hello only once');
            case 'associate': {
              const entry = this.#entry(pod, body.value);
              if (!this.table.has(entry) && this.table.countFor(pod.pod) >= this.#limits.maxAssociations) {
                throw new StreamError(
                  status.RESOURCE_EXHAUSTED,
                  `pod holds the most associations allowed (${this.#limits.maxAssociations})`,
                );
              }
              changes = this.table.upsert(entry);
              break;
            }
            case 'dissociate': {
              const key = this.#flow(pod, body.value.flow);
              changes = this.table.remove({ pod: pod.pod, ...key });
              break;
            }
            case 'snapshot': {
              const value = body.value;
              if (value.generation !== snapshot.generation) {
                snapshot.generation = value.generation;
                snapshot.entries = [];
              }
              for (const association of value.associations) snapshot.entries.push(this.#entry(pod, association));
              if (snapshot.entries.length > this.#limits.maxAssociations) {
                throw new StreamError(
                  status.RESOURCE_EXHAUSTED,
                  `snapshot holds more than the ${this.#limits.maxAssociations} associations allowed`,
                );
              }
              if (!value.last) return;
              changes = this.table.replacePod(pod.pod, snapshot.entries);
              snapshot.entries = [];
              break;
            }
            case 'stamp': {
              const { stamp, application } = body.value;
              if (!Number.isInteger(stamp) || stamp < 1 || stamp > 63) {
                throw new StreamError(status.INVALID_ARGUMENT, `stamp ${stamp} is not within 1-63 (six DSCP bits)`);
              }
              const applied = sequence;
              // The stamp applies to the pod's own addresses only, whatever the driver might claim.
              await this.#applying.then(() =>
                this.#options.sink.stamp?.(pod.addresses, stamp, this.#application(application)),
              );
              if (!closed) call.write({ body: { $case: 'ack', value: { sequence: applied } } });
              return;
            }
          }
          const applied = sequence;
          const decisions = await this.#apply(changes);
          const appliedAt = new Date();
          if (closed) return;
          call.write({ body: { $case: 'ack', value: { sequence: applied } } });
          for (const [i, entry] of changes.upsert.entries()) {
            const verdict = decisions?.[i];
            if (verdict) call.write({ body: { $case: 'verdict', value: verdictMessage(entry, verdict) } });
            if (entry.trace) this.#options.tracing?.applied(entry, verdict, appliedAt);
          }
        })
        .catch(fail)
        .finally(() => {
          if (--pending < maxPendingMessages && call.isPaused() && !closed) call.resume();
        });
    });
  }

  async #hello(hello: Hello, call: Call): Promise<PodIdentity> {
    if (hello.protocolVersion !== 1) {
      throw new StreamError(
        status.INVALID_ARGUMENT,
        `protocol version ${hello.protocolVersion} is not spoken here (1 is)`,
      );
    }
    if (!hello.pod?.uid || !hello.pod.name || !hello.pod.namespace) {
      throw new StreamError(status.INVALID_ARGUMENT, 'the hello must name the pod: namespace, name and uid');
    }
    if (!hello.token) throw new StreamError(status.UNAUTHENTICATED, 'the hello carries no token');
    let identity: PodIdentity;
    try {
      identity = await this.#options.authenticator.authenticate(hello.token, hello.pod);
    } catch (error) {
      if (error instanceof AuthenticationError) {
        throw new StreamError(
          error.kind === 'denied' ? status.PERMISSION_DENIED : status.UNAUTHENTICATED,
          error.message,
        );
      }
      throw new StreamError(status.UNAVAILABLE, `could not check the token: ${(error as Error).message}`);
    }
    const previous = this.#sessions.get(identity.pod.uid)?.call;
    this.#sessions.set(identity.pod.uid, { call, identity });
    previous?.emit('error', {
      code: status.ABORTED,
      details: 'a newer stream of the same pod replaced this one',
    } as ServiceError);
    this.#options.log?.('Accepted NAA stream', { pod: `${identity.pod.namespace}/${identity.pod.name}` });
    call.write({
      body: {
        $case: 'helloAck',
        value: {
          sessionId: randomUUID(),
          limits: this.#limits,
          mode: this.#options.sink.strict?.(identity)
            ? AssociationMode.ASSOCIATION_MODE_STRICT
            : AssociationMode.ASSOCIATION_MODE_OBSERVE,
        },
      },
    });
    this.#sendPolicy(call, identity);
    return identity;
  }

  #apply(changes: AssociationChanges): Promise<ReadonlyArray<FlowVerdict | undefined> | void> {
    const run = this.#applying.then(() => this.#options.sink.apply(changes));
    this.#applying = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /** Checks what a driver says of an application. */
  #application(application: Application | undefined): Application {
    if (!application)
      throw new StreamError(status.INVALID_ARGUMENT, 'an association or stamp must name its application');
    const texts = [application.processName, application.executable, application.containerName, application.containerId];
    if (texts.some((t) => t.length > maxTextLength) || application.commandLine.join(' ').length > maxTextLength) {
      throw new StreamError(status.INVALID_ARGUMENT, `application fields are limited to ${maxTextLength} characters`);
    }
    return application;
  }

  #entry(identity: PodIdentity, association: Association): AssociationEntry {
    const application = this.#application(association.application);
    return {
      pod: identity.pod,
      ...this.#flow(identity, association.flow),
      application,
      observedAt: association.observedAt ?? new Date(),
      receivedAt: new Date(),
      ...this.#trace(association.trace),
    };
  }

  /** The association's trace context when tracing is on and it is valid; nothing otherwise. */
  #trace(carried: TraceContext | undefined): { trace?: TraceContext } {
    const trace = carried && this.#options.tracing?.context(carried);
    return trace ? { trace } : {};
  }

  /** Checks a flow key and resolves an empty source to the pod's address of the destination's family. */
  #flow(identity: PodIdentity, flow: FlowKey | undefined) {
    if (!flow) throw new StreamError(status.INVALID_ARGUMENT, 'an association must carry its flow');
    const transport =
      flow.protocol === Protocol.PROTOCOL_TCP ? 'tcp' : flow.protocol === Protocol.PROTOCOL_UDP ? 'udp' : undefined;
    if (!transport) throw new StreamError(status.INVALID_ARGUMENT, `flow protocol ${flow.protocol} is not TCP or UDP`);
    if (flow.sourcePort < 1 || flow.sourcePort > 65535 || flow.destinationPort > 65535) {
      throw new StreamError(status.INVALID_ARGUMENT, 'flow ports must be within 1-65535');
    }
    let sourceAddress: string;
    let destinationAddress: string;
    try {
      sourceAddress = bytesToAddress(flow.sourceAddress);
      destinationAddress = bytesToAddress(flow.destinationAddress);
    } catch (error) {
      throw new StreamError(status.INVALID_ARGUMENT, `flow address: ${(error as Error).message}`);
    }
    if (sourceAddress === '') {
      const v4 = destinationAddress === '' || isIPv4(destinationAddress);
      sourceAddress = identity.addresses.find((a) => isIPv4(a) === v4) ?? '';
    }
    if (!identity.addresses.includes(sourceAddress)) {
      throw new StreamError(
        status.PERMISSION_DENIED,
        `source address ${sourceAddress || '(none)'} is not an address of pod ${identity.pod.namespace}/${identity.pod.name}`,
      );
    }
    return {
      transport: transport as 'tcp' | 'udp',
      sourceAddress,
      sourcePort: flow.sourcePort,
      destinationAddress,
      destinationPort: flow.destinationPort,
    };
  }
}

/**
 * Logs 'Closed NAA stream' for the first stream closed with each status code in a period and
 * only counts the others; the next line of that code says how many were left out.
 */
function refusalLog(
  log: (message: string, fields: Record<string, unknown>) => void,
  periodMs: number,
): (code: status, fields: Record<string, unknown>) => void {
  const byCode = new Map<status, { until: number; suppressed: number }>();
  return (code, fields) => {
    const now = performance.now();
    const last = byCode.get(code);
    if (last && now < last.until) {
      last.suppressed++;
      return;
    }
    byCode.set(code, { until: now + periodMs, suppressed: 0 });
    log('Closed NAA stream', { ...fields, ...(last?.suppressed ? { suppressed: last.suppressed } : {}) });
  };
}

/** Allows `perSecond` messages a second on average, with bursts of up to two seconds' worth. */
function tokenBucket(perSecond: number) {
  let tokens = perSecond * 2;
  let last = performance.now();
  return {
    take(): boolean {
      const now = performance.now();
      tokens = Math.min(perSecond * 2, tokens + ((now - last) / 1000) * perSecond);
      last = now;
      if (tokens < 1) return false;
      tokens -= 1;
      return true;
    },
  };
}

function verdictMessage(entry: AssociationEntry, verdict: FlowVerdict): Verdict {
  return {
    flow: {
      protocol: entry.transport === 'tcp' ? Protocol.PROTOCOL_TCP : Protocol.PROTOCOL_UDP,
      sourceAddress: addressToBytes(entry.sourceAddress),
      sourcePort: entry.sourcePort,
      destinationAddress: addressToBytes(entry.destinationAddress),
      destinationPort: entry.destinationPort,
    },
    action: verdict.allowed ? Action.ACTION_ALLOW : Action.ACTION_DENY,
    uplink: verdict.uplink ?? '',
    rule: verdict.rule ?? '',
    applicationClass: 0,
  };
}
