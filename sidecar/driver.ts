// The driver's connection to the NAA server on its node. It keeps the gateway's picture of the
// pod equal to the scanner's: on every (re)connect a Hello and a full snapshot, then changes as
// they happen. It never gives up: a lost stream is retried with capped, jittered backoff.
import { credentials, type ChannelCredentials, type ClientDuplexStream } from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import {
  addressToBytes,
  AssociationMode,
  AssociationServiceClient,
  Protocol,
  type AssociateRequest,
  type AssociateResponse,
  type FlowKey,
  type Limits,
  type PodRef,
  type EffectivePolicy,
  type Verdict,
} from '../proto/index.ts';
import { diffAssociations, type Association, type Flow } from './associations.ts';

export interface DriverOptions {
  /** host:port of the NAA server. */
  target: string;
  pod: PodRef;
  /** The projected service-account token; read anew on every connect, as the kubelet rotates it. */
  tokenFile: string;
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
}

export type DriverState = 'connecting' | 'connected' | 'disconnected' | 'stopped';

type Body = NonNullable<AssociateRequest['body']>;

export class Driver {
  readonly #options: DriverOptions;
  readonly #client: InstanceType<typeof AssociationServiceClient>;
  #stream: ClientDuplexStream<AssociateRequest, AssociateResponse> | undefined;
  #ready = false;
  #sequence = 0;
  #acked = 0;
  #generation = 0;
  #current = new Map<string, Association>();
  #limits: Limits | undefined;
  #retryMs: number;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** Why the last stream was lost, for logs and status. */
  lastError: Error | undefined;

  constructor(options: DriverOptions) {
    this.#options = options;
    this.#retryMs = options.backoff?.initialMs ?? 100;
    this.#client = new AssociationServiceClient(
      options.target,
      options.channelCredentials ?? credentials.createInsecure(),
      { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 5_000 },
    );
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
    if (!this.#ready) return;
    if (changes.associate.length + changes.dissociate.length > this.#snapshotMessages()) {
      this.#sendSnapshot();
      return;
    }
    for (const association of changes.associate) this.#send({ $case: 'associate', value: toProto(association) });
    for (const flow of changes.dissociate) {
      this.#send({ $case: 'dissociate', value: { flow: flowKey(flow), observedAt: new Date() } });
    }
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#stream?.end();
    this.#client.close();
    this.#options.onState?.('stopped');
  }

  async #connect(): Promise<void> {
    if (this.#stopped) return;
    this.#options.onState?.('connecting');
    let token: string;
    try {
      token = (await readFile(this.#options.tokenFile, 'utf8')).trim();
    } catch (error) {
      this.#retry(error as Error);
      return;
    }
    const stream = this.#client.associate();
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
        this.#sendSnapshot();
        break;
      case 'ack':
        this.#acked = Math.max(this.#acked, body.value.sequence);
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
    const all = [...this.#current.values()].map(toProto);
    const chunk = this.#snapshotChunk();
    const generation = ++this.#generation;
    for (let i = 0; i === 0 || i < all.length; i += chunk) {
      const associations = all.slice(i, i + chunk);
      this.#send({ $case: 'snapshot', value: { generation, associations, last: i + chunk >= all.length } });
    }
  }

  #send(body: Body): void {
    this.#stream?.write({ sequence: ++this.#sequence, body });
  }

  #lost(stream: ClientDuplexStream<AssociateRequest, AssociateResponse>, error: Error): void {
    if (stream !== this.#stream) return;
    this.#stream = undefined;
    this.#ready = false;
    stream.cancel();
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

function toProto(association: Association) {
  return {
    flow: flowKey(association.flow),
    application: association.application,
    observedAt: association.observedAt,
    trace: undefined,
  };
}
