// The node agent's NAA relay. A sidecar always dials its own node's address at its gateway's
// association port; on a node that is not one of the gateway's nodes, the relay answers there and
// carries each sidecar stream to every gateway node that is up, so that whichever of them the pod's
// flows are steered to already holds the pod's associations and stamps.
//
// Contract (the protocol is unchanged, see proto/naat/naa/v1/naa.proto):
// - The first message must be a Hello; it is the only one the relay decodes (for the pod's name).
//   Then one Associate stream is opened to each up gateway node, and every message goes to each as
//   the bytes it came as: a sidecar's Hello carries the pod's own token, so every gateway
//   authenticates the pod itself. A node-driven Hello (no token: the node agent speaks for its
//   node's pods, docs/naa.md) is forwarded only on a stream the node agent's own drivers opened in
//   its process (`openLocal`); from the network (a sidecar, any pod) it is refused, since the
//   gateways take it on the strength of this node's agent certificate, which the relay's
//   connections carry.
// - The driver gets one HelloAck once every gateway node answered its Hello (that of the node the
//   pod is pinned to, with the tightest limits of all), an Ack only for a sequence every one of them
//   acknowledged, and the verdicts and policies of the pinned node alone.
// - The stream ends with UNAVAILABLE when a gateway node's stream fails or the set of up nodes
//   changes, so that the driver reconnects and sends its whole snapshot to the nodes up now; a
//   gateway's refusal of what the driver sent (UNAUTHENTICATED, PERMISSION_DENIED,
//   INVALID_ARGUMENT, RESOURCE_EXHAUSTED) reaches the driver as it is, naming the node.
// - Each stream is held to the limits its gateways announced (message size and rate, checked here
//   before anything is forwarded) and to bounded memory: reading the driver stops while a gateway
//   node's stream cannot take more, and reading the gateways stops while the driver does not read.
//   A stream that breaks the rules is closed alone; gateway connections are shared by all streams
//   and never closed because of one.
// - A gateway node that comes up holds none of the pods' state until their drivers reconnect:
//   `synced()` says which up nodes hold the state of every pod whose stream was open when they came
//   up (each driver's first full snapshot acknowledged), or waited `syncTimeoutMs` for it, so that
//   the node agent steers new flows to a node only once that node can classify them.
import {
  Client,
  credentials,
  status,
  type ChannelCredentials,
  type ClientDuplexStream,
  type Server,
  type ServerCredentials,
  type ServiceDefinition,
  type ServiceError,
  type StatusObject,
} from '@grpc/grpc-js';
import { isIPv4 } from 'node:net';
import type { NodeGateway } from '../../contracts/gateway/index.ts';
import type { AssociateStream } from '../../contracts/naa/index.ts';
import {
  AssociateRequest,
  AssociationServiceService,
  type AssociateResponse,
  type EffectivePolicy,
  type HelloAck,
  type Limits,
  type PodRef,
} from '../../proto/index.ts';
import { LocalCall, type ServerCall } from './local-call.ts';
import { defaultLimits, listen, naaGrpcServer, refusalLog } from './server.ts';
import { fullBucket, takeToken, type RateBucket } from './stream.ts';

/** The gateway's nodes as the node agent's probes see them. */
export interface RelayPeers {
  /** The names of the gateway's nodes that can take flows now. */
  up(): ReadonlySet<string>;
  /** Calls `listener` whenever the set of up nodes may have changed. */
  onChange(listener: () => void): void;
}

export interface NaaRelayOptions {
  gateway: NodeGateway;
  peers: RelayPeers;
  /** The gateway node the pod's flows are pinned to, if any: the one whose verdicts and policies the driver gets. */
  pinnedPeer(pod: PodRef): string | undefined;
  log?: (message: string, fields: Record<string, unknown>) => void;
  /** How long a new stream may take to send its Hello, and the gateway nodes to answer it. 10 s. */
  helloTimeoutMs?: number;
  /**
   * How long a node that came up waits at most for the pods' drivers to reconnect and sync before
   * it counts as synced anyway (a pod may have gone meanwhile). 2 s.
   */
  syncTimeoutMs?: number;
  /** Called when a node that came up is synced (see `synced()`). */
  onSynced?: () => void;
  /** The largest message read at all; each stream is then held to what its gateways announce. */
  maxMessageBytes?: number;
  /** Streams closed for the same reason are logged once per this period (server.ts). 60 s. */
  refusalLogPeriodMs?: number;
  /**
   * How the relay connects to the gateway nodes (link-tls.ts `agentChannelCredentials`: the
   * gateway node verified, this node's certificate presented); plaintext when omitted.
   */
  channelCredentials?: ChannelCredentials;
  /** How sidecars connect to the relay (link-tls.ts `naaServerCredentials`); plaintext when omitted. */
  serverCredentials?: ServerCredentials;
}

/** The service as the relay serves it: requests stay encoded, to be forwarded as they came. */
const relayedService: ServiceDefinition = {
  associate: { ...AssociationServiceService.associate, requestDeserialize: (bytes: Buffer) => bytes },
};
const associatePath = AssociationServiceService.associate.path;

/** Statuses by which a gateway refuses what the driver sent; they reach the driver as they are. */
const refusals: ReadonlySet<status> = new Set([
  status.UNAUTHENTICATED,
  status.PERMISSION_DENIED,
  status.INVALID_ARGUMENT,
  status.RESOURCE_EXHAUSTED,
]);

/** The driver's stream: a gRPC call from the network, or one of the node agent's own (local-call.ts). */
type Downstream = ServerCall<Buffer>;
type Upstream = ClientDuplexStream<Buffer, AssociateResponse>;
type Log = (message: string, fields: Record<string, unknown>) => void;

/** The most messages of a stream the relay decodes to find the end of its first snapshot. */
const maxDecoded = 256;

/** A gateway node as the relay reaches it. */
interface Peer {
  target: string;
  client: Client;
}

export class NaaRelay {
  readonly #options: NaaRelayOptions;
  readonly #server: Server;
  readonly #streams = new Set<RelayedStream>();
  #closed = false;
  readonly #logRefusal: (code: status, fields: Record<string, unknown>) => void;
  #gateway: NodeGateway;
  /** Clients of the gateway's nodes by name, each shared by every stream. */
  #peers = new Map<string, Peer>();
  /** The up nodes as last seen. */
  #up: string[] = [];
  /**
   * Nodes that came up and are not synced yet: the pods (by uid) whose streams were open then,
   * which have not synced with the node since, and when it counts as synced anyway.
   */
  readonly #unsynced = new Map<string, { pods: Set<string>; timer: NodeJS.Timeout }>();

  constructor(options: NaaRelayOptions) {
    this.#options = options;
    this.#gateway = options.gateway;
    this.#logRefusal = refusalLog(options.log ?? (() => {}), options.refusalLogPeriodMs ?? 60_000);
    this.#server = naaGrpcServer(options.maxMessageBytes ?? defaultLimits.maxMessageBytes, relayedService, {
      associate: (call: Downstream) => this.#serve(call, false),
    });
    this.#peers = this.#connect(options.gateway, new Map());
    this.#up = this.#upPeers();
    options.peers.onChange(() => {
      if (!this.#closed) this.#checkPeers();
    });
  }

  /**
   * The up nodes that hold the state of every pod relayed here: all of them but those that came
   * up while pods' streams were open, until each of those pods' drivers reconnected and its first
   * snapshot was acknowledged by the node (or `syncTimeoutMs` passed).
   */
  synced(): ReadonlySet<string> {
    return new Set(this.#upPeers().filter((name) => !this.#unsynced.has(name)));
  }

  /** Listens on `address` (`HOST:PORT`, `[IPV6]:PORT` or `:PORT` for both families); resolves with the port. */
  listen(address: string): Promise<number> {
    return listen(this.#server, address, this.#options.serverCredentials);
  }

  /**
   * A stream of one of the node agent's own drivers of the node's pods (node-driver.ts), handed over
   * in the process: the only streams whose node-driven hellos the relay forwards. Nothing outside
   * the node agent's process can open one.
   */
  openLocal(): AssociateStream {
    if (this.#closed) return LocalCall.refused(status.UNAVAILABLE, 'the node agent is stopping');
    const call = new LocalCall((bytes) => bytes);
    this.#serve(call.server, true);
    return call.driver;
  }

  /** Ends every stream (UNAVAILABLE, so drivers retry) and stops listening. */
  async close(): Promise<void> {
    this.#closed = true;
    for (const { timer } of this.#unsynced.values()) clearTimeout(timer);
    for (const stream of this.#streams) stream.refuse(status.UNAVAILABLE, 'the node agent is stopping');
    this.#server.forceShutdown();
    for (const peer of this.#peers.values()) peer.client.close();
  }

  /**
   * Takes a new version of the gateway's node config. Streams relayed to a node whose address
   * changed are ended (UNAVAILABLE), as are those that no longer match the up nodes. The relay
   * keeps listening where it does: a new association port needs a new relay.
   */
  update(gateway: NodeGateway): void {
    const before = this.#peers;
    this.#gateway = gateway;
    this.#peers = this.#connect(gateway, before);
    const changed = [...before].filter(([name, peer]) => this.#peers.get(name) !== peer).map(([name]) => name);
    for (const stream of this.#streams) {
      const gone = stream.peers.find((name) => changed.includes(name));
      if (gone) stream.refuse(status.UNAVAILABLE, `gateway node ${gone} is no longer reached at the same address`);
    }
    for (const name of changed) before.get(name)!.client.close();
    this.#checkPeers();
  }

  /** Number of sidecar streams held. */
  get streams(): number {
    return this.#streams.size;
  }

  /** Clients of the gateway's nodes, reusing those of `known` whose address did not change. */
  #connect(gateway: NodeGateway, known: ReadonlyMap<string, Peer>): Map<string, Peer> {
    const peers = new Map<string, Peer>();
    for (const { node, addresses } of gateway.peers) {
      // The gateway agents listen on both families; IPv4 first, as the peer monitor asks them.
      const address = addresses.find((a) => isIPv4(a)) ?? addresses[0]!;
      const target = `${isIPv4(address) ? address : `[${address}]`}:${gateway.associationPort}`;
      const old = known.get(node);
      peers.set(
        node,
        old?.target === target
          ? old
          : {
              target,
              client: new Client(target, this.#options.channelCredentials ?? credentials.createInsecure(), {
                'grpc.keepalive_time_ms': 10_000,
                'grpc.keepalive_timeout_ms': 5_000,
              }),
            },
      );
    }
    return peers;
  }

  /** The up nodes of the gateway that the relay knows, in name order. */
  #upPeers(): string[] {
    return [...this.#options.peers.up()].filter((name) => this.#peers.has(name)).sort();
  }

  /**
   * Ends every stream whose gateway nodes are no longer exactly the up ones; a node that came up
   * waits for the pods of those streams to sync with it.
   */
  #checkPeers(): void {
    const up = this.#upPeers();
    const cameUp = up.filter((name) => !this.#up.includes(name));
    this.#up = up;
    for (const name of [...this.#unsynced.keys()]) if (!up.includes(name)) this.#synced(name);
    const pods = new Set([...this.#streams].filter((s) => s.peers.length).map((s) => s.pod!.uid));
    for (const name of cameUp) {
      if (!pods.size) continue;
      const timer = setTimeout(() => this.#synced(name), this.#options.syncTimeoutMs ?? 2_000);
      this.#unsynced.set(name, { pods: new Set(pods), timer });
    }
    for (const stream of this.#streams) {
      if (stream.peers.length && stream.peers.join(',') !== up.join(',')) {
        stream.refuse(
          status.UNAVAILABLE,
          `the up nodes of gateway ${this.#gateway.gateway} changed (${stream.peers.join(', ')} → ${up.join(', ') || 'none'}); reconnect to send the whole snapshot to each`,
        );
      }
    }
  }

  /** A relayed stream's first snapshot was acknowledged by every one of its nodes. */
  #streamSynced(stream: RelayedStream): void {
    for (const [name, { pods }] of this.#unsynced) {
      if (stream.peers.includes(name) && pods.delete(stream.pod!.uid) && !pods.size) this.#synced(name);
    }
  }

  #synced(name: string): void {
    const unsynced = this.#unsynced.get(name);
    if (!unsynced) return;
    clearTimeout(unsynced.timer);
    this.#unsynced.delete(name);
    if (this.#up.includes(name)) this.#options.onSynced?.();
  }

  #serve(call: Downstream, local: boolean): void {
    const stream = new RelayedStream(call, {
      local,
      helloTimeoutMs: this.#options.helloTimeoutMs ?? 10_000,
      open: (pod) => {
        const up = this.#upPeers();
        if (!up.length) return `no node of gateway ${this.#gateway.gateway} is up`;
        const pinned = this.#options.pinnedPeer(pod);
        return {
          peers: up.map((name) => ({ name, client: this.#peers.get(name)!.client })),
          pinned: up.includes(pinned!) ? pinned! : up[0]!,
        };
      },
      closed: (code, details, pod) => {
        this.#streams.delete(stream);
        if (code !== status.OK && code !== status.CANCELLED) {
          this.#logRefusal(code, {
            pod: pod && `${pod.namespace}/${pod.name}`,
            code,
            details,
            gateway: this.#gateway.gateway,
          });
        }
      },
      synced: () => this.#streamSynced(stream),
      ...(this.#options.log && { log: this.#options.log }),
    });
    this.#streams.add(stream);
  }
}

interface StreamHooks {
  /** The stream is one of the node agent's own (`openLocal`): it may say it is node-driven. */
  local: boolean;
  helloTimeoutMs: number;
  /** The gateway nodes to open the pod's streams to and the one it is pinned to, or why there are none. */
  open(pod: PodRef): { peers: Array<{ name: string; client: Client }>; pinned: string } | string;
  /** The stream is over, with this status (OK when it ended well, CANCELLED when the driver went away). */
  closed(code: status, details: string, pod: PodRef | undefined): void;
  /** Every node acknowledged the driver's first full snapshot (and what it sent before it). */
  synced(): void;
  log?: Log;
}

/** One gateway node's stream of a relayed stream. */
interface Leg {
  name: string;
  call: Upstream;
  helloAck?: HelloAck;
  /** The highest sequence this node acknowledged. */
  acked: number;
  /** Its stream takes no more writes until it drains. */
  full: boolean;
  /** It ended with OK after the driver ended its side. */
  done: boolean;
}

/**
 * One sidecar stream and its streams to the gateway nodes. 'hello' until the Hello arrives,
 * 'opening' until every node answered it, 'open' while messages flow, 'ending' once the driver
 * ended its side and the nodes finish theirs, 'closed' after.
 */
class RelayedStream {
  readonly #call: Downstream;
  readonly #hooks: StreamHooks;
  #phase: 'hello' | 'opening' | 'open' | 'ending' | 'closed' = 'hello';
  #legs: Leg[] = [];
  #pinned = '';
  #pod: PodRef | undefined;
  /** Messages forwarded so far. */
  #forwarded = 0;
  /** Where the driver's first full snapshot ends (the count of messages up to its last part), once seen. */
  #snapshotEnd: number | undefined;
  #limits: Limits | undefined;
  #bucket: RateBucket | undefined;
  /** The highest Ack sent to the driver. */
  #acked = 0;
  /** The pinned node's latest policy, held until the HelloAck is sent. */
  #policy: EffectivePolicy | undefined;
  #readingDriver = true;
  #readingGateways = true;
  #timer: NodeJS.Timeout;

  constructor(call: Downstream, hooks: StreamHooks) {
    this.#call = call;
    this.#hooks = hooks;
    this.#timer = setTimeout(
      () => this.refuse(status.DEADLINE_EXCEEDED, 'no hello within the time allowed'),
      hooks.helloTimeoutMs,
    );
    call.on('data', (bytes: Buffer) => this.#fromDriver(bytes));
    call.on('end', () => this.#driverEnded());
    call.on('drain', () => this.#setReadingGateways(true));
    call.on('cancelled', () => this.#gone());
    call.on('close', () => this.#gone());
    call.on('error', () => this.#gone());
  }

  /** The names of the gateway nodes this stream is relayed to (none before its Hello). */
  get peers(): string[] {
    return this.#legs.map((leg) => leg.name);
  }

  /** The pod its Hello names (once read). */
  get pod(): PodRef | undefined {
    return this.#pod;
  }

  /** Closes the stream with `code` and cancels its gateway nodes' streams. */
  refuse(code: status, details: string): void {
    if (!this.#finish(code, details)) return;
    this.#call.emit('error', { code, details } as ServiceError);
  }

  #fromDriver(bytes: Buffer): void {
    try {
      if (this.#phase === 'hello') return this.#hello(bytes);
      if (this.#phase !== 'open' && this.#phase !== 'opening') return;
      if (this.#limits) this.#check(bytes);
      this.#forward(bytes);
    } catch (error) {
      this.refuse(error instanceof Refusal ? error.code : status.INTERNAL, (error as Error).message);
    }
  }

  #hello(bytes: Buffer): void {
    let message: AssociateRequest;
    try {
      message = AssociateRequest.decode(bytes);
    } catch (error) {
      return this.refuse(
        status.INVALID_ARGUMENT,
        `the first message is not an AssociateRequest: ${(error as Error).message}`,
      );
    }
    const body = message.body;
    if (message.sequence !== 1) {
      return this.refuse(status.INVALID_ARGUMENT, `message sequence ${message.sequence} does not follow 0`);
    }
    if (body?.$case !== 'hello') {
      return this.refuse(status.INVALID_ARGUMENT, `the first message must be a hello, not ${body?.$case ?? 'empty'}`);
    }
    const pod = body.value.pod;
    if (!pod?.uid || !pod.name || !pod.namespace) {
      return this.refuse(status.INVALID_ARGUMENT, 'the hello must name the pod: namespace, name and uid');
    }
    if (body.value.nodeDriven && !this.#hooks.local) {
      return this.refuse(
        status.PERMISSION_DENIED,
        `the hello of pod ${pod.namespace}/${pod.name} says it is node-driven, which only this node's agent may ` +
          `say, from within itself; a stream from the network proves its pod with its token`,
      );
    }
    this.#pod = pod;
    const opened = this.#hooks.open(pod);
    if (typeof opened === 'string') return this.refuse(status.UNAVAILABLE, opened);
    this.#phase = 'opening';
    this.#pinned = opened.pinned;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      const silent = this.#legs.filter((l) => !l.helloAck).map((l) => l.name);
      this.refuse(
        status.UNAVAILABLE,
        `gateway node ${silent.join(', ')} did not answer the hello within ${this.#hooks.helloTimeoutMs} ms`,
      );
    }, this.#hooks.helloTimeoutMs);
    // Nothing more is read until every node answered: a driver waits for its HelloAck anyway.
    this.#updateReading();
    for (const { name, client } of opened.peers) {
      const call: Upstream = client.makeBidiStreamRequest(
        associatePath,
        (b: Buffer) => b,
        AssociationServiceService.associate.responseDeserialize,
      );
      const leg: Leg = { name, call, acked: 0, full: false, done: false };
      this.#legs.push(leg);
      call.on('data', (response: AssociateResponse) => this.#fromGateway(leg, response));
      call.on('status', (end: StatusObject) => this.#gatewayEnded(leg, end));
      call.on('drain', () => {
        leg.full = false;
        this.#updateReading();
      });
      // The outcome comes with 'status'; an 'error' without a listener would throw.
      call.on('error', () => {});
    }
    this.#forward(bytes);
  }

  /** Holds the driver to the tightest limits its gateway nodes announced. */
  #check(bytes: Buffer): void {
    const { maxMessageBytes, maxMessagesPerSecond } = this.#limits!;
    if (bytes.length > maxMessageBytes) {
      throw new Refusal(
        status.RESOURCE_EXHAUSTED,
        `a message of ${bytes.length} bytes is over the ${maxMessageBytes} allowed`,
      );
    }
    const bucket = takeToken(this.#bucket!, maxMessagesPerSecond, performance.now());
    if (!bucket) throw new Refusal(status.RESOURCE_EXHAUSTED, `more than ${maxMessagesPerSecond} messages per second`);
    this.#bucket = bucket;
  }

  #forward(bytes: Buffer): void {
    this.#forwarded++;
    if (this.#snapshotEnd === undefined && this.#forwarded <= maxDecoded) this.#findSnapshotEnd(bytes);
    for (const leg of this.#legs) if (!leg.call.write(bytes)) leg.full = true;
    this.#updateReading();
  }

  /**
   * Notes where the first full snapshot ends. A message the relay cannot decode is forwarded all
   * the same: the gateway nodes refuse it.
   */
  #findSnapshotEnd(bytes: Buffer): void {
    try {
      const body = AssociateRequest.decode(bytes).body;
      if (body?.$case === 'snapshot' && body.value.last) this.#snapshotEnd = this.#forwarded;
    } catch {
      return;
    }
  }

  #fromGateway(leg: Leg, response: AssociateResponse): void {
    const body = response.body;
    if (!body || this.#phase === 'closed') return;
    switch (body.$case) {
      case 'helloAck':
        leg.helloAck = body.value;
        if (this.#phase === 'opening' && this.#legs.every((l) => l.helloAck)) this.#opened();
        return;
      case 'ack': {
        leg.acked = Math.max(leg.acked, body.value.sequence);
        const all = Math.min(...this.#legs.map((l) => l.acked));
        if (all > this.#acked && this.#phase !== 'opening') {
          const before = this.#acked;
          this.#acked = all;
          this.#toDriver({ body: { $case: 'ack', value: { sequence: all } } });
          const end = this.#snapshotEnd;
          if (end !== undefined && before < end && all >= end) this.#hooks.synced();
        }
        return;
      }
      case 'verdict':
        if (leg.name === this.#pinned) this.#toDriver(response);
        return;
      case 'policy':
        if (leg.name !== this.#pinned) return;
        if (this.#phase === 'opening') this.#policy = body.value;
        else this.#toDriver(response);
        return;
    }
  }

  /** Every node answered the Hello: the driver gets the pinned node's HelloAck, with the tightest limits. */
  #opened(): void {
    const answers = this.#legs.map((l) => l.helloAck!);
    const tightest = (field: keyof Limits) => Math.min(...answers.map((a) => a.limits?.[field] || Infinity));
    const limits: Limits = {
      maxMessageBytes: tightest('maxMessageBytes'),
      maxAssociations: tightest('maxAssociations'),
      maxMessagesPerSecond: tightest('maxMessagesPerSecond'),
    };
    const pinned = this.#legs.find((l) => l.name === this.#pinned)!.helloAck!;
    this.#limits = {
      maxMessageBytes: Number.isFinite(limits.maxMessageBytes) ? limits.maxMessageBytes : defaultLimits.maxMessageBytes,
      maxAssociations: Number.isFinite(limits.maxAssociations) ? limits.maxAssociations : defaultLimits.maxAssociations,
      maxMessagesPerSecond: Number.isFinite(limits.maxMessagesPerSecond)
        ? limits.maxMessagesPerSecond
        : defaultLimits.maxMessagesPerSecond,
    };
    this.#bucket = fullBucket(this.#limits.maxMessagesPerSecond, performance.now());
    clearTimeout(this.#timer);
    this.#phase = 'open';
    this.#toDriver({ body: { $case: 'helloAck', value: { ...pinned, limits: this.#limits } } });
    if (this.#policy) this.#toDriver({ body: { $case: 'policy', value: this.#policy } });
    this.#policy = undefined;
    this.#updateReading();
    this.#hooks.log?.('Relayed NAA stream', {
      pod: `${this.#pod!.namespace}/${this.#pod!.name}`,
      peers: this.peers.join(','),
      pinned: this.#pinned,
    });
  }

  #toDriver(response: AssociateResponse): void {
    if (!this.#call.write(response)) this.#setReadingGateways(false);
  }

  #gatewayEnded(leg: Leg, end: StatusObject): void {
    if (this.#phase === 'closed') return;
    if (end.code === status.OK && this.#phase === 'ending') {
      leg.done = true;
      if (this.#legs.every((l) => l.done) && this.#finish(status.OK, '')) this.#call.end();
      return;
    }
    if (refusals.has(end.code)) return this.refuse(end.code, `gateway node ${leg.name}: ${end.details}`);
    this.refuse(
      status.UNAVAILABLE,
      end.code === status.OK
        ? `gateway node ${leg.name} ended the stream`
        : `the stream to gateway node ${leg.name} failed (${status[end.code]}): ${end.details}`,
    );
  }

  #driverEnded(): void {
    if (this.#phase === 'closed') return;
    if (this.#phase === 'hello') {
      if (this.#finish(status.OK, '')) this.#call.end();
      return;
    }
    this.#phase = 'ending';
    for (const leg of this.#legs) leg.call.end();
  }

  #gone(): void {
    this.#finish(status.CANCELLED, 'the driver went away');
  }

  /**
   * Reads the driver unless its Hello waits for the nodes' answers, a node's stream is full, or the
   * driver does not read what it was sent: then the nodes get nothing to answer either, and no
   * buffer anywhere along the way grows.
   */
  #updateReading(): void {
    const read = this.#phase === 'open' && !this.#legs.some((l) => l.full) && this.#readingGateways;
    if (read === this.#readingDriver || this.#phase === 'closed') return;
    this.#readingDriver = read;
    if (read) this.#call.resume();
    else this.#call.pause();
  }

  /** Reads the gateway nodes unless the driver does not read what they sent. */
  #setReadingGateways(read: boolean): void {
    if (read === this.#readingGateways || this.#phase === 'closed') return;
    this.#readingGateways = read;
    for (const leg of this.#legs) {
      if (read) leg.call.resume();
      else leg.call.pause();
    }
    this.#updateReading();
  }

  /** Marks the stream closed and cancels what is left; false when it was closed already. */
  #finish(code: status, details: string): boolean {
    if (this.#phase === 'closed') return false;
    this.#phase = 'closed';
    clearTimeout(this.#timer);
    for (const leg of this.#legs) if (!leg.done) leg.call.cancel();
    this.#hooks.closed(code, details, this.#pod);
    return true;
  }
}

/** A rule the driver broke, checked by the relay itself. */
class Refusal extends Error {
  readonly code: status;
  constructor(code: status, message: string) {
    super(message);
    this.code = code;
  }
}
