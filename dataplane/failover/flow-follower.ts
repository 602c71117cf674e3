// The other gateway nodes' side of flow replication (flow-replica.ts): each follows every peer's
// GET /failover/flows (flow-source.ts) over mutual TLS on one long-lived connection, opened again
// `retryMs` after it ends or fails, or at once when told the peer is heard again after a cut
// (reconnect), and keeps what they send in one replica; `inject(address)` loads the replica of an
// address into this node's table when it claims the address. A peer that goes silent keeps its
// flows in the replica until their timeouts: its silence is when they are needed.
//
// A line that does not parse, or names an address that is not one of the gateway's failover
// addresses, is refused (counted and logged) and the stream goes on; a line longer than
// maxMessageBytes ends that stream alone (it is connected again and starts a new round).
import { request } from 'node:https';
import type { TunnelEndpoint } from '../../contracts/gateway/index.ts';
import type { Command } from '../exec.ts';
import { secureContextOptions, type TlsMaterial } from '../link-tls.ts';
import { peerTarget, type PeerTarget } from '../steering/peer-monitor.ts';
import { FlowReplica, maxMessageBytes, parseMessage } from './flow-replica.ts';
import { injectFlows, type InjectResult } from './flow-inject.ts';
import { flowsPath } from './flow-source.ts';

export interface FlowFollowerOptions {
  /** The gateway's other nodes (config.failover.nodes but this one). */
  peers: readonly TunnelEndpoint[];
  /** Their agents' health port. */
  port: number;
  /** The gateway's failover addresses: flows of others are refused. */
  addresses: readonly string[];
  /** This node's TLS directory, current version (link-tls.ts); none yet: no connection. */
  tls: () => TlsMaterial | undefined;
  /** How long after a stream ended it is opened again: 500 ms. */
  retryMs?: number;
  /** How often expired flows are dropped: 5 s. */
  expireMs?: number;
  /** The most flows kept. */
  limit?: number;
  conntrack?: Command;
  log?: (level: 'info' | 'error', message: string, fields: Record<string, unknown>) => void;
  now?: () => number;
}

interface Peer {
  target: PeerTarget;
  abort: AbortController;
  connected: boolean;
  timer?: NodeJS.Timeout;
  /** The status of its last answer: a refusal is logged once, not at every retry. */
  status?: number;
}

export class FlowFollower {
  readonly replica: FlowReplica;
  /** Lines refused, of every peer. */
  refused = 0;
  #peers = new Map<string, Peer>();
  /** The peers that sent a whole round since this follower started: their replicas are complete. */
  readonly #synced = new Set<string>();
  #port: number;
  #addresses: ReadonlySet<string>;
  #running = false;
  readonly #tls: FlowFollowerOptions['tls'];
  readonly #retryMs: number;
  readonly #conntrack: Command;
  readonly #log: NonNullable<FlowFollowerOptions['log']>;
  readonly #now: () => number;
  readonly #expiry: NodeJS.Timeout;

  constructor(options: FlowFollowerOptions) {
    this.replica = new FlowReplica(options.limit);
    this.#port = options.port;
    this.#addresses = new Set(options.addresses);
    this.#tls = options.tls;
    this.#retryMs = options.retryMs ?? 500;
    this.#conntrack = options.conntrack ?? ['conntrack'];
    this.#log = options.log ?? (() => {});
    this.#now = options.now ?? Date.now;
    this.#expiry = setInterval(() => this.replica.expire(this.#now()), options.expireMs ?? 5_000);
    this.#expiry.unref();
    this.update(options.peers, options.addresses);
  }

  start(): void {
    this.#running = true;
    for (const peer of this.#peers.values()) if (!peer.connected && !peer.timer) this.#follow(peer);
  }

  stop(): void {
    this.#running = false;
    clearInterval(this.#expiry);
    for (const peer of this.#peers.values()) retire(peer);
  }

  /** Replaces the peers and the addresses; a peer whose address and port stay keeps its stream. */
  update(peers: readonly TunnelEndpoint[], addresses: readonly string[], port = this.#port): void {
    this.#port = port;
    this.#addresses = new Set(addresses);
    const next = new Map<string, Peer>();
    for (const endpoint of peers) {
      const target = peerTarget(endpoint, port);
      const old = this.#peers.get(endpoint.node);
      if (old && old.target.host === target.host && old.target.port === target.port) {
        next.set(endpoint.node, old);
        continue;
      }
      if (old) retire(old);
      const peer: Peer = { target, abort: new AbortController(), connected: false };
      next.set(endpoint.node, peer);
      if (this.#running) this.#follow(peer);
    }
    for (const [node, old] of this.#peers) if (!next.has(node)) retire(old);
    this.#peers = next;
  }

  /**
   * Opens the stream of `node` anew, its replica kept until the new stream's first round ends. For
   * a peer heard again after a cut: the stream that lived through it is still open but silent, and
   * TCP retransmits into it only after a backoff that grows with the cut (seconds), so the flows
   * the peer streamed meanwhile would reach this node only then.
   */
  reconnect(node: string): void {
    const old = this.#peers.get(node);
    if (!old) return;
    retire(old);
    const peer: Peer = { target: old.target, abort: new AbortController(), connected: false };
    this.#peers.set(node, peer);
    if (this.#running) this.#follow(peer);
  }

  /** The peers whose stream is open now. */
  connected(): string[] {
    return [...this.#peers].filter(([, peer]) => peer.connected).map(([node]) => node);
  }

  /** The peers that have sent every flow of theirs at least once since this follower started. */
  synced(): ReadonlySet<string> {
    return this.#synced;
  }

  /**
   * Loads the replica of `address` into this node's conntrack table, in one `conntrack -R` (more
   * only where entries were already there), then forgets it: from now on this node owns them.
   */
  async inject(address: string): Promise<InjectResult> {
    const started = performance.now();
    const result = await injectFlows(this.replica.flows(address, this.#now()), this.#conntrack, started);
    this.replica.forget(address);
    return result;
  }

  #follow(peer: Peer): void {
    peer.timer = undefined;
    const again = () => {
      peer.connected = false;
      if (this.#running && !peer.abort.signal.aborted) peer.timer = setTimeout(() => this.#follow(peer), this.#retryMs);
    };
    const material = this.#tls();
    if (!material) return again();
    const node = peer.target.node;
    const req = request({
      host: peer.target.host,
      port: peer.target.port,
      family: peer.target.family,
      path: flowsPath,
      agent: false,
      signal: peer.abort.signal,
      headers: { 'user-agent': 'naat-node' },
      ...secureContextOptions(material),
      minVersion: 'TLSv1.2',
    });
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      again();
    };
    req.on('error', end);
    req.on('close', end);
    req.on('response', (res) => {
      res.on('error', () => {});
      const refused = res.statusCode !== 200 && res.statusCode !== peer.status;
      peer.status = res.statusCode;
      if (refused) this.#log('error', 'A gateway node refused to stream its flows', { node, status: res.statusCode });
      if (res.statusCode !== 200) return void res.resume();
      peer.connected = true;
      let roundStart = this.#now();
      let rest = '';
      // One refusal a connection is logged: a peer that sends nothing but garbage fills no log.
      let reported = false;
      const refuse = (error: string) => {
        this.refused++;
        if (!reported) this.#log('error', 'Refused a failover flow message', { node, error });
        reported = true;
      };
      res.setEncoding('utf8').on('data', (chunk: string) => {
        let text = rest + chunk;
        let start = 0;
        for (let end = text.indexOf('\n'); end >= 0; end = text.indexOf('\n', start)) {
          this.#line(text.slice(start, end), node, roundStart, refuse);
          if (text.charCodeAt(start) === 0x5b && text.startsWith('["synced"]', start)) {
            roundStart = this.#now();
            this.#synced.add(node);
          }
          start = end + 1;
        }
        text = text.slice(start);
        if (text.length > maxMessageBytes) {
          refuse(`a message of over ${maxMessageBytes} bytes; the stream ends`);
          return void req.destroy();
        }
        rest = text;
      });
    });
    req.end();
  }

  #line(line: string, node: string, roundStart: number, refuse: (error: string) => void): void {
    try {
      const message = parseMessage(line);
      if (message.op !== 'synced' && !this.#addresses.has(message.flow.address)) {
        throw new Error(`${message.flow.address} is not a failover address of the gateway`);
      }
      this.replica.apply(node, message, this.#now(), roundStart);
    } catch (error) {
      refuse((error as Error).message);
    }
  }
}

function retire(peer: Peer): void {
  clearTimeout(peer.timer);
  peer.timer = undefined;
  peer.abort.abort();
  peer.connected = false;
}
