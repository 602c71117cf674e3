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
// Each answer also names the gateway's failover addresses the peer owns now (`addresses`), which
// the monitor keeps per peer: `owners()` says which up peer owns which address, for the node agent
// to route each address's flows to its owner.
//
// With the node's TLS directory (link-tls.ts) each connection is mutual TLS: the peer must show a
// certificate from the CA for the address asked (an IP SAN), and this node shows its own, without
// which the gateway agent does not answer. A peer whose certificate does not verify, or a node
// with no key pair yet, gets no answer: a failed round, and so down.
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP } from 'node:net';
import { canonicalAddress, type TunnelEndpoint } from '../../contracts/gateway/index.ts';
import { rendezvous } from '../../common/index.ts';
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
 * Follows a peer's answers on one connection: calls `onAnswer` with each (ok: the peer takes flows;
 * addresses: the failover addresses it says it owns) as it comes, and resolves, never rejects, once
 * the connection ended, failed or `signal` aborted it. A peer may send one answer and end, or keep
 * sending one every `intervalMs`.
 */
export type PeerWatch = (
  target: PeerTarget,
  intervalMs: number,
  signal: AbortSignal,
  onAnswer: (ok: boolean, addresses?: readonly string[], apiserver?: boolean) => void,
) => Promise<void>;

export interface PeerMonitor {
  start(): void;
  /** Stops the timers and aborts requests in flight; resolves once none is left. */
  stop(): Promise<void>;
  /** The names of the peers that are up. */
  up(): ReadonlySet<string>;
  /** Each failover address an up peer owns (canonical), and that peer's name. */
  owners(): ReadonlyMap<string, string>;
  /**
   * The up peers, and whether each said in its last answer that it reaches the API server (gateway
   * nodes of a gateway with failover addresses follow each other: see failover/ownership.ts).
   */
  apiservers(): ReadonlyMap<string, boolean>;
  /** Called after `up()` or `owners()` changed; a listener must not throw. */
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
 * passes on 200 only. Each answer's `addresses` goes with it. Over mutual TLS with the current version of `tls` when given (none yet: no
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
        let buffered = '';
        res.setEncoding('utf8');
        if (!res.headers['content-type']?.startsWith('application/x-ndjson')) {
          // One small answer: read whole, however it is split.
          res.on('data', (chunk: string) => (buffered = (buffered + chunk).slice(0, maxAnswerLength)));
          return void res.on('end', () => {
            const { addresses, apiserver } = parseAnswer(buffered);
            onAnswer(res.statusCode === 200, addresses, apiserver);
          });
        }
        res.on('data', (chunk: string) => {
          buffered += chunk;
          for (let end = buffered.indexOf('\n'); end >= 0; end = buffered.indexOf('\n')) {
            const { ready, addresses, apiserver } = parseAnswer(buffered.slice(0, end));
            buffered = buffered.slice(end + 1);
            onAnswer(res.statusCode === 200 && ready, addresses, apiserver);
          }
          // A line that never ends is no answer: its bytes are not kept.
          if (buffered.length > maxAnswerLength) buffered = '';
        });
      });
      req.on('error', () => resolve());
      req.end();
    });

/** An answer is a few hundred bytes; 64 failover addresses of IPv6 fit well within this. */
const maxAnswerLength = 16_384;

/**
 * A /steering answer's `ready`, `addresses` (canonical; anything that is not an IP address is left
 * out) and `apiserver` (true only when the answer says so).
 */
export function parseAnswer(text: string): { ready: boolean; addresses: string[]; apiserver: boolean } {
  let answer: { ready?: unknown; addresses?: unknown; apiserver?: unknown };
  try {
    answer = JSON.parse(text) as typeof answer;
  } catch {
    return { ready: false, addresses: [], apiserver: false };
  }
  const listed = Array.isArray(answer?.addresses) ? (answer.addresses as unknown[]) : [];
  const addresses = listed.filter((a): a is string => typeof a === 'string' && isIP(a) !== 0).map(canonicalAddress);
  return { ready: answer?.ready === true, addresses, apiserver: answer?.apiserver === true };
}

/**
 * The owner of each address among the claims of the up peers (peer name → each address its
 * answers list, and since when: -Infinity for one listed in the first answer this node heard from
 * it). An address one peer claims is that peer's. Two up peers claim one address when the owner
 * died or was cut off and another took the address over before this node counted the first one
 * down: a node takes an address over only once its owner has let its Lease lapse, which fences
 * the owner, so the newest claim is the owner's successor and wins, at once. A claimant whose
 * answers stopped (not in `answering`) yields to one that answers. Among claims this node cannot
 * tell apart by age (all seen since its first answers), the owner this node was using stays, so
 * that nothing moves back and forth; when it is none of them, the one rendezvous hashing on the
 * address prefers, the same choice on every node.
 */
export function chooseOwners(
  previous: ReadonlyMap<string, string>,
  claims: ReadonlyMap<string, ReadonlyMap<string, number>>,
  answering: ReadonlySet<string> = new Set(claims.keys()),
): Map<string, string> {
  const claimants = new Map<string, string[]>();
  for (const [node, addresses] of claims) {
    for (const address of addresses.keys()) claimants.set(address, [...(claimants.get(address) ?? []), node]);
  }
  const owners = new Map<string, string>();
  for (const [address, all] of [...claimants].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const live = all.filter((node) => answering.has(node));
    const nodes = all.length > 1 && live.length ? live : all;
    const since = (node: string) => claims.get(node)!.get(address)!;
    const newest = Math.max(...nodes.map(since));
    const latest = nodes.filter((node) => since(node) === newest);
    const kept = previous.get(address);
    owners.set(address, kept !== undefined && latest.includes(kept) ? kept : rendezvous(address, latest)!);
  }
  return owners;
}

interface Entry {
  target: PeerTarget;
  state: UplinkHealth;
  /** The failover addresses the peer's last answer listed, and since when its answers list each (chooseOwners). */
  addresses: ReadonlyMap<string, number>;
  /** Whether its last answer said it reaches the API server. */
  apiserver: boolean;
  /** When its last answer came (ms); undefined before the first. */
  answeredAt?: number;
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
  #owners: ReadonlyMap<string, string> = new Map();
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

  owners(): ReadonlyMap<string, string> {
    return this.#owners;
  }

  apiservers(): ReadonlyMap<string, boolean> {
    return new Map([...this.#entries].filter(([, e]) => e.state.healthy).map(([node, e]) => [node, e.apiserver]));
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
    const ownersBefore = this.#owners;
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
      const entry: Entry = {
        target,
        state,
        addresses: old?.addresses ?? new Map(),
        apiserver: old?.apiserver ?? false,
        ...(old?.answeredAt !== undefined ? { answeredAt: old.answeredAt } : {}),
        abort: new AbortController(),
      };
      next.set(peer.node, entry);
      if (this.#running) this.#schedule(entry, 0);
    }
    for (const [node, old] of this.#entries) if (!next.has(node)) retire(old);
    this.#entries = next;
    this.#owners = this.#chooseOwners();
    if (!sameSet(before, this.up()) || !sameMap(ownersBefore, this.#owners)) this.#notify();
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
    await this.#watch(entry.target, this.#check.intervalMs, connection.signal, (ok, addresses = [], apiserver) => {
      if (connection.signal.aborted) return;
      if (answered) deadline.refresh();
      else {
        clearTimeout(deadline);
        deadline = setTimeout(onLate, this.#check.intervalMs + this.#check.timeoutMs);
      }
      answered = true;
      this.#round(entry, ok, addresses, apiserver);
    });
    clearTimeout(deadline);
    entry.abort.signal.removeEventListener('abort', onRetire);
    entry.inFlight = undefined;
    if (entry.abort.signal.aborted || !this.#running) return;
    if (late || !answered) this.#round(entry, false);
    this.#schedule(entry, late ? 0 : Math.max(0, started + this.#check.intervalMs - Date.now()));
  }

  /**
   * One round: an answer (with the addresses it listed) or a failure (the addresses last heard
   * stay while the peer is still up; a peer that is down owns nothing).
   */
  #round(entry: Entry, ok: boolean, addresses?: readonly string[], apiserver?: boolean): void {
    const was = entry.state.healthy;
    const reached = entry.apiserver;
    entry.state = nextHealth(entry.state, { answered: ok ? 1 : 0, sent: 1 }, this.#check, this.#now());
    const now = this.#now().getTime();
    if (addresses) {
      const since = entry.answeredAt === undefined ? -Infinity : now;
      entry.addresses = new Map(addresses.map((a) => [a, entry.addresses.get(a) ?? since]));
    }
    if (apiserver !== undefined) entry.apiserver = apiserver;
    if (ok) entry.answeredAt = now;
    const owners = this.#chooseOwners();
    const ownersChanged = !sameMap(owners, this.#owners);
    this.#owners = owners;
    if (entry.state.healthy !== was || ownersChanged || entry.apiserver !== reached) this.#notify();
  }

  #chooseOwners(): Map<string, string> {
    const up = [...this.#entries].filter(([, e]) => e.state.healthy);
    // Answering: its last answer is not late (see #follow), though one late answer does not take it down yet.
    const since = this.#now().getTime() - this.#check.intervalMs - this.#check.timeoutMs;
    const answering = new Set(up.filter(([, e]) => (e.answeredAt ?? -Infinity) >= since).map(([node]) => node));
    return chooseOwners(this.#owners, new Map(up.map(([node, e]) => [node, e.addresses])), answering);
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
const sameMap = (a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string>) =>
  a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);
