// The NAA server: one bidirectional stream per pod's driver (see proto/naat/naa/v1/naa.proto for
// the contract). Each stream is a state machine of its own (stream.ts: the protocol's rules and
// limits); this is its shell, which performs what the machine decides: gRPC, TokenReview, the
// table and the kernel. A stream that breaks the rules is closed with a status that says why, and
// a bad stream never touches another.
//
// With credentials over TLS (dataplane/link-tls.ts) each stream's peer is known by its address and,
// for a node agent's relay, by the node its client certificate names; a stream the agent's own
// driver opened in its process (`openLocal`) is known to come from the node itself. The
// authenticator decides.
import {
  Server,
  ServerCredentials,
  status,
  type ServerDuplexStream,
  type ServiceDefinition,
  type ServiceError,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { formatListenAddress, parseListenAddress } from '../../common/index.ts';
import type { AssociateStream } from '../../contracts/naa/index.ts';
import {
  AssociationServiceService,
  AssociateRequest,
  type AssociateResponse,
  type Application,
  type EffectivePolicy,
  type Limits,
  type TraceContext,
} from '../../proto/index.ts';
import { agentNode } from '../link-tls.ts';
import { peerAddress, type Authenticator, type PodIdentity, type StreamPeer } from './auth.ts';
import { LocalCall, type ServerCall } from './local-call.ts';
import type { FlowVerdict } from '../verdict.ts';
import { openStream, stepStream, type StreamEffect, type StreamInput, type StreamRules } from './stream.ts';
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
  /** TLS (link-tls.ts `naaServerCredentials`); plaintext when omitted. */
  credentials?: ServerCredentials;
}

/** The gateway's spans of applied associations (tracing.ts). */
export interface AssociationTracing {
  /** The carried context, checked, as the gateway keeps it; undefined when invalid. Never throws. */
  context(trace: TraceContext | undefined): TraceContext | undefined;
  /** An association that carried a context is in the kernel since `appliedAt`. */
  applied(entry: AssociationEntry, decision: FlowVerdict | undefined, appliedAt: Date): void;
}

export const defaultLimits: Limits = { maxMessageBytes: 1 << 20, maxAssociations: 10_000, maxMessagesPerSecond: 1_000 };

/** A driver's stream: a gRPC call from the network, or one of the agent's own (local-call.ts). */
type Call = ServerCall<AssociateRequest>;

export class NaaServer {
  readonly table = new AssociationTable();
  readonly #options: NaaServerOptions;
  readonly #rules: StreamRules;
  readonly #server: Server;
  /** The live stream of each pod (by uid); a newer stream of the same pod replaces the older. */
  readonly #sessions = new Map<string, { call: Call; identity: PodIdentity }>();
  /** Applies to the sink in order, so that a later change never overtakes an earlier one. */
  #applying: Promise<void> = Promise.resolve();
  readonly #logRefusal: (code: status, fields: Record<string, unknown>) => void;

  constructor(options: NaaServerOptions) {
    this.#options = options;
    const limits = { ...defaultLimits, ...options.limits };
    const tracing = options.tracing;
    this.#rules = { limits, ...(tracing && { trace: (carried: TraceContext) => tracing.context(carried) }) };
    this.#logRefusal = refusalLog(options.log ?? (() => {}), options.refusalLogPeriodMs ?? 60_000);
    this.#server = naaGrpcServer(this.#rules.limits.maxMessageBytes, AssociationServiceService, {
      associate: (call: ServerDuplexStream<AssociateRequest, AssociateResponse>) =>
        this.#serve(call, () => ({
          address: peerAddress(call.getPeer()),
          agentNode: agentNode(call.getAuthContext()),
        })),
    });
  }

  /** Listens on `address` (see `listen`); resolves with the port. */
  listen(address: string): Promise<number> {
    return listen(this.#server, address, this.#options.credentials);
  }

  /**
   * A stream of the agent's own driver of a pod of its node (node-driver.ts), handed over in the
   * process: there the gateway agent speaks for its node-driven pods (auth.ts). Nothing outside the
   * agent's process can open one.
   */
  openLocal(): AssociateStream {
    const call = new LocalCall((bytes) => AssociateRequest.decode(bytes));
    this.#serve(call.server, () => ({ local: true }));
    return call.driver;
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

  /**
   * Runs one stream, coming from `peer`: its events become inputs of its state machine (stream.ts),
   * whose effects are performed here. Inputs are taken one at a time: an input that arrives while the effects of the
   * last are performed (a resumed stream reads at once) waits for them.
   */
  #serve(call: Call, peer: () => StreamPeer): void {
    let state = openStream(this.#rules, performance.now());
    const inputs: StreamInput[] = [];
    let stepping = false;
    const take = (input: StreamInput) => {
      inputs.push(input);
      if (stepping) return;
      stepping = true;
      try {
        for (let next = inputs.shift(); next; next = inputs.shift()) {
          const step = stepStream(this.#rules, state, next, {
            table: this.table,
            now: new Date(),
            clockMs: performance.now(),
          });
          state = step.state;
          if (state.phase !== 'hello') clearTimeout(helloTimer);
          for (const effect of step.effects) {
            try {
              this.#perform(effect, call, take, peer);
            } catch (error) {
              inputs.unshift({ type: 'failed', error });
              break;
            }
          }
        }
      } finally {
        stepping = false;
      }
    };
    const helloTimer = setTimeout(() => take({ type: 'helloTimeout' }), this.#options.helloTimeoutMs ?? 10_000);
    call.on('data', (message: AssociateRequest) => take({ type: 'message', message }));
    call.on('end', () => take({ type: 'end' }));
    call.on('cancelled', () => take({ type: 'gone' }));
    call.on('close', () => take({ type: 'gone' }));
  }

  #perform(effect: StreamEffect, call: Call, take: (input: StreamInput) => void, from: () => StreamPeer): void {
    const { sink, tracing, authenticator } = this.#options;
    switch (effect.type) {
      case 'send':
        call.write(effect.response);
        return;
      case 'authenticate': {
        const peer = from();
        void (
          'token' in effect
            ? authenticator.authenticate(effect.token, effect.pod, peer)
            : authenticator.authenticateNodeDriven(effect.pod, peer)
        )
          .then(
            (identity): StreamInput => ({
              type: 'authenticated',
              identity,
              sessionId: randomUUID(),
              strict: sink.strict?.(identity) ?? false,
            }),
            (error): StreamInput => ({ type: 'authenticationFailed', error }),
          )
          .then(take, (error) => take({ type: 'failed', error }));
        return;
      }
      case 'accept': {
        const { identity } = effect;
        const previous = this.#sessions.get(identity.pod.uid)?.call;
        this.#sessions.set(identity.pod.uid, { call, identity });
        previous?.emit('error', {
          code: status.ABORTED,
          details: 'a newer stream of the same pod replaced this one',
        } as ServiceError);
        this.#options.log?.('Accepted NAA stream', { pod: `${identity.pod.namespace}/${identity.pod.name}` });
        return;
      }
      case 'sendPolicy':
        this.#sendPolicy(call, effect.identity);
        return;
      case 'change': {
        const changes = this.table.change(effect.change);
        this.#afterEarlier(() => sink.apply(changes), true).then(
          (decisions) => take({ type: 'applied', upserted: changes.upsert, decisions, at: new Date() }),
          (error) => take({ type: 'failed', error }),
        );
        return;
      }
      case 'stamp':
        this.#afterEarlier(() => sink.stamp?.(effect.addresses, effect.stamp, effect.application), false).then(
          () => take({ type: 'applied', upserted: [], decisions: undefined, at: new Date() }),
          (error) => take({ type: 'failed', error }),
        );
        return;
      case 'traced':
        tracing?.applied(effect.entry, effect.verdict, effect.appliedAt);
        return;
      case 'pause':
        call.pause();
        return;
      case 'resume':
        call.resume();
        return;
      case 'refuse': {
        const { code, details, pod } = effect;
        this.#logRefusal(code, { pod: pod && `${pod.namespace}/${pod.name}`, code, details });
        call.emit('error', { code, details } as ServiceError);
        return;
      }
      case 'end':
        call.end();
        return;
      case 'release':
        if (this.#sessions.get(effect.identity.pod.uid)?.call === call) this.#sessions.delete(effect.identity.pod.uid);
        return;
    }
  }

  /**
   * Runs `work` once every change applied before has settled, so that a later change never
   * overtakes an earlier one; `ordered`: later work waits for this one too (a stamp need not).
   */
  #afterEarlier<T>(work: () => T | Promise<T>, ordered: boolean): Promise<T> {
    const run = this.#applying.then(work);
    if (ordered) {
      this.#applying = run.then(
        () => {},
        () => {},
      );
    }
    return run;
  }
}

/**
 * Logs 'Closed NAA stream' for the first stream closed with each status code in a period and
 * only counts the others; the next line of that code says how many were left out.
 */
export function refusalLog(
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

/** A gRPC server of `service` with what every NAA listener holds to. */
export function naaGrpcServer(
  maxMessageBytes: number,
  service: ServiceDefinition,
  implementation: UntypedServiceImplementation,
): Server {
  const server = new Server({
    'grpc.max_receive_message_length': maxMessageBytes,
    'grpc.keepalive_time_ms': 20_000,
    'grpc.keepalive_permit_without_calls': 1,
  });
  server.addService(service, implementation);
  return server;
}

/**
 * Binds `server` at `address` with `credentials` (plaintext when omitted): `HOST:PORT`,
 * `[IPV6]:PORT` or `:PORT` for every address of both families (port 0 for any), or a Unix socket
 * `unix:PATH`; resolves with the port. `:PORT` is `[::]`, which Node binds dual-stack, or
 * `0.0.0.0` on a host without IPv6, as Node's own listen does.
 */
export async function listen(
  server: Server,
  address: string,
  credentials: ServerCredentials = ServerCredentials.createInsecure(),
): Promise<number> {
  const bind = (target: string) =>
    new Promise<number>((resolve, reject) =>
      server.bindAsync(target, credentials, (error, bound) => (error ? reject(error) : resolve(bound))),
    );
  if (address.startsWith('unix:')) return bind(address);
  const { host, port } = parseListenAddress(address);
  if (host !== undefined) return bind(formatListenAddress({ host, port }));
  try {
    return await bind(formatListenAddress({ port }));
  } catch (error) {
    if (!/EAFNOSUPPORT|EADDRNOTAVAIL/.test((error as Error).message)) throw error;
    return bind(`0.0.0.0:${port}`);
  }
}
