// Uplink health: whether new flows may use an uplink on this node. A pure core decides from probe
// rounds and the interface's carrier (`nextHealth`, `linkHealth`); a thin shell (`HealthMonitor`)
// probes each uplink's targets on a timer, reads its interface through `ip`, watches carrier
// changes with `ip monitor` and reports flips.
//
// Probes leave through their uplink because they carry its source address: the agent installs a
// policy-routing rule `from <address> lookup <uplink table>`, so a probe bound to the uplink's SNAT
// address (or the interface's own primary address) is routed by the uplink's table. The prober
// only has to bind the source address.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { request as httpRequest } from 'node:http';
import { connect, isIP } from 'node:net';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import type { CompiledUplink } from '../contracts/gateway/index.ts';

export type HealthCheck = NonNullable<CompiledUplink['healthCheck']>;

/** What the agent knows about one uplink on this node. */
export interface UplinkHealth {
  healthy: boolean;
  /** When `healthy` last changed (or when the agent first saw the uplink). */
  since: Date;
  /** Whether the interface was up at the last look; assumed up until the first look. */
  linkUp: boolean;
  consecutiveFailures: number;
  consecutiveSuccesses: number;
  /** Mean round-trip time of the answered probes of the last round. */
  latencyMs?: number;
  /** Share of unanswered probes in the last round. */
  lossPercent?: number;
}

/** The outcome of probing every target of an uplink once. */
export interface ProbeRound {
  answered: number;
  sent: number;
  /** Mean round-trip time of the answered probes. */
  meanRttMs?: number;
}

/**
 * The state of an uplink the agent has not looked at yet: healthy, with its link assumed up.
 * Unknown uplinks start healthy so that a restarted agent does not move established flows: they
 * carry their uplink in the conntrack mark, and an unhealthy uplink's flows are moved to others
 * (and nothing at all may be left if every uplink started unhealthy). A link that is down is seen
 * at the first look, within milliseconds; an uplink that is up but broken is taken out after
 * failureThreshold rounds, as it would be had the agent kept running. The renderer treats an uplink
 * missing from its health map the same way.
 */
export function initialHealth(now: Date = new Date()): UplinkHealth {
  return { healthy: true, since: now, linkUp: true, consecutiveFailures: 0, consecutiveSuccesses: 0 };
}

/** Share of unanswered probes; a round that sent nothing proves nothing and counts as all lost. */
export function lossPercent(round: ProbeRound): number {
  return round.sent > 0 ? (100 * (round.sent - Math.min(round.answered, round.sent))) / round.sent : 100;
}

/** Whether a round fails the check: too many unanswered probes, or answers too slow on average. */
export function roundFailed(round: ProbeRound, check: HealthCheck): boolean {
  if (lossPercent(round) > check.maxLossPercent) return true;
  const latency = round.answered > 0 ? round.meanRttMs : undefined;
  return check.maxLatencyMs !== undefined && latency !== undefined && latency > check.maxLatencyMs;
}

/**
 * The state after a probe round. A healthy uplink turns unhealthy after failureThreshold
 * consecutive failed rounds, an unhealthy one healthy after successThreshold consecutive good
 * rounds; anything that flaps faster changes nothing. While the link is down every round fails and
 * the uplink stays unhealthy. Without a check there are no rounds: the uplink follows its link.
 */
export function nextHealth(
  state: UplinkHealth,
  round: ProbeRound,
  check: HealthCheck | undefined,
  now: Date = new Date(),
): UplinkHealth {
  if (!check) return withHealthy(state, state.linkUp, now);
  const failed = !state.linkUp || roundFailed(round, check);
  const consecutiveFailures = failed ? state.consecutiveFailures + 1 : 0;
  const consecutiveSuccesses = failed ? 0 : state.consecutiveSuccesses + 1;
  let healthy = state.healthy;
  if (!state.linkUp) healthy = false;
  else if (healthy && consecutiveFailures >= check.failureThreshold) healthy = false;
  else if (!healthy && consecutiveSuccesses >= check.successThreshold) healthy = true;
  const next: UplinkHealth = {
    healthy: state.healthy,
    since: state.since,
    linkUp: state.linkUp,
    consecutiveFailures,
    consecutiveSuccesses,
    lossPercent: lossPercent(round),
  };
  if (round.answered > 0 && round.meanRttMs !== undefined) next.latencyMs = round.meanRttMs;
  return withHealthy(next, healthy, now);
}

/**
 * The state after a look at the interface. A link that goes down is certain: the uplink is
 * unhealthy at once, without waiting for thresholds. A link that comes back up makes an uplink
 * without a check healthy at once; one with a check must first pass successThreshold rounds.
 */
export function linkHealth(
  state: UplinkHealth,
  up: boolean,
  check: HealthCheck | undefined,
  now: Date = new Date(),
): UplinkHealth {
  if (!up) {
    if (!state.linkUp && !state.healthy) return state;
    return withHealthy({ ...state, linkUp: false, consecutiveSuccesses: 0 }, false, now);
  }
  const healthy = check ? state.healthy : true;
  if (state.linkUp && healthy === state.healthy) return state;
  return withHealthy({ ...state, linkUp: true }, healthy, now);
}

function withHealthy(state: UplinkHealth, healthy: boolean, now: Date): UplinkHealth {
  return healthy === state.healthy ? state : { ...state, healthy, since: now };
}

// ---------------------------------------------------------------------------------------------
// Probing

export interface ProbeRequest {
  protocol: HealthCheck['protocol'];
  target: string;
  /** TCP and HTTP; HTTP uses 80 when it is omitted. */
  port?: number;
  /** HTTP request path; / when omitted. */
  path?: string;
  /** Bound as the probe's source, so the uplink's policy-routing rule sends it out the uplink. */
  sourceAddress: string;
  timeoutMs: number;
  /** Aborting ends the probe at once with ok false. */
  signal?: AbortSignal;
}

export interface ProbeResult {
  ok: boolean;
  rttMs?: number;
  error?: string;
}

export interface Prober {
  probe(request: ProbeRequest): Promise<ProbeResult>;
}

/** The RTT of the first echo reply in iputils ping output (`... time=0.620 ms`). */
export function parsePingRtt(output: string): number | undefined {
  const match = /\btime[=<]\s*([\d.]+)\s*ms/.exec(output);
  return match ? Number(match[1]) : undefined;
}

/**
 * Probes with the programs and sockets of this host: ICMP runs iputils ping (Node has no raw
 * sockets), TCP and HTTP use Node sockets bound to the source address.
 */
export class SystemProber implements Prober {
  readonly pingPath: string;

  constructor(options: { ping?: string } = {}) {
    this.pingPath = options.ping ?? 'ping';
  }

  probe(request: ProbeRequest): Promise<ProbeResult> {
    const family = isIP(request.target);
    if (family !== 4 && family !== 6)
      return Promise.resolve({ ok: false, error: `${request.target} is not an IP address` });
    if (isIP(request.sourceAddress) !== family)
      return Promise.resolve({ ok: false, error: `source ${request.sourceAddress} is not of the target's family` });
    if (request.signal?.aborted) return Promise.resolve({ ok: false, error: 'aborted' });
    switch (request.protocol) {
      case 'ICMP':
        return this.ping(request, family);
      case 'TCP':
        return this.tcp(request, family);
      case 'HTTP':
        return this.http(request, family);
    }
  }

  private ping(request: ProbeRequest, family: 4 | 6): Promise<ProbeResult> {
    // iputils ping takes -W in seconds with a fraction (20221126 here); -W 0 means its default.
    const seconds = Math.max(request.timeoutMs / 1000, 0.001).toFixed(3);
    const args = [`-${family}`, '-n', '-c', '1', '-W', seconds, '-I', request.sourceAddress, request.target];
    return new Promise((resolve) => {
      const started = performance.now();
      const child = spawn(this.pingPath, args, {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, LC_ALL: 'C' },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
      const done = settle(request, resolve, () => child.kill('SIGKILL'), 250);
      child.on('error', (error) => done({ ok: false, error: `ping: ${error.message}` }));
      child.on('close', (code) => {
        // Exit status 0 means a reply came; a reply later than the timeout counts as none.
        const rttMs = parsePingRtt(stdout) ?? performance.now() - started;
        if (code === 0 && rttMs <= request.timeoutMs) done({ ok: true, rttMs });
        else done({ ok: false, error: stderr.trim() || `no echo reply within ${request.timeoutMs}ms` });
      });
    });
  }

  private tcp(request: ProbeRequest, family: 4 | 6): Promise<ProbeResult> {
    return new Promise((resolve) => {
      const started = performance.now();
      const socket = connect({
        host: request.target,
        port: request.port ?? 0,
        localAddress: request.sourceAddress,
        family,
      });
      const done = settle(request, resolve, () => socket.destroy());
      socket.on('connect', () => done({ ok: true, rttMs: performance.now() - started }));
      socket.on('error', (error) => done({ ok: false, error: error.message }));
    });
  }

  private http(request: ProbeRequest, family: 4 | 6): Promise<ProbeResult> {
    return new Promise((resolve) => {
      const started = performance.now();
      const req = httpRequest({
        host: request.target,
        port: request.port ?? 80,
        path: request.path ?? '/',
        method: 'GET',
        localAddress: request.sourceAddress,
        family,
        agent: false,
        headers: { 'user-agent': 'naat-health-check', connection: 'close' },
      });
      const done = settle(request, resolve, () => req.destroy());
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        res.on('error', () => {});
        res.resume();
        if (status >= 200 && status < 400) done({ ok: true, rttMs: performance.now() - started });
        else done({ ok: false, error: `HTTP ${status}` });
      });
      req.on('error', (error) => done({ ok: false, error: error.message }));
      req.end();
    });
  }
}

/**
 * Bounds a probe by its timeout (plus `graceMs` for a program that enforces it itself) and its
 * abort signal; the first result wins and `cleanup` releases the socket or process.
 */
function settle(
  request: ProbeRequest,
  resolve: (result: ProbeResult) => void,
  cleanup: () => void,
  graceMs = 0,
): (result: ProbeResult) => void {
  let settled = false;
  const onAbort = () => done({ ok: false, error: 'aborted' });
  const timer = setTimeout(
    () => done({ ok: false, error: `no answer within ${request.timeoutMs}ms` }),
    request.timeoutMs + graceMs,
  );
  request.signal?.addEventListener('abort', onAbort, { once: true });
  function done(result: ProbeResult) {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    request.signal?.removeEventListener('abort', onAbort);
    cleanup();
    resolve(result);
  }
  return done;
}

// ---------------------------------------------------------------------------------------------
// Interfaces

export interface LinkState {
  exists: boolean;
  /** Whether the interface can carry traffic (see `linkIsUp`). */
  up: boolean;
  /** The kernel's RFC 2863 oper state (UP, DOWN, LOWERLAYERDOWN, UNKNOWN, ...), ABSENT when missing. */
  operState: string;
}

/** An interface's primary addresses: the first global, usable address of each family. */
export interface InterfaceAddresses {
  ipv4?: string;
  ipv6?: string;
}

export interface LinkReader {
  link(name: string, signal?: AbortSignal): Promise<LinkState>;
  addresses(name: string, signal?: AbortSignal): Promise<InterfaceAddresses>;
}

interface IpLinkJson {
  ifname?: string;
  flags?: string[];
  operstate?: string;
  addr_info?: {
    family?: string;
    local?: string;
    scope?: string;
    secondary?: boolean;
    tentative?: boolean;
    dadfailed?: boolean;
    deprecated?: boolean;
  }[];
}

/**
 * Whether an interface is up: oper state UP, or UNKNOWN with the UP and LOWER_UP flags — drivers
 * that do not track oper state (WireGuard, tun, dummy, loopback) always report UNKNOWN.
 */
export function linkIsUp(operState: string, flags: readonly string[]): boolean {
  if (!flags.includes('UP')) return false;
  if (operState === 'UP') return true;
  return operState === 'UNKNOWN' && flags.includes('LOWER_UP') && !flags.includes('NO-CARRIER');
}

/** The state in the output of `ip -j link show dev X`. */
export function parseIpLink(json: string): LinkState {
  const [link] = JSON.parse(json) as IpLinkJson[];
  if (!link) return { exists: false, up: false, operState: 'ABSENT' };
  const operState = link.operstate ?? 'UNKNOWN';
  return { exists: true, up: linkIsUp(operState, link.flags ?? []), operState };
}

/** The primary addresses in the output of `ip -j addr show dev X`. */
export function parseIpAddresses(json: string): InterfaceAddresses {
  const result: InterfaceAddresses = {};
  for (const link of JSON.parse(json) as IpLinkJson[]) {
    for (const a of link.addr_info ?? []) {
      if (!a.local || a.scope !== 'global' || a.secondary || a.tentative || a.dadfailed) continue;
      if (a.family === 'inet' && !result.ipv4) result.ipv4 = a.local;
      if (a.family === 'inet6' && !a.deprecated && !result.ipv6) result.ipv6 = a.local;
    }
  }
  return result;
}

/** Reads interfaces with iproute2's JSON output. */
export class IpLinkReader implements LinkReader {
  readonly ipPath: string;

  constructor(options: { ip?: string } = {}) {
    this.ipPath = options.ip ?? 'ip';
  }

  async link(name: string, signal?: AbortSignal): Promise<LinkState> {
    const output = await this.run(['-j', 'link', 'show', 'dev', name], signal);
    return output === undefined ? { exists: false, up: false, operState: 'ABSENT' } : parseIpLink(output);
  }

  async addresses(name: string, signal?: AbortSignal): Promise<InterfaceAddresses> {
    const output = await this.run(['-j', 'addr', 'show', 'dev', name], signal);
    return output === undefined ? {} : parseIpAddresses(output);
  }

  /** stdout, or undefined when the device does not exist. */
  private run(args: string[], signal?: AbortSignal): Promise<string | undefined> {
    return new Promise((resolve, reject) => {
      execFile(this.ipPath, args, { signal, timeout: 5000 }, (error, stdout, stderr) => {
        if (!error) resolve(stdout);
        else if (/does not exist/.test(stderr)) resolve(undefined);
        else reject(new Error(`ip ${args.join(' ')}: ${stderr.trim() || error.message}`));
      });
    });
  }
}

/** The interface a line of `ip -o monitor link` is about (`2: eth1@if7: <...> ... state DOWN`). */
export function parseMonitorLine(line: string): string | undefined {
  return /^(?:\[[A-Z]+\]\s*)?(?:Deleted\s+)?\d+:\s+([^\s:@]+)(?:@[^\s:]*)?:/.exec(line)?.[1];
}

/** Calls `onLink` with the name of each interface whose link changes, until stopped. */
export type LinkWatcher = (onLink: (name: string) => void, onError: (error: Error) => void) => { stop(): void };

/**
 * Watches link changes with one `ip -o monitor link` child, restarted after `restartMs` if it
 * exits. Changes while it is not running are missed; the monitor's rounds read links anyway.
 */
export function ipMonitorLinks(options: { ip?: string; restartMs?: number } = {}): LinkWatcher {
  return (onLink, onError) => {
    let stopped = false;
    let child: ChildProcess | undefined;
    let restart: NodeJS.Timeout | undefined;
    const run = () => {
      const current = spawn(options.ip ?? 'ip', ['-o', 'monitor', 'link'], { stdio: ['ignore', 'pipe', 'ignore'] });
      child = current;
      let ended = false;
      const end = (why: string) => {
        if (ended) return;
        ended = true;
        child = undefined;
        if (stopped) return;
        onError(new Error(`ip monitor link ${why}; restarting in ${options.restartMs ?? 1000}ms`));
        restart = setTimeout(run, options.restartMs ?? 1000);
      };
      createInterface({ input: current.stdout }).on('line', (line) => {
        const name = parseMonitorLine(line);
        if (name !== undefined) onLink(name);
      });
      current.on('error', (error) => end(`failed: ${error.message}`));
      current.on('close', (code, signal) => end(`exited with ${code ?? signal}`));
    };
    run();
    return {
      stop() {
        stopped = true;
        clearTimeout(restart);
        child?.kill();
      },
    };
  };
}

// ---------------------------------------------------------------------------------------------
// The monitor

export interface HealthMonitorOptions {
  /** The uplinks of this node (the caller leaves out those whose `nodes` exclude it). */
  uplinks: readonly CompiledUplink[];
  prober?: Prober;
  links?: LinkReader;
  /** How carrier changes are noticed between rounds; false to rely on rounds alone. */
  watchLinks?: LinkWatcher | false;
  /** Called when an uplink's `healthy` flips, with its new state. */
  onChange?: (name: string, health: UplinkHealth) => void;
  /**
   * Called when an uplink's interface is seen to go down or up. The kernel deletes the routes
   * through an interface that goes down and does not put them back: the uplink's table must be
   * filled again when it comes up, or its probes never pass.
   */
  onLink?: (name: string, up: boolean) => void;
  /** Called when reading an interface or watching links fails (name undefined for the watcher). */
  onError?: (name: string | undefined, error: Error) => void;
  /** How often an uplink without a health check reads its link besides the watcher; 1000 ms. */
  linkPollMs?: number;
  now?: () => Date;
}

interface Entry {
  uplink: CompiledUplink;
  key: string;
  state: UplinkHealth;
  timer?: NodeJS.Timeout;
  /** Aborted when the entry is replaced, removed or the monitor stops: its results are dropped. */
  abort: AbortController;
  linkSeq: number;
  appliedLinkSeq: number;
  /** Re-reads of the link asked for by the watcher: at most one runs, one more may be pending. */
  watchRead: 'idle' | 'running' | 'again';
}

/**
 * Keeps the health of a node's uplinks from construction until stop(): one timer loop per uplink
 * probes all its targets at once every intervalMs (a round never overlaps the next; a slow round
 * delays it), and a link watcher re-reads an uplink's interface as soon as its link changes.
 * Uplinks start healthy (see initialHealth); onChange reports only flips.
 */
export class HealthMonitor {
  private entries = new Map<string, Entry>();
  private running = false;
  private watcher: { stop(): void } | undefined;
  private readonly prober: Prober;
  private readonly links: LinkReader;
  private readonly watchLinks: LinkWatcher | false;
  private readonly onChange: (name: string, health: UplinkHealth) => void;
  private readonly onLink: (name: string, up: boolean) => void;
  private readonly onError: (name: string | undefined, error: Error) => void;
  private readonly linkPollMs: number;
  private readonly now: () => Date;

  constructor(options: HealthMonitorOptions) {
    this.prober = options.prober ?? new SystemProber();
    this.links = options.links ?? new IpLinkReader();
    this.watchLinks = options.watchLinks ?? ipMonitorLinks();
    this.onChange = options.onChange ?? (() => {});
    this.onLink = options.onLink ?? (() => {});
    this.onError = options.onError ?? (() => {});
    this.linkPollMs = options.linkPollMs ?? 1000;
    this.now = options.now ?? (() => new Date());
    this.update(options.uplinks);
    this.start();
  }

  /** Starts the watcher and the first round of every uplink; the constructor does, and again after stop(). */
  start(): void {
    if (this.running) return;
    this.running = true;
    // Entries retired by an earlier stop() may still have a round in flight: start anew beside it.
    for (const [name, entry] of this.entries)
      if (entry.abort.signal.aborted) this.entries.set(name, newEntry(entry.uplink, entry.key, entry.state));
    if (this.watchLinks)
      this.watcher = this.watchLinks(
        (name) => this.linkEvent(name),
        (error) => this.onError(undefined, error),
      );
    for (const entry of this.entries.values()) this.schedule(entry, 0);
  }

  /** Stops timers, in-flight probes and the watcher's child. */
  stop(): void {
    this.running = false;
    this.watcher?.stop();
    this.watcher = undefined;
    for (const entry of this.entries.values()) retire(entry);
  }

  /**
   * Replaces the set of uplinks. Unchanged ones keep their state and loop; a changed one keeps its
   * healthy flag (so a config edit moves no flows) but restarts its counters and loop.
   */
  update(uplinks: readonly CompiledUplink[]): void {
    const next = new Map<string, Entry>();
    for (const uplink of uplinks) {
      const key = JSON.stringify(uplink);
      const old = this.entries.get(uplink.name);
      if (old && old.key === key) {
        next.set(uplink.name, old);
        continue;
      }
      if (old) retire(old);
      const state = old ? { ...old.state, consecutiveFailures: 0, consecutiveSuccesses: 0 } : initialHealth(this.now());
      const entry = newEntry(uplink, key, state);
      next.set(uplink.name, entry);
      if (this.running) this.schedule(entry, 0);
    }
    for (const [name, old] of this.entries) if (!next.has(name)) retire(old);
    this.entries = next;
  }

  /** The state of every uplink. */
  current(): Map<string, UplinkHealth> {
    return new Map([...this.entries].map(([name, entry]) => [name, { ...entry.state }]));
  }

  private schedule(entry: Entry, delayMs: number): void {
    entry.timer = setTimeout(() => void this.loop(entry), delayMs);
  }

  private async loop(entry: Entry): Promise<void> {
    entry.timer = undefined;
    const started = Date.now();
    try {
      await this.round(entry);
    } catch (error) {
      if (!entry.abort.signal.aborted) this.onError(entry.uplink.name, asError(error));
    }
    if (entry.abort.signal.aborted || !this.running) return;
    const interval = entry.uplink.healthCheck?.intervalMs ?? this.linkPollMs;
    this.schedule(entry, Math.max(0, started + interval - Date.now()));
  }

  private async round(entry: Entry): Promise<void> {
    const { signal } = entry.abort;
    await this.readLink(entry);
    const check = entry.uplink.healthCheck;
    if (!check || signal.aborted) return;
    const round = entry.state.linkUp ? await this.probeAll(entry, check) : { answered: 0, sent: check.targets.length };
    if (signal.aborted) return;
    this.apply(entry, nextHealth(entry.state, round, check, this.now()));
  }

  private async probeAll(entry: Entry, check: HealthCheck): Promise<ProbeRound> {
    const { uplink } = entry;
    const { signal } = entry.abort;
    const snat = uplink.snat.addresses ?? [];
    const source = (family: number) => snat.find((a) => isIP(a) === family);
    const needsInterface = check.targets.some((t) => !source(isIP(t)));
    const own = needsInterface ? await this.links.addresses(uplink.interface, signal) : {};
    const results = await Promise.all(
      check.targets.map(async (target): Promise<ProbeResult> => {
        const family = isIP(target);
        const sourceAddress = source(family) ?? (family === 4 ? own.ipv4 : own.ipv6);
        if (!sourceAddress) return { ok: false, error: `no IPv${family} source address` };
        return bounded(
          this.prober.probe({
            protocol: check.protocol,
            target,
            port: check.port ?? (check.protocol === 'HTTP' ? 80 : undefined),
            path: check.protocol === 'HTTP' ? (check.path ?? '/') : undefined,
            sourceAddress,
            timeoutMs: check.timeoutMs,
            signal,
          }),
          check.timeoutMs + 1000,
        );
      }),
    );
    const rtts = results.filter((r) => r.ok && r.rttMs !== undefined).map((r) => r.rttMs!);
    const round: ProbeRound = { answered: results.filter((r) => r.ok).length, sent: results.length };
    if (rtts.length) round.meanRttMs = rtts.reduce((a, b) => a + b, 0) / rtts.length;
    return round;
  }

  /** Reads the interface and applies what it says, unless a read started later already has. */
  private async readLink(entry: Entry): Promise<void> {
    const seq = ++entry.linkSeq;
    const link = await this.links.link(entry.uplink.interface, entry.abort.signal);
    if (entry.abort.signal.aborted || seq < entry.appliedLinkSeq) return;
    entry.appliedLinkSeq = seq;
    this.apply(entry, linkHealth(entry.state, link.up, entry.uplink.healthCheck, this.now()));
  }

  private linkEvent(name: string): void {
    for (const entry of this.entries.values()) {
      if (entry.uplink.interface !== name) continue;
      if (entry.watchRead !== 'idle') {
        entry.watchRead = 'again';
        continue;
      }
      void this.rereadLink(entry);
    }
  }

  private async rereadLink(entry: Entry): Promise<void> {
    do {
      entry.watchRead = 'running';
      try {
        await this.readLink(entry);
      } catch (error) {
        if (!entry.abort.signal.aborted) this.onError(entry.uplink.name, asError(error));
      }
      // linkEvent may have asked for another read while this one ran.
    } while ((entry.watchRead as Entry['watchRead']) === 'again' && !entry.abort.signal.aborted);
    entry.watchRead = 'idle';
  }

  private apply(entry: Entry, next: UplinkHealth): void {
    const previous = entry.state;
    entry.state = next;
    if (next.linkUp !== previous.linkUp) this.onLink(entry.uplink.name, next.linkUp);
    if (next.healthy !== previous.healthy) this.onChange(entry.uplink.name, { ...next });
  }
}

function newEntry(uplink: CompiledUplink, key: string, state: UplinkHealth): Entry {
  return { uplink, key, state, abort: new AbortController(), linkSeq: 0, appliedLinkSeq: 0, watchRead: 'idle' };
}

function retire(entry: Entry): void {
  clearTimeout(entry.timer);
  entry.timer = undefined;
  entry.abort.abort();
}

/** A prober's answer, or a failure once `ms` have passed without one. */
function bounded(probe: Promise<ProbeResult>, ms: number): Promise<ProbeResult> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<ProbeResult>((resolve) => {
    timer = setTimeout(() => resolve({ ok: false, error: `prober gave no result within ${ms}ms` }), ms);
  });
  const answer = probe.catch((error: unknown) => ({ ok: false, error: asError(error).message }));
  return Promise.race([answer, late]).finally(() => clearTimeout(timer));
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
