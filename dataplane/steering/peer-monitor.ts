// Which gateway nodes of one gateway can take this node's flows now: each peer's gateway agent
// answers `GET /steering` with 200 while it applied its config and has a healthy uplink
// (gateway-readiness.ts). A node agent keeps one monitor per gateway of its NodeConfig and steers
// new flows only to the peers in `up()`.
//
// Each peer is asked every intervalMs (a request that times out is followed by the next at once),
// on a fresh connection each time, so that a peer whose agent hangs or whose address is gone is
// noticed as surely as one that refuses. Up and down follow the uplink health check's thresholds
// (probe/health.ts): with the defaults a peer is down two failed requests after it broke, 400 to
// 600 ms when it stops answering, and up again at its first good answer.
import { isIP } from 'node:net';
import type { TunnelEndpoint } from '../../contracts/gateway/index.ts';
import {
  httpCheck,
  initialHealth,
  nextHealth,
  type HealthCheck,
  type ProbeResult,
  type UplinkHealth,
} from '../probe/index.ts';

export interface PeerCheck {
  intervalMs: number;
  /** How long a request may take; at most intervalMs keeps the rounds on time. */
  timeoutMs: number;
  /** Consecutive failed requests after which an up peer is down. */
  failureThreshold: number;
  /** Consecutive good answers after which a down peer is up. */
  successThreshold: number;
}

export const defaultPeerCheck: PeerCheck = {
  intervalMs: 200,
  timeoutMs: 200,
  failureThreshold: 2,
  successThreshold: 1,
};

/** Where a peer's `/steering` is asked: its IPv4 address if it has one, its IPv6 one otherwise. */
export interface PeerTarget {
  node: string;
  host: string;
  family: 4 | 6;
  port: number;
}

/** One request to a peer; resolves (never rejects) once answered, failed, timed out or aborted. */
export type PeerProbe = (target: PeerTarget, timeoutMs: number, signal: AbortSignal) => Promise<ProbeResult>;

export interface PeerMonitor {
  start(): void;
  /** Stops the timers and aborts requests in flight; resolves once none is left. */
  stop(): Promise<void>;
  /** The names of the peers that are up. */
  up(): ReadonlySet<string>;
  /** Called after `up()` changed; a listener must not throw. */
  onChange(listener: () => void): void;
  /** Replaces the peers (and the port of their health endpoint, unchanged when omitted). */
  update(peers: readonly TunnelEndpoint[], healthPort?: number): void;
}

export interface PeerMonitorOptions {
  peers: readonly TunnelEndpoint[];
  /** The gateway's health port (NodeGateway.healthPort). */
  healthPort: number;
  check?: Partial<PeerCheck>;
  probe?: PeerProbe;
  now?: () => Date;
}

export function peerTarget(peer: TunnelEndpoint, port: number): PeerTarget {
  const address = peer.addresses.find((a) => isIP(a) === 4) ?? peer.addresses.find((a) => isIP(a) === 6);
  if (!address) throw new Error(`peer ${peer.node} has no IP address`);
  return { node: peer.node, host: address, family: isIP(address) as 4 | 6, port };
}

/** GET http://<target>/steering; only a 200 passes. */
export const steeringProbe: PeerProbe = (target, timeoutMs, signal) =>
  httpCheck({
    host: target.host,
    port: target.port,
    path: '/steering',
    family: target.family,
    timeoutMs,
    signal,
    passes: (status) => status === 200,
  });

interface Entry {
  target: PeerTarget;
  state: UplinkHealth;
  timer?: NodeJS.Timeout;
  /** Aborted when the entry is replaced, removed or the monitor stops: its results are dropped. */
  abort: AbortController;
  inFlight?: Promise<void>;
}

export function createPeerMonitor(options: PeerMonitorOptions): PeerMonitor {
  return new HttpPeerMonitor(options);
}

class HttpPeerMonitor implements PeerMonitor {
  #entries = new Map<string, Entry>();
  #port: number;
  #running = false;
  readonly #listeners: Array<() => void> = [];
  readonly #check: HealthCheck;
  readonly #probe: PeerProbe;
  readonly #now: () => Date;

  constructor(options: PeerMonitorOptions) {
    const check = { ...defaultPeerCheck, ...options.check };
    // The uplink health check's state machine, with one request per round: any failure fails it.
    this.#check = { targets: [], protocol: 'HTTP', maxLossPercent: 0, ...check };
    this.#probe = options.probe ?? steeringProbe;
    this.#now = options.now ?? (() => new Date());
    this.#port = options.healthPort;
    this.update(options.peers);
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    for (const [node, entry] of this.#entries) {
      // An entry retired by an earlier stop() starts anew.
      const live = entry.abort.signal.aborted ? { ...entry, abort: new AbortController() } : entry;
      this.#entries.set(node, live);
      this.#schedule(live, 0);
    }
  }

  async stop(): Promise<void> {
    this.#running = false;
    const inFlight = [...this.#entries.values()].map((entry) => {
      retire(entry);
      return entry.inFlight;
    });
    await Promise.all(inFlight);
  }

  up(): ReadonlySet<string> {
    return new Set([...this.#entries].filter(([, e]) => e.state.healthy).map(([node]) => node));
  }

  onChange(listener: () => void): void {
    this.#listeners.push(listener);
  }

  /**
   * A peer whose address and port stay keeps its state and its loop. One whose target changed keeps
   * whether it is up (a config edit moves no flows) but asks its new address from now on. A new
   * peer is down until its first good answer.
   */
  update(peers: readonly TunnelEndpoint[], healthPort: number = this.#port): void {
    this.#port = healthPort;
    const before = this.up();
    const next = new Map<string, Entry>();
    for (const peer of peers) {
      const target = peerTarget(peer, healthPort);
      const old = this.#entries.get(peer.node);
      if (old && sameTarget(old.target, target)) {
        next.set(peer.node, old);
        continue;
      }
      if (old) retire(old);
      const state = old
        ? { ...old.state, consecutiveFailures: 0, consecutiveSuccesses: 0 }
        : { ...initialHealth(this.#now()), healthy: false };
      const entry: Entry = { target, state, abort: new AbortController() };
      next.set(peer.node, entry);
      if (this.#running) this.#schedule(entry, 0);
    }
    for (const [node, old] of this.#entries) if (!next.has(node)) retire(old);
    this.#entries = next;
    if (!sameSet(before, this.up())) this.#notify();
  }

  #schedule(entry: Entry, delayMs: number): void {
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      entry.inFlight = this.#round(entry);
    }, delayMs);
  }

  async #round(entry: Entry): Promise<void> {
    const started = Date.now();
    const { signal } = entry.abort;
    const result = await this.#probe(entry.target, this.#check.timeoutMs, signal);
    entry.inFlight = undefined;
    if (signal.aborted || !this.#running) return;
    const round = {
      answered: result.ok ? 1 : 0,
      sent: 1,
      ...(result.rttMs !== undefined ? { meanRttMs: result.rttMs } : {}),
    };
    const was = entry.state.healthy;
    entry.state = nextHealth(entry.state, round, this.#check, this.#now());
    if (entry.state.healthy !== was) this.#notify();
    this.#schedule(entry, Math.max(0, started + this.#check.intervalMs - Date.now()));
  }

  #notify(): void {
    for (const listener of this.#listeners) listener();
  }
}

function retire(entry: Entry): void {
  clearTimeout(entry.timer);
  entry.timer = undefined;
  entry.abort.abort();
}

const sameTarget = (a: PeerTarget, b: PeerTarget) => a.host === b.host && a.port === b.port;
const sameSet = (a: ReadonlySet<string>, b: ReadonlySet<string>) => a.size === b.size && [...a].every((x) => b.has(x));
