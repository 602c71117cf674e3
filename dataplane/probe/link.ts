// An uplink's interface: whether its link is up, its primary addresses (read with iproute2's JSON
// output), and a watcher that says at once when a link changes (`ip monitor link`).
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

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
