// The network that end-to-end tests run the gateway in, built from network namespaces:
//
//   pod1 ─┐                 ┌─ isp1 ─┐
//   pod2 ─┼─ gw (up1..upN) ─┼─ isp2 ─┼─ srv (203.0.113.10, 2001:db8:113::10)
//   pod3 ─┘                 └─ isp3 ─┘
//
// gw is the gateway node: it forwards, but has no default route and no route to the server, so
// only the dataplane under test can send pods' traffic out through an uplink. The ISPs know no
// route back to the pod networks, so a packet that leaves with a pod's own address never gets an
// answer, and srv counts such packets so that tests can assert it never saw one.
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { exited } from '../cluster/processes.ts';

export interface DualStack {
  v4: string;
  v6: string;
}

/** The service every ISP routes to, on the server behind them. */
export const server: DualStack = { v4: '203.0.113.10', v6: '2001:db8:113::10' };
/** What pods' addresses come from; the ISPs and the server have no route back to it. */
export const podNetwork: DualStack = { v4: '10.244.0.0/16', v6: 'fd00:244::/32' };
/** Pod `n`'s own address. */
export const podAddress = (n: number): DualStack => ({ v4: `10.244.${n}.2`, v6: `fd00:244:${n}::2` });
/** The gateway's address on pod `n`'s link, which is that pod's default route. */
export const podGateway = (n: number): DualStack => ({ v4: `10.244.${n}.1`, v6: `fd00:244:${n}::1` });
/** The gateway's interface towards pod `n`. */
export const podInterface = (n: number): string => `pod${n}`;
/** The gateway's interface towards ISP `n`. */
export const uplinkInterface = (n: number): string => `up${n}`;
/** The subnet of uplink `n`. */
export const uplinkSubnet = (n: number): DualStack => ({ v4: `100.64.${n}.0/24`, v6: `fd00:64:${n}::/64` });
/** The gateway's own address on uplink `n`. */
export const uplinkAddress = (n: number): DualStack => ({ v4: `100.64.${n}.2`, v6: `fd00:64:${n}::2` });
/** ISP `n`'s address on uplink `n`: the gateway's next hop through that uplink. */
export const uplinkNextHop = (n: number): DualStack => ({ v4: `100.64.${n}.1`, v6: `fd00:64:${n}::1` });
/** ISP `n`'s address on its link to the server. */
export const ispServerSide = (n: number): DualStack => ({ v4: `198.18.${n}.1`, v6: `fd00:198:${n}::1` });
/** The server's address on its link to ISP `n`. */
export const serverSide = (n: number): DualStack => ({ v4: `198.18.${n}.2`, v6: `fd00:198:${n}::2` });

export interface TopologyOptions {
  /** How many pod namespaces; 2 by default. */
  pods?: number;
  /** How many uplinks, each with its own ISP; 3 by default. */
  uplinks?: number;
  /** Starts every namespace name; a fresh random one by default, so that topologies never collide. */
  prefix?: string;
}

export interface ExecOptions {
  /** Written to the program's stdin. */
  input?: string;
  /** Kills the program after this long; 30 s by default. */
  timeoutMs?: number;
}

/** A program that failed: its message names the command and quotes its stderr (or stdout). */
export class ExecError extends Error {
  exitCode: number | null;
  stdout: string;
  stderr: string;

  constructor(argv: string[], exitCode: number | null, stdout: string, stderr: string, reason: string) {
    super(`${argv.join(' ')}: ${stderr.trim() || stdout.trim() || reason}`);
    this.exitCode = exitCode;
    this.stdout = stdout;
    this.stderr = stderr;
  }
}

export interface Degradation {
  /** Added to everything ISP `n` sends towards the gateway. */
  delayMs?: number;
  /** Share of packets towards the gateway that ISP `n` drops at random. */
  lossPercent?: number;
  /** Rate at which ISP `n` sends towards the gateway. */
  rateMbit?: number;
}

export interface Topology {
  /** Starts every namespace name, so that namespaces of another topology are told apart. */
  prefix: string;
  ns: { pods: string[]; gw: string; isps: string[]; srv: string };
  /** Runs a program in a namespace; resolves with its output, rejects with an ExecError. */
  exec(ns: string, argv: string[], options?: ExecOptions): Promise<{ stdout: string; stderr: string }>;
  /** Starts a long-running program in a namespace; destroy() kills it if it is still running. */
  spawn(ns: string, argv: string[], options?: SpawnOptions): ChildProcess;
  /** ISP `n` drops everything it is sent, from either side, while its link stays up. */
  failUplink(n: number): Promise<void>;
  restoreUplink(n: number): Promise<void>;
  /** Makes ISP `n`'s path towards the gateway slow, lossy or narrow; `{}` makes it clean again. */
  degradeUplink(n: number, degradation: Degradation): Promise<void>;
  /** How many packets reached the server with a source address from the pod networks. */
  serverPacketsFromPods(): Promise<number>;
  /** Kills every program started in the namespaces and deletes them; safe to call twice. */
  destroy(): Promise<void>;
}

export async function createTopology(options: TopologyOptions = {}): Promise<Topology> {
  const pods = numbers(options.pods ?? 2);
  const uplinks = numbers(options.uplinks ?? 3);
  const prefix = options.prefix ?? (await unusedPrefix());
  const ns = {
    pods: pods.map((n) => `${prefix}pod${n}`),
    gw: `${prefix}gw`,
    isps: uplinks.map((n) => `${prefix}isp${n}`),
    srv: `${prefix}srv`,
  };
  const all = [...ns.pods, ns.gw, ...ns.isps, ns.srv];
  const pod = (n: number) => ns.pods[n - 1]!;
  const isp = (n: number) => {
    const name = ns.isps[n - 1];
    if (!name) throw new Error(`There is no uplink ${n}`);
    return name;
  };
  const children: ChildProcess[] = [];
  const delays = new Map<number, ChildProcess>();
  const made: string[] = [];
  const spawnIn = (name: string, argv: string[], spawnOptions: SpawnOptions = {}) => {
    const child = spawn('ip', ['netns', 'exec', name, ...argv], spawnOptions);
    children.push(child);
    return child;
  };

  const topology: Topology = {
    prefix,
    ns,
    exec: (name, argv, execOptions) => inNamespace(name, argv, execOptions),
    spawn: spawnIn,
    failUplink: async (n) => {
      await inNamespace(isp(n), ['nft', '-f', '-'], { input: outageRules });
    },
    restoreUplink: async (n) => {
      await inNamespace(isp(n), ['nft', 'delete', 'table', 'inet', 'outage']);
    },
    degradeUplink: async (n, degradation) => {
      const name = isp(n);
      const delayed = delays.get(n);
      if (delayed) {
        delays.delete(n);
        await stopProcess(delayed);
        for (const rule of delayRules('del', uplinkSubnet(n))) await ip(name, rule);
      }
      await inNamespace(name, ['nft', '-f', '-'], { input: 'table inet loss {}\ndelete table inet loss\n' });
      if ((await inNamespace(name, ['tc', 'qdisc', 'show', 'dev', 'gw'])).stdout.includes('tbf')) {
        await inNamespace(name, ['tc', 'qdisc', 'del', 'dev', 'gw', 'root']);
      }
      if (degradation.delayMs) delays.set(n, await delay(name, uplinkSubnet(n), degradation.delayMs, spawnIn));
      if (degradation.lossPercent) {
        await inNamespace(name, ['nft', '-f', '-'], { input: lossRules(degradation.lossPercent) });
      }
      if (degradation.rateMbit) {
        // The bucket holds 10 ms at that rate (tbf needs at least a timer tick's worth to reach
        // it), and the queue 100 ms, as a link's would, so that bulk transfers slow down rather
        // than lose most of their packets.
        const burst = Math.max(Math.ceil((degradation.rateMbit * 1e6) / 8 / 100), 16 * 1024);
        await inNamespace(name, [
          'tc',
          'qdisc',
          'replace',
          'dev',
          'gw',
          'root',
          'tbf',
          'rate',
          `${degradation.rateMbit}mbit`,
          'burst',
          String(burst),
          'latency',
          '100ms',
        ]);
      }
    },
    serverPacketsFromPods: () => countedPackets(ns.srv),
    destroy: async () => {
      await Promise.all(children.splice(0).map(stopProcess));
      await Promise.all(made.splice(0).map(deleteNamespace));
    },
  };

  try {
    for (const name of all) {
      await run(['ip', 'netns', 'add', name]);
      made.push(name);
    }
    await Promise.all(all.map((name) => baseSettings(name, name === ns.gw || ns.isps.includes(name))));
    // Each veth is made with its ends already in their namespaces, so nothing appears in the
    // namespace the tests run in, and names need only be unique within a namespace.
    await ipBatch(ns.gw, [
      ...pods.map((n) => `link add ${podInterface(n)} type veth peer name eth0 netns ${pod(n)}`),
      ...uplinks.map((n) => `link add ${uplinkInterface(n)} type veth peer name gw netns ${isp(n)}`),
    ]);
    await ipBatch(
      ns.srv,
      uplinks.map((n) => `link add isp${n} type veth peer name srv netns ${isp(n)}`),
    );
    // A route through a next hop is accepted only once the next hop's subnet is on a link that
    // is up, so every address goes on before any route.
    await Promise.all([
      ...pods.map((n) => ipBatch(pod(n), link('eth0', podAddress(n)))),
      ipBatch(ns.gw, [
        ...pods.flatMap((n) => link(podInterface(n), podGateway(n))),
        ...uplinks.flatMap((n) => link(uplinkInterface(n), uplinkAddress(n))),
      ]),
      ...uplinks.map((n) => ipBatch(isp(n), [...link('gw', uplinkNextHop(n)), ...link('srv', ispServerSide(n))])),
      ipBatch(ns.srv, [
        `address add ${server.v4}/32 dev lo`,
        `address add ${server.v6}/128 dev lo`,
        ...uplinks.flatMap((n) => link(`isp${n}`, serverSide(n))),
      ]),
    ]);
    await Promise.all([
      ...pods.map((n) => ipBatch(pod(n), routes({ v4: 'default', v6: 'default' }, podGateway(n)))),
      ...uplinks.map((n) => ipBatch(isp(n), routes(server, serverSide(n)))),
      ipBatch(
        ns.srv,
        uplinks.flatMap((n) => routes(uplinkSubnet(n), ispServerSide(n))),
      ),
      inNamespace(ns.srv, ['nft', '-f', '-'], { input: countRules }),
    ]);
    await Promise.all(all.map(linksUp));
    return topology;
  } catch (error) {
    await topology.destroy();
    throw error;
  }
}

/** The sum of the counters of table `inet count` in a namespace (what the server counted). */
export async function countedPackets(ns: string): Promise<number> {
  const { stdout } = await inNamespace(ns, ['nft', '-j', 'list', 'counters', 'table', 'inet', 'count']);
  const listing = JSON.parse(stdout) as { nftables: { counter?: { packets: number } }[] };
  return listing.nftables.reduce((sum, item) => sum + (item.counter?.packets ?? 0), 0);
}

/** Ends a process and waits until it is gone; does nothing if it is not running. */
export async function stopProcess(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = exited(child);
  child.kill('SIGKILL');
  await gone;
}

/**
 * Polls `probe` until it resolves with something other than undefined, and resolves with that; a
 * probe that rejects has not seen it yet. Rejects once `timeoutMs` has passed.
 */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * What failUplink loads into an ISP namespace (`nft -f -`), as table `inet outage`. Dropped before
 * conntrack sees it. Neighbour discovery still passes, as ARP does (nftables' inet family never
 * sees ARP), so that the link looks alive in both families alike and only what crosses the ISP is
 * lost.
 */
export const outageRules = `table inet outage {
  chain prerouting {
    type filter hook prerouting priority raw - 100; policy drop;
    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept
  }
}
`;

// Counted at the first hook, so that a packet counts even if the server would not answer it.
const countRules = `table inet count {
  counter from-pods-v4 {}
  counter from-pods-v6 {}
  chain prerouting {
    type filter hook prerouting priority raw - 100;
    ip saddr ${podNetwork.v4} counter name from-pods-v4
    ip6 saddr ${podNetwork.v6} counter name from-pods-v6
  }
}
`;

// numgen cannot be compared with 100, since it never reaches it.
const lossRules = (percent: number) => `table inet loss {
  chain postrouting {
    type filter hook postrouting priority 0;
    oifname "gw" ${percent < 100 ? `numgen random mod 100 < ${percent} ` : ''}drop
  }
}
`;

// The policy-routing table that sends an ISP's traffic towards the gateway through its delay.
const delayTable = '100';

// This kernel has no netem, so a small program holds the packets: what the ISP sends towards the
// gateway (whatever it forwards from the server, and its own packets to the uplink's subnet) is
// routed into a TUN device, and what the program writes back after the delay comes out of that
// device and is routed on as usual.
async function delay(
  isp: string,
  subnet: DualStack,
  delayMs: number,
  spawnIn: (name: string, argv: string[], options: SpawnOptions) => ChildProcess,
): Promise<ChildProcess> {
  const program = join(programs, 'delay.py');
  const child = spawnIn(isp, ['python3', program, 'delay', String(delayMs)], { stdio: ['ignore', 'pipe', 'pipe'] });
  await new Promise<void>((resolve, reject) => {
    let stderr = '';
    child.stderr!.on('data', (chunk) => (stderr += chunk));
    child.stdout!.once('data', () => resolve());
    child.once('exit', () => reject(new Error(`${program} exited: ${stderr.trim()}`)));
  });
  await ip(isp, ['link', 'set', 'delay', 'up']);
  // What comes back out of the device still carries the ISP's own address when the ISP sent it;
  // without this the kernel would drop it as a martian.
  await inNamespace(isp, ['sysctl', '-q', '-w', 'net.ipv4.conf.delay.accept_local=1']);
  await ip(isp, ['-4', 'route', 'add', 'default', 'dev', 'delay', 'table', delayTable]);
  await ip(isp, ['-6', 'route', 'add', 'default', 'dev', 'delay', 'table', delayTable]);
  for (const rule of delayRules('add', subnet)) await ip(isp, rule);
  return child;
}

function delayRules(action: 'add' | 'del', subnet: DualStack): string[][] {
  return [
    ['-4', 'rule', action, 'iif', 'srv', 'lookup', delayTable],
    ['-6', 'rule', action, 'iif', 'srv', 'lookup', delayTable],
    ['-4', 'rule', action, 'iif', 'lo', 'to', subnet.v4, 'lookup', delayTable],
    ['-6', 'rule', action, 'iif', 'lo', 'to', subnet.v6, 'lookup', delayTable],
  ];
}

const programs = join(dirname(fileURLToPath(import.meta.url)), 'programs');

function numbers(count: number): number[] {
  return Array.from({ length: count }, (_, i) => i + 1);
}

export async function unusedPrefix(): Promise<string> {
  const { stdout } = await run(['ip', 'netns', 'list']);
  for (;;) {
    const prefix = `nt${randomBytes(2).toString('hex')}-`;
    if (!stdout.includes(prefix)) return prefix;
  }
}

// DAD is off so that IPv6 addresses work at once rather than after a second or so. Reverse path
// filtering is off because the gateway's main table has no route back to the server (only the
// dataplane's per-uplink tables do), so the filter would drop every answer. Both are set before
// any interface exists, so that every interface inherits them.
export async function baseSettings(name: string, forwards: boolean): Promise<void> {
  await ip(name, ['link', 'set', 'lo', 'up']);
  await inNamespace(name, [
    'sysctl',
    '-q',
    '-w',
    'net.ipv6.conf.all.accept_dad=0',
    'net.ipv6.conf.default.accept_dad=0',
    'net.ipv4.conf.all.rp_filter=0',
    'net.ipv4.conf.default.rp_filter=0',
    `net.ipv4.ip_forward=${forwards ? 1 : 0}`,
    `net.ipv6.conf.all.forwarding=${forwards ? 1 : 0}`,
  ]);
}

function link(device: string, address: DualStack): string[] {
  return [
    `address add ${address.v4}/24 dev ${device}`,
    `address add ${address.v6}/64 dev ${device}`,
    `link set ${device} up`,
  ];
}

function routes(destination: DualStack, via: DualStack): string[] {
  return [`route add ${destination.v4} via ${via.v4}`, `route add ${destination.v6} via ${via.v6}`];
}

// A veth drops whatever it is given until the kernel has noticed that its carrier is on, which
// can take up to a second after both ends went up.
export async function linksUp(name: string): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const { stdout } = await ip(name, ['-j', 'link', 'show']);
    const links = JSON.parse(stdout) as { ifname: string; operstate: string }[];
    const down = links.filter((l) => l.ifname !== 'lo' && l.operstate !== 'UP').map((l) => l.ifname);
    if (!down.length) return;
    if (Date.now() > deadline) throw new Error(`In ${name}, ${down.join(', ')} did not come up`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function ip(name: string, args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run(['ip', '-n', name, ...args]);
}

export function ipBatch(name: string, lines: string[]): Promise<unknown> {
  return run(['ip', '-n', name, '-batch', '-'], { input: lines.join('\n') + '\n' });
}

export function inNamespace(
  name: string,
  argv: string[],
  options?: ExecOptions,
): Promise<{ stdout: string; stderr: string }> {
  return run(['ip', 'netns', 'exec', name, ...argv], options);
}

export function run(argv: string[], options: ExecOptions = {}): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      argv[0]!,
      argv.slice(1),
      { timeout: options.timeoutMs ?? 30_000, maxBuffer: 1 << 26 },
      (error, stdout, stderr) => {
        if (!error) resolve({ stdout, stderr });
        else
          reject(
            new ExecError(argv, typeof error.code === 'number' ? error.code : null, stdout, stderr, error.message),
          );
      },
    );
    // A program that exits without reading its input fails on its own account, not with EPIPE.
    child.stdin!.on('error', () => {});
    child.stdin!.end(options.input);
  });
}

/** The processes in network namespace `name`; none when it is gone. */
export async function namespacePids(name: string): Promise<number[]> {
  const { stdout } = await run(['ip', 'netns', 'pids', name]).catch(() => ({ stdout: '' }));
  return stdout.split('\n').filter(Boolean).map(Number);
}

/** Sends `signal` to each of `pids` that is still there. */
export function signalAll(pids: readonly number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // Gone already.
    }
  }
}

// A namespace lives on while a process is in it, so whatever still runs there (a server's
// children, say) goes first; those processes were all started by the tests.
export async function deleteNamespace(name: string): Promise<void> {
  signalAll(await namespacePids(name), 'SIGKILL');
  await run(['ip', 'netns', 'delete', name]).catch(() => undefined);
}
