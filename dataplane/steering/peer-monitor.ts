// Which gateway nodes of one gateway can take this node's flows now: each peer's gateway agent
// answers `GET /steering` with whether it applied its config and has a healthy uplink
// (gateway-readiness.ts). A node agent keeps one monitor per gateway of its NodeConfig and steers
// new flows only to the peers in `up()`.
//
// Each peer is followed on one long-lived connection: the request asks for a stream of answers,
// one every intervalMs (gateway-readiness.ts), so that an idle node agent reads a line per peer
// and interval instead of opening a connection and making a request. An answer that does not
// come in time counts as a failure and the connection is dropped and opened anew, so a peer whose
// agent hangs or whose address is gone is noticed as surely as one that refuses. A gateway agent
// that does not stream answers once and ends: it is then asked once per interval, as a poll. Up
// and down follow the uplink health check's thresholds (probe/health.ts): with the defaults a peer
// is down two failed answers after it broke, 400 to 600 ms when it stops answering, and up again
// at its first good answer.
//
// With the node's TLS directory (link-tls.ts) each connection is mutual TLS: the peer must show a
// certificate from the CA for the address asked (an IP SAN), and this node shows its own, without
// which the gateway agent does not answer. A peer whose certificate does not verify, or a node
// with no key pair yet, gets no answer: a failed round, and so down.
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import type { TunnelEndpoint } from '../../contracts/gateway/index.ts';
import { initialHealth, nextHealth, type HealthCheck, type UplinkHealth } from '../probe/index.ts';
import { secureContextOptions, type TlsMaterial } from '../link-tls.ts';
import { steeringStreamHeader } from './gateway-readiness.ts';

export interface PeerCheck {
  /** How often a peer answers. */
  intervalMs: number;
  /** How late an answer may be (after the connection is opened, or after the interval). */
  timeoutMs: number;
  /** Consecutive failed answers after which an up peer is down. */
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

/**
 * Follows a peer's answers on one connection: calls `onAnswer` with each (true: the peer takes
 * flows) as it comes, and resolves, never rejects, once the connection ended, failed or `signal`
 * aborted it. A peer may send one answer and end, or keep sending one every `intervalMs`.
 */
export type PeerWatch = (
  target: PeerTarget,
  intervalMs: number,
  signal: AbortSignal,
  onAnswer: (ok: boolean) => void,
) => Promise<void>;

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
  watch?: PeerWatch;
  now?: () => Date;
}

export function peerTarget(peer: TunnelEndpoint, port: number): PeerTarget {
  const address = peer.addresses.find((a) => isIP(a) === 4) ?? peer.addresses.find((a) => isIP(a) === 6);
  if (!address) throw new Error(`peer ${peer.node} has no IP address`);
  return { node: peer.node, host: address, family: isIP(address) as 4 | 6, port };
}

/**
 * GET <target>/steering as a stream: in a stream each line's `ready` is an answer; a plain answer
 * passes on 200 only. Over mutual TLS with the current version of `tls` when given (none yet: no
 * answer), else plain HTTP.
 */
export const steeringWatch =
  (tls?: () => TlsMaterial | undefined): PeerWatch =>
  (target, intervalMs, signal, onAnswer) =>
    new Promise((resolve) => {
      const material = tls?.();
      if (tls && !material) return resolve();
      const options = {
        host: target.host,
        port: target.port,
        path: '/steering',
        method: 'GET',
        family: target.family,
        agent: false,
        signal,
        headers: { 'user-agent': 'naat-node', [steeringStreamHeader]: String(intervalMs) },
      };
      const req = material
        ? httpsRequest({ ...options, ...secureContextOptions(material), minVersion: 'TLSv1.2' })
        : httpRequest(options);
      req.on('response', (res) => {
        res.on('error', () => {});
        res.on('close', () => resolve());
        if (!res.headers['content-type']?.startsWith('application/x-ndjson')) {
          res.resume();
          return void res.on('end', () => onAnswer(res.statusCode === 200));
        }
        let buffered = '';
        res.setEncoding('utf8').on('data', (chunk: string) => {
          buffered += chunk;
          for (let end = buffered.indexOf('\n'); end >= 0; end = buffered.indexOf('\n')) {
            const line = buffered.slice(0, end);
            buffered = buffered.slice(end + 1);
            onAnswer(res.statusCode === 200 && isReady(line));
          }
        });
      });
      req.on('error', () => resolve());
      req.end();
    });

function isReady(line: string): boolean {
  try {
    return (JSON.parse(line) as { ready?: unknown }).ready === true;
  } catch {
    return false;
  }
}

interface Entry {
  target: PeerTarget;
  state: UplinkHealth;
  /** The next connection, while none is open. */
  timer?: NodeJS.Timeout;
  /** Aborted when the entry is replaced, removed or the monitor stops: its connection ends and its answers are dropped. */
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
  readonly #watch: PeerWatch;
  readonly #now: () => Date;

  constructor(options: PeerMonitorOptions) {
    const check = { ...defaultPeerCheck, ...options.check };
    // The uplink health check's state machine, with one answer per round: any failure fails it.
    this.#check = { targets: [], protocol: 'HTTP', maxLossPercent: 0, ...check };
    this.#watch = options.watch ?? steeringWatch();
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
      entry.inFlight = this.#follow(entry);
    }, delayMs);
  }

  /**
   * One connection: each answer is a round; an answer later than timeoutMs after the connection was
   * opened, or than intervalMs + timeoutMs after the last answer, is a failed round and ends the
   * connection, and so is a connection that ends without an answer. The next connection opens at
   * once after a late answer, else an interval after this one opened.
   */
  async #follow(entry: Entry): Promise<void> {
    const started = Date.now();
    const connection = new AbortController();
    const onRetire = () => connection.abort();
    entry.abort.signal.addEventListener('abort', onRetire, { once: true });
    let answered = false;
    let late = false;
    const onLate = () => {
      late = true;
      connection.abort();
    };
    let deadline = setTimeout(onLate, this.#check.timeoutMs);
    await this.#watch(entry.target, this.#check.intervalMs, connection.signal, (ok) => {
      if (connection.signal.aborted) return;
      if (answered) deadline.refresh();
      else {
        clearTimeout(deadline);
        deadline = setTimeout(onLate, this.#check.intervalMs + this.#check.timeoutMs);
      }
      answered = true;
      this.#round(entry, ok);
    });
    clearTimeout(deadline);
    entry.abort.signal.removeEventListener('abort', onRetire);
    entry.inFlight = undefined;
    if (entry.abort.signal.aborted || !this.#running) return;
    if (late || !answered) this.#round(entry, false);
    this.#schedule(entry, late ? 0 : Math.max(0, started + this.#check.intervalMs - Date.now()));
  }

  #round(entry: Entry, ok: boolean): void {
    const was = entry.state.healthy;
    entry.state = nextHealth(entry.state, { answered: ok ? 1 : 0, sent: 1 }, this.#check, this.#now());
    if (entry.state.healthy !== was) this.#notify();
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
