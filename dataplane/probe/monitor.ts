// The shell around the health state machine: probes each uplink's targets on a timer, reads its
// interface, watches carrier changes and reports flips.
import { isIP } from 'node:net';
import type { CompiledUplink } from '../../contracts/gateway/index.ts';
import {
  initialHealth,
  linkHealth,
  nextHealth,
  type HealthCheck,
  type ProbeRound,
  type UplinkHealth,
} from './health.ts';
import { ipMonitorLinks, IpLinkReader, type LinkReader, type LinkWatcher } from './link.ts';
import { SystemProber } from './prober.ts';
import type { Prober, ProbeResult } from './protocol.ts';

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
  /**
   * Called with the outcome of each round of an uplink: the error of reading its interface, or
   * undefined when the round went well (name undefined for the link watcher, which only fails).
   */
  onError?: (name: string | undefined, error: Error | undefined) => void;
  /**
   * How often an uplink's link is read besides the watcher's news (each read runs `ip`): 10,000 ms
   * with a watcher, which says at once when a link changes, and 1000 ms without one. A health
   * check's rounds read it no more often than this either.
   */
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
  /** When the link was last read (Date.now()), 0 before the first read. */
  linkReadAt: number;
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
  private readonly onError: (name: string | undefined, error: Error | undefined) => void;
  private readonly linkPollMs: number;
  private readonly now: () => Date;

  constructor(options: HealthMonitorOptions) {
    this.prober = options.prober ?? new SystemProber();
    this.links = options.links ?? new IpLinkReader();
    this.watchLinks = options.watchLinks ?? ipMonitorLinks();
    this.onChange = options.onChange ?? (() => {});
    this.onLink = options.onLink ?? (() => {});
    this.onError = options.onError ?? (() => {});
    this.linkPollMs = options.linkPollMs ?? (this.watchLinks ? 10_000 : 1000);
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
      this.onError(entry.uplink.name, undefined);
    } catch (error) {
      if (!entry.abort.signal.aborted) this.onError(entry.uplink.name, asError(error));
    }
    if (entry.abort.signal.aborted || !this.running) return;
    const interval = entry.uplink.healthCheck?.intervalMs ?? this.linkPollMs;
    this.schedule(entry, Math.max(0, started + interval - Date.now()));
  }

  private async round(entry: Entry): Promise<void> {
    const { signal } = entry.abort;
    const check = entry.uplink.healthCheck;
    // Without a check a round is the link's poll; a check's rounds may come more often.
    if (!check || Date.now() - entry.linkReadAt >= this.linkPollMs) await this.readLink(entry);
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
            ...(check.port !== undefined ? { port: check.port } : {}),
            ...(check.path !== undefined ? { path: check.path } : {}),
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
    entry.linkReadAt = Date.now();
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
  return {
    uplink,
    key,
    state,
    abort: new AbortController(),
    linkSeq: 0,
    appliedLinkSeq: 0,
    linkReadAt: 0,
    watchRead: 'idle',
  };
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
