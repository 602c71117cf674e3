// One NAA stream as a state machine with no I/O. `stepStream` takes the stream's state and one
// input (a message from the driver, the result of an authentication or of an apply, the hello's
// deadline, the end of the stream) and returns the next state and the effects the server performs,
// in order (server.ts is the shell that does them). The protocol's rules live here: a hello first,
// whose token (or, node-driven, the node agent it comes from) is proved before anything else is
// looked at; associations only for the pod's own addresses and within its limits; one message
// handled at a time, in order; the driver no longer read while too many messages wait; and the
// first broken rule closes the stream with a status that says why. A closed stream takes no input
// but its end.
import { status } from '@grpc/grpc-js';
import { isIPv4 } from 'node:net';
import {
  Action,
  AssociationMode,
  Protocol,
  type AssociateRequest,
  type AssociateResponse,
  type Application,
  type Association,
  type FlowKey,
  type Hello,
  type Limits,
  type PodRef,
  type TraceContext,
  type Verdict,
} from '../../proto/index.ts';
import { addressToBytes, bytesToAddress } from '../../common/index.ts';
import { AuthenticationError, type PodIdentity } from './auth.ts';
import type { FlowVerdict } from '../verdict.ts';
import type { AssociationEntry, AssociationTable, PodFlow, TableChange } from './table.ts';

/**
 * Messages of one stream read but not yet handled (a Hello waits for its TokenReview, a batch for
 * the kernel). Past this the stream is no longer read, so HTTP/2 flow control holds the driver back
 * and a stream's memory stays bounded however fast it sends.
 */
export const maxPendingMessages = 64;
const maxTextLength = 4096;

/** What holds for every stream of a server. */
export interface StreamRules {
  limits: Limits;
  /** The carried trace context as the gateway keeps it, undefined when invalid; without it (telemetry off) contexts are ignored. */
  trace?(carried: TraceContext): TraceContext | undefined;
}

/** What a step reads of the world besides its input. */
export interface StepContext {
  /** The association table as it is now: the machine reads it, the server changes it ('change'). */
  table: Pick<AssociationTable, 'has' | 'countFor'>;
  /** Wall-clock time: when an association is received. */
  now: Date;
  /** Monotonic milliseconds (performance.now()): what the message rate is measured with. */
  clockMs: number;
}

export type StreamInput =
  | { type: 'message'; message: AssociateRequest }
  /** The hello's token proves `identity`; `strict`: the gateway classifies its flows by their stamps. */
  | { type: 'authenticated'; identity: PodIdentity; sessionId: string; strict: boolean }
  /** The token was not checked: an AuthenticationError when it proves nothing or the wrong pod. */
  | { type: 'authenticationFailed'; error: unknown }
  /**
   * The last change or stamp is in the kernel since `at`; for a change, the entries it upserted
   * and what the gateway decides for new flows of each, in order (undefined where it cannot say).
   */
  | {
      type: 'applied';
      upserted: readonly AssociationEntry[];
      decisions: ReadonlyArray<FlowVerdict | undefined> | void;
      at: Date;
    }
  /** An effect failed (the kernel refused a change, the sink threw). */
  | { type: 'failed'; error: unknown }
  /** The time allowed for the hello is up. */
  | { type: 'helloTimeout' }
  /** The driver ended its side of the stream. */
  | { type: 'end' }
  /** The stream is closed or cancelled. */
  | { type: 'gone' };

export type StreamEffect =
  | { type: 'send'; response: AssociateResponse }
  /**
   * Prove the hello's pod by its token, or, for a node-driven hello, by the node agent the stream
   * comes from; the answer comes back as 'authenticated' or 'authenticationFailed'.
   */
  | { type: 'authenticate'; token: string; pod: PodRef }
  | { type: 'authenticate'; nodeDriven: true; pod: PodRef }
  /** This is now the pod's live stream: an older stream of the same pod is closed (ABORTED). */
  | { type: 'accept'; identity: PodIdentity }
  /** Send the rules that apply to the pod, if the gateway has any for it. */
  | { type: 'sendPolicy'; identity: PodIdentity }
  /** Change the table and apply the changes after every earlier one; answer with 'applied' or 'failed'. */
  | { type: 'change'; change: TableChange }
  /** Strict mode: the pod's packets stamped `stamp` are `application`'s, once earlier changes are applied; answer likewise. */
  | { type: 'stamp'; addresses: readonly string[]; stamp: number; application: Application }
  /** An association that carried a trace context is in the kernel since `appliedAt`. */
  | { type: 'traced'; entry: AssociationEntry; verdict: FlowVerdict | undefined; appliedAt: Date }
  /** Stop reading the driver (too many messages pending), or read it again. */
  | { type: 'pause' }
  | { type: 'resume' }
  /** Close the stream with this status; `pod` when the stream had proved one. */
  | { type: 'refuse'; code: status; details: string; pod?: PodRef }
  /** End the server's side too. */
  | { type: 'end' }
  /** The stream no longer speaks for the pod (unless a newer one took its place already). */
  | { type: 'release'; identity: PodIdentity };

export interface StreamState {
  /** 'hello' until the hello's token is proved, then 'open'; 'closed' once refused or ended. */
  readonly phase: 'hello' | 'open' | 'closed';
  /** The pod the stream proved (kept once closed). */
  readonly identity?: PodIdentity;
  /** The sequence number of the last message handled. */
  readonly sequence: number;
  /** Messages read and not yet handled, oldest first. */
  readonly inbox: readonly AssociateRequest[];
  /** What the message being handled waits for; the inbox waits behind it. */
  readonly waiting?: 'authentication' | 'apply';
  /** Whether the driver is no longer read. */
  readonly paused: boolean;
  /** The rate limit (a RateBucket). */
  readonly tokens: number;
  readonly countedAt: number;
  /** The snapshot being received, in parts that carry one generation. */
  readonly snapshot: { readonly generation: number; readonly entries: readonly AssociationEntry[] };
}

export interface StreamStep {
  state: StreamState;
  effects: StreamEffect[];
}

/** A new stream at `clockMs`, its bucket full. */
export function openStream(rules: StreamRules, clockMs: number): StreamState {
  return {
    phase: 'hello',
    sequence: 0,
    inbox: [],
    paused: false,
    ...fullBucket(rules.limits.maxMessagesPerSecond, clockMs),
    snapshot: { generation: -1, entries: [] },
  };
}

/** The message rate limit of a stream: a token bucket, tokens left and when they were last counted (clockMs). */
export interface RateBucket {
  readonly tokens: number;
  readonly countedAt: number;
}

/** A full bucket: bursts of up to two seconds' worth of messages. */
export function fullBucket(perSecond: number, clockMs: number): RateBucket {
  return { tokens: perSecond * 2, countedAt: clockMs };
}

/**
 * The bucket after one message at `clockMs`, refilled at `perSecond` since it was last counted;
 * undefined when no token is left (the stream sends more than `perSecond` on average).
 */
export function takeToken(bucket: RateBucket, perSecond: number, clockMs: number): RateBucket | undefined {
  const tokens = Math.min(perSecond * 2, bucket.tokens + ((clockMs - bucket.countedAt) / 1000) * perSecond);
  return tokens < 1 ? undefined : { tokens: tokens - 1, countedAt: clockMs };
}

/** The next state of the stream after `input`, and what the server does about it. */
export function stepStream(
  rules: StreamRules,
  state: StreamState,
  input: StreamInput,
  context: StepContext,
): StreamStep {
  const step = new Step(rules, state, context);
  step.take(input);
  return { state: step.state, effects: step.effects };
}

/** A rule the driver broke: the stream is closed with `code`. */
class Refusal extends Error {
  readonly code: status;
  constructor(code: status, message: string) {
    super(message);
    this.code = code;
  }
}

type Draft = { -readonly [K in keyof StreamState]: StreamState[K] };

/** One transition: a copy of the state changed in place, and the effects in the order they are made. */
class Step {
  readonly state: Draft;
  readonly effects: StreamEffect[] = [];
  readonly #rules: StreamRules;
  readonly #context: StepContext;

  constructor(rules: StreamRules, state: StreamState, context: StepContext) {
    this.state = { ...state };
    this.#rules = rules;
    this.#context = context;
  }

  take(input: StreamInput): void {
    const s = this.state;
    if (input.type === 'end' || input.type === 'gone') {
      // Whatever was pending is dropped: there is no one to acknowledge it to.
      this.#close();
      if (s.identity) this.effects.push({ type: 'release', identity: s.identity });
      if (input.type === 'end') this.effects.push({ type: 'end' });
      return;
    }
    if (s.phase === 'closed') return;
    try {
      this.#take(input);
      // Handles what waits, in order, until a message waits for something (a refusal throws).
      while (!s.waiting && s.inbox.length) {
        const [message, ...rest] = s.inbox;
        s.inbox = rest;
        this.#handle(message!);
      }
    } catch (error) {
      const code = error instanceof Refusal ? error.code : status.INTERNAL;
      const details = error instanceof Error ? error.message : String(error);
      this.#close();
      this.effects.push({ type: 'refuse', code, details, ...(s.identity && { pod: s.identity.pod }) });
      return;
    }
    const pending = s.inbox.length + (s.waiting ? 1 : 0);
    if (!s.paused && pending >= maxPendingMessages) {
      s.paused = true;
      this.effects.push({ type: 'pause' });
    } else if (s.paused && pending < maxPendingMessages) {
      s.paused = false;
      this.effects.push({ type: 'resume' });
    }
  }

  #close(): void {
    this.state.phase = 'closed';
    this.state.inbox = [];
    this.state.waiting = undefined;
  }

  #take(input: Exclude<StreamInput, { type: 'end' | 'gone' }>): void {
    const s = this.state;
    switch (input.type) {
      case 'message':
        this.#count();
        s.inbox = [...s.inbox, input.message];
        return;
      case 'helloTimeout':
        if (s.phase === 'hello') throw new Refusal(status.DEADLINE_EXCEEDED, 'no hello within the time allowed');
        return;
      case 'authenticated': {
        if (s.waiting !== 'authentication') return;
        const { identity } = input;
        s.waiting = undefined;
        s.phase = 'open';
        s.identity = identity;
        const mode = input.strict ? AssociationMode.ASSOCIATION_MODE_STRICT : AssociationMode.ASSOCIATION_MODE_OBSERVE;
        this.effects.push(
          { type: 'accept', identity },
          {
            type: 'send',
            response: {
              body: { $case: 'helloAck', value: { sessionId: input.sessionId, limits: this.#rules.limits, mode } },
            },
          },
          { type: 'sendPolicy', identity },
        );
        return;
      }
      case 'authenticationFailed': {
        if (s.waiting !== 'authentication') return;
        const { error } = input;
        if (error instanceof AuthenticationError) {
          throw new Refusal(error.kind === 'denied' ? status.PERMISSION_DENIED : status.UNAUTHENTICATED, error.message);
        }
        throw new Refusal(status.UNAVAILABLE, `could not check the token: ${(error as Error).message}`);
      }
      case 'applied':
        if (s.waiting !== 'apply') return;
        s.waiting = undefined;
        this.#send({ $case: 'ack', value: { sequence: s.sequence } });
        for (const [i, entry] of input.upserted.entries()) {
          const verdict = input.decisions?.[i];
          if (verdict) this.#send({ $case: 'verdict', value: verdictMessage(entry, verdict) });
          if (entry.trace) this.effects.push({ type: 'traced', entry, verdict, appliedAt: input.at });
        }
        return;
      case 'failed':
        throw input.error;
    }
  }

  /**
   * Takes a token from the bucket, refilled at maxMessagesPerSecond. Messages are counted as they
   * arrive, not as they are handled, so that a flood is cut off also while an earlier message waits.
   */
  #count(): void {
    const s = this.state;
    const perSecond = this.#rules.limits.maxMessagesPerSecond;
    const bucket = takeToken(s, perSecond, this.#context.clockMs);
    if (!bucket) throw new Refusal(status.RESOURCE_EXHAUSTED, `more than ${perSecond} messages per second`);
    s.tokens = bucket.tokens;
    s.countedAt = bucket.countedAt;
  }

  #send(body: AssociateResponse['body']): void {
    this.effects.push({ type: 'send', response: { body } });
  }

  #handle(message: AssociateRequest): void {
    const s = this.state;
    if (message.sequence !== s.sequence + 1) {
      throw new Refusal(status.INVALID_ARGUMENT, `message sequence ${message.sequence} does not follow ${s.sequence}`);
    }
    s.sequence = message.sequence;
    const body = message.body;
    if (!body) throw new Refusal(status.INVALID_ARGUMENT, `message ${s.sequence} has no body`);
    const pod = s.identity;
    if (!pod) {
      if (body.$case !== 'hello') {
        throw new Refusal(status.INVALID_ARGUMENT, `the first message must be a hello, not ${body.$case}`);
      }
      this.#hello(body.value);
      return;
    }
    const limit = this.#rules.limits.maxAssociations;
    switch (body.$case) {
      case 'hello':
        throw new Refusal(status.INVALID_ARGUMENT, 'a stream says hello only once');
      case 'associate': {
        const entry = this.#entry(pod, body.value);
        const { table } = this.#context;
        if (!table.has(entry) && table.countFor(pod.pod) >= limit) {
          throw new Refusal(status.RESOURCE_EXHAUSTED, `pod holds the most associations allowed (${limit})`);
        }
        this.#change({ op: 'upsert', entry });
        return;
      }
      case 'dissociate':
        this.#change({ op: 'remove', flow: { pod: pod.pod, ...flowOf(pod, body.value.flow) } });
        return;
      case 'snapshot': {
        const { generation, associations, last } = body.value;
        const earlier = generation === s.snapshot.generation ? s.snapshot.entries : [];
        const entries = [...earlier];
        for (const association of associations) entries.push(this.#entry(pod, association));
        if (entries.length > limit) {
          throw new Refusal(status.RESOURCE_EXHAUSTED, `snapshot holds more than the ${limit} associations allowed`);
        }
        s.snapshot = { generation, entries: last ? [] : entries };
        // The pod's whole set, in place of whatever it held, from this stream or an older one.
        if (last) this.#change({ op: 'replacePod', pod: pod.pod, entries });
        return;
      }
      case 'stamp': {
        const { stamp, application } = body.value;
        if (!Number.isInteger(stamp) || stamp < 1 || stamp > 63) {
          throw new Refusal(status.INVALID_ARGUMENT, `stamp ${stamp} is not within 1-63 (six DSCP bits)`);
        }
        // The stamp applies to the pod's own addresses only, whatever the driver might claim.
        this.effects.push({
          type: 'stamp',
          addresses: pod.addresses,
          stamp,
          application: checkedApplication(application),
        });
        s.waiting = 'apply';
        return;
      }
    }
  }

  #hello(hello: Hello): void {
    if (hello.protocolVersion !== 1) {
      throw new Refusal(status.INVALID_ARGUMENT, `protocol version ${hello.protocolVersion} is not spoken here (1 is)`);
    }
    if (!hello.pod?.uid || !hello.pod.name || !hello.pod.namespace) {
      throw new Refusal(status.INVALID_ARGUMENT, 'the hello must name the pod: namespace, name and uid');
    }
    if (hello.nodeDriven) {
      if (hello.token) {
        throw new Refusal(status.INVALID_ARGUMENT, 'a node-driven hello carries no token: its node agent proves it');
      }
      this.effects.push({ type: 'authenticate', nodeDriven: true, pod: hello.pod });
    } else {
      if (!hello.token) throw new Refusal(status.UNAUTHENTICATED, 'the hello carries no token');
      this.effects.push({ type: 'authenticate', token: hello.token, pod: hello.pod });
    }
    this.state.waiting = 'authentication';
  }

  #change(change: TableChange): void {
    this.effects.push({ type: 'change', change });
    this.state.waiting = 'apply';
  }

  #entry(identity: PodIdentity, association: Association): AssociationEntry {
    const application = checkedApplication(association.application);
    const trace = association.trace && this.#rules.trace?.(association.trace);
    const observedAt = association.observedAt ?? this.#context.now;
    // A timestamp past the ±100,000,000 days a Date holds decodes to an invalid Date, which would
    // make the gateway's association latency NaN for good.
    if (Number.isNaN(observedAt.getTime())) {
      throw new Refusal(status.INVALID_ARGUMENT, 'an association must be observed at a time a date can hold');
    }
    return {
      pod: identity.pod,
      ...flowOf(identity, association.flow),
      application,
      observedAt,
      receivedAt: this.#context.now,
      ...(trace && { trace }),
    };
  }
}

/** Checks what a driver says of an application. */
function checkedApplication(application: Application | undefined): Application {
  if (!application) throw new Refusal(status.INVALID_ARGUMENT, 'an association or stamp must name its application');
  const texts = [application.processName, application.executable, application.containerName, application.containerId];
  if (texts.some((t) => t.length > maxTextLength) || application.commandLine.join(' ').length > maxTextLength) {
    throw new Refusal(status.INVALID_ARGUMENT, `application fields are limited to ${maxTextLength} characters`);
  }
  return application;
}

/** Checks a flow key and resolves an empty source to the pod's address of the destination's family. */
function flowOf(identity: PodIdentity, flow: FlowKey | undefined): Omit<PodFlow, 'pod'> {
  if (!flow) throw new Refusal(status.INVALID_ARGUMENT, 'an association must carry its flow');
  const transport =
    flow.protocol === Protocol.PROTOCOL_TCP ? 'tcp' : flow.protocol === Protocol.PROTOCOL_UDP ? 'udp' : undefined;
  if (!transport) throw new Refusal(status.INVALID_ARGUMENT, `flow protocol ${flow.protocol} is not TCP or UDP`);
  if (flow.sourcePort < 1 || flow.sourcePort > 65535 || flow.destinationPort > 65535) {
    throw new Refusal(status.INVALID_ARGUMENT, 'flow ports must be within 1-65535');
  }
  let sourceAddress: string;
  let destinationAddress: string;
  try {
    sourceAddress = bytesToAddress(flow.sourceAddress);
    destinationAddress = bytesToAddress(flow.destinationAddress);
  } catch (error) {
    throw new Refusal(status.INVALID_ARGUMENT, `flow address: ${(error as Error).message}`);
  }
  if (sourceAddress === '') {
    const v4 = destinationAddress === '' || isIPv4(destinationAddress);
    sourceAddress = identity.addresses.find((a) => isIPv4(a) === v4) ?? '';
  }
  if (!identity.addresses.includes(sourceAddress)) {
    throw new Refusal(
      status.PERMISSION_DENIED,
      `source address ${sourceAddress || '(none)'} is not an address of pod ${identity.pod.namespace}/${identity.pod.name}`,
    );
  }
  return {
    transport,
    sourceAddress,
    sourcePort: flow.sourcePort,
    destinationAddress,
    destinationPort: flow.destinationPort,
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
