// NAA through the real gateway (`npm run bench:naa-gateway`, as root; --quick, --smoke, --json:
// test/bench/harness.ts): a real control plane
// (test/cluster), the e2e topology, the dataplane agent with an `association` block in
// `unassociatedFlows: PodRules` mode, and the real sidecar in the pod namespace, once at its
// default scan interval (200 ms) and once at 50 ms. A client in the pod opens connections one by
// one and records when it called connect() and from which port; the benchmark watches the
// gateway's `flows4` map with `nft monitor` and the agent's association count at `/status`.
// Figures, each against a baseline measured in the same run (a connection never seen makes its
// latency infinite, and the run then does not count):
//  1. connect() → the flow's element in `inet naat flows4` (the association in the kernel), vs
//     connect() → the agent holding the association (its `/status` count, polled): the
//     sidecar→server leg alone, and the scan interval that bounds it.
//  2. The share of flows whose element was in place before their first packet (observe mode: ≈ 0).
//  3. The agent's and the sidecar's RSS, serving this one stream, vs an idle Node process.
//  4. The same connect() → held and → element at 50 ms scans over TLS (the sidecar verifying the
//     agent's certificate, as in a cluster) vs plaintext: the agent is restarted for each.
//  5. The Node driver (docs/naa.md): the same client's connect() → element with the pod driven by
//     the node agent of a worker node (its own namespace, test/bench/driver-node.ts), whose relay
//     carries the stream over TLS, vs the sidecar over TLS at the same (default) scan interval.
//     Goal: no slower, p50 and p99.
//  6. That node agent's RSS driving the association of 1, 10 and 100 pods (each a namespace whose
//     one process holds 100 sockets), each time vs the same agent serving the same pods without
//     driving them, and of 10 pods holding the same 10,000 sockets (1,000 each), which tells what
//     a further pod costs with the sockets unchanged. Goal: ≤ 80 MiB added at 100 pods and 10,000
//     sockets, and flat in pods.
//  7. Its CPU while it drives the most pods and nothing happens, vs the same agent serving them
//     without driving them: just after it started (or began to drive them), and once it ran a
//     while (`Size.warm`) and V8 compiled its hot code. Goal: ≤ 1 % of a core, the whole of it,
//     warmed up.
// Nothing leaves the namespaces the benchmark makes; it stops everything it started, also on failure.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { startCluster, type Cluster } from '../cluster/cluster.ts';
import { NaaGateway } from '../e2e/naa-harness.ts';
import { server, stopProcess, until } from '../e2e/topology.ts';
import { DriverNode, steeringListen, workerNode, type DrivenPod } from './driver-node.ts';
import { percentile, runBenchmark, type Bench, type Goal } from './harness.ts';
import { cpuShare } from './process.ts';

interface Size {
  /** Connections the client opens `spacingMs` apart and holds `holdMs`, per scan interval. */
  connections: number;
  spacingMs: number;
  holdMs: number;
  /** The numbers of node-driven pods the node agent's memory is measured with, ascending. */
  nodePods: number[];
  /** Sockets each of those pods holds (half of them connected to the other half). */
  socketsPerPod: number;
  /**
   * As many pods, fewer than the most of `nodePods`, holding together the same sockets as those:
   * what driving costs a further pod, with the sockets unchanged.
   */
  fewerPods: number;
  /** How long the node agent settles before its memory is read, and its idle CPU is sampled. */
  settleMs: number;
  idleSeconds: number;
  /**
   * When the node agent's idle CPU is sampled again, warmed up (`after` seconds after it started,
   * and after it began to drive the pods, over `over` seconds): for its first minute V8 compiles
   * its hot code in background threads (0.29 % of a core 5–35 s after start, 0.04 % 60–90 s
   * after, at 100 pods). Over a whole period of the node agent's safety net (60 s), which looks at
   * every pod at about the same moment when all began together.
   */
  warm: { after: number; over: number };
}

const pollMs = 10;
const serverPort = 9100;
const node = 'gateway-a';
const namespace = 'naa-bench';
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// Holds every connection open until the client closes it.
const holdServer = `
const net = require('node:net');
net.createServer((s) => s.on('error', () => {})).listen({ host: process.argv[1], port: Number(process.argv[2]), backlog: 4096 }, () => console.log('listening'));
`;

// Opens `count` connections `spacing` ms apart on a fixed schedule, prints "<local port> <ms
// since the epoch just before connect()>" for each, holds them `hold` ms and exits.
const clientProgram = `import socket, sys, time
address, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
count, spacing, hold = int(sys.argv[4]), float(sys.argv[5]) / 1000, float(sys.argv[6]) / 1000
held = []
start = time.time() + 0.1
for i in range(count):
    delay = start + i * spacing - time.time()
    if delay > 0:
        time.sleep(delay)
    s = socket.socket()
    s.bind((source, 0))
    local = s.getsockname()[1]
    at = time.time() * 1000
    s.connect((address, port))
    print(local, '%.3f' % at, flush=True)
    held.append(s)
print('done', flush=True)
time.sleep(hold)
`;

// Polls the agent's /status and prints "<associations> <previous poll's start> <this poll's end>"
// whenever the count changes: the change happened between those two moments. The count grows the
// moment the NAA server hands an association to the agent, before the agent syncs the kernel;
// /flows would show it only once conntrack's event for the flow had arrived too, and would
// serialise every flow on each poll.
const statusPoller = `
const http = require('node:http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const period = Number(process.argv[1]);
const now = () => performance.timeOrigin + performance.now();
const get = () => new Promise((resolve, reject) => {
  const req = http.request({ host: '127.0.0.1', port: 7741, path: '/status', agent }, (res) => {
    let body = '';
    res.setEncoding('utf8');
    res.on('data', (d) => (body += d));
    res.on('end', () => resolve(JSON.parse(body)));
  });
  req.on('error', reject);
  req.end();
});
(async () => {
  let last = -1;
  let previous = now();
  for (;;) {
    const started = now();
    const report = await get().catch(() => undefined);
    const ended = now();
    if (report && report.associations !== last) {
      last = report.associations;
      console.log(last + ' ' + previous.toFixed(3) + ' ' + ended.toFixed(3));
    }
    previous = started;
    const wait = started + period - now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
})();
`;

// Holds `count` connections to a listener of its own at the pod's address: 2 × count sockets, and
// no packet leaves the pod's namespace.
const socketHolder = `import socket, sys, time
address, count = sys.argv[1], int(sys.argv[2])
listener = socket.socket()
listener.bind((address, 9000))
listener.listen(count)
held = []
for _ in range(count):
    held.append(socket.create_connection((address, 9000)))
    held.append(listener.accept()[0])
print('ready', flush=True)
time.sleep(3600)
`;

const logs = [
  'agent.log',
  'sidecar-default.log',
  'sidecar-50ms.log',
  'sidecar-50ms-tls.log',
  'sidecar-default-tls.log',
  'node-agent.log',
];

interface Connected {
  port: number;
  at: number;
}

interface RunResult {
  label: string;
  connected: Connected[];
  kernel: number[];
  missing: number;
  early: number;
  accepted: { upper: number[]; lower: number[]; missing: number };
  /** Per flow, from the association held by the agent to its element in the kernel: bounds. */
  agentLeg: { upper: number[]; lower: number[] };
  /** Time between the agent's count changes while connections were being opened: the scan period. */
  deliveries: number[];
  syncs: { count: number; full: number; durations: number[] };
  rss: { agent: number; driver: number };
}

/** A run's driver of the pod's association: a sidecar, or the worker's node agent. */
interface DriverRun {
  /** Its process, whose memory is read. */
  process: ChildProcess;
  stop(): Promise<void>;
}

let cluster: Cluster | undefined;
let gateway: NaaGateway | undefined;
let worker: DriverNode | undefined;
const hostChildren: ChildProcess[] = [];
let cleaning: Promise<void> | undefined;

function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    const step = async (what: string, work: () => Promise<unknown>) =>
      work().catch((error: Error) => console.error(`cleanup: ${what}: ${error.message}`));
    for (const child of hostChildren.reverse()) await step('a host process', () => stopProcess(child));
    await step('the worker node', async () => worker?.stop());
    await step('the gateway', async () => gateway?.stop());
    await step('the control plane', async () => cluster?.stop());
  })();
  return cleaning;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void cleanup().then(() => process.exit(130)));
}

/**
 * A program in a namespace whose stdout lines go to `onLine`, timestamped as they arrive; its
 * stderr is passed on but for lines that `quiet` matches.
 */
function spawnLines(
  ns: string,
  argv: string[],
  onLine: (line: string, at: number) => void,
  quiet?: RegExp,
  stdin: 'ignore' | 'pipe' = 'ignore',
): ChildProcess {
  const child = gateway!.topology.spawn(ns, argv, { stdio: [stdin, 'pipe', 'pipe'] });
  createInterface({ input: child.stdout! }).on('line', (line) => onLine(line, now()));
  createInterface({ input: child.stderr! }).on('line', (line) => {
    if (!quiet?.test(line)) console.error(line);
  });
  return child;
}

/** The NAA streams the gateway agent accepted so far. */
const acceptedStreams = async () => (await gateway!.log('agent.log')).split('Accepted NAA stream').length - 1;

interface NodeMemory {
  pods: number;
  sockets: number;
  base: number;
  driving: number;
  heap: { base: Record<string, number>; driving: Record<string, number> };
}

interface NodeCost {
  /**
   * The node agent's VmRSS (MiB) serving `pods` without driving them, then driving them, and its
   * heap spaces in use and memory outside the heap (MiB, `heapOf`) at each.
   */
  memory: NodeMemory[];
  /** The same, for the most pods' sockets held by `Size.fewerPods` pods. */
  sameSockets: NodeMemory;
  /**
   * The share of a core it used, idle, serving the most pods without driving them, then driving
   * them: just after it started (or started driving them), and warmed up (`Size.warm`).
   */
  idleCpu: Record<'serving' | 'driving', { started: number; warm: number }>;
}

/** A node-driven pod on the worker, in a namespace of its own, whose one process holds `connections`. */
async function servedPod(worker: DriverNode, i: number, connections: number): Promise<DrivenPod> {
  const pod = await worker.addPod(`served-${i}`);
  const ns = await worker.podNamespace(pod);
  const log = `holder-${i}.log`;
  worker.spawnInPod(pod, ns, ['python3', '-c', socketHolder, pod.ip, String(connections)], log);
  await until(`the sockets of pod ${pod.name}`, async () =>
    (await gateway!.log(log)).includes('ready') ? true : undefined,
  );
  return pod;
}

/**
 * For each number of served pods, a fresh node agent on the worker: its memory serving them
 * without driving their association (the baseline), then once the same agent drives them and the
 * gateway holds all their associations; and, at the most pods, its CPU while nothing happens.
 * Then, for the CPU warmed up, one more fresh agent serving the most pods and then driving them,
 * each sampled once it ran `Size.warm.after` (the memory figures stay those of a young agent, as
 * before that sample was taken).
 */
async function measureNodeCost(worker: DriverNode, size: Size, progress: (line: string) => void): Promise<NodeCost> {
  const most = size.nodePods.at(-1)!;
  const connections = size.socketsPerPod / 2;
  const fewerConnections = (most * connections) / size.fewerPods;
  progress(
    `Making ${most} node-driven pods of ${size.socketsPerPod} sockets each, and ${size.fewerPods} of ${2 * fewerConnections}`,
  );
  /** Pods of `each` connections, ten at a time: the control plane gives each its address. */
  const make = async (first: number, count: number, each: number) => {
    const made: DrivenPod[] = [];
    for (let i = 0; i < count; i += 10) {
      const batch = Array.from({ length: Math.min(10, count - i) }, (_, j) => servedPod(worker, first + i + j, each));
      // Every one settled before a failure stops the run: what each made is then on the worker's list to remove.
      const settled = await Promise.allSettled(batch);
      for (const result of settled) if (result.status === 'rejected') throw result.reason;
      made.push(...settled.map((result) => (result as PromiseFulfilledResult<DrivenPod>).value));
    }
    return made;
  };
  const pods = await make(0, most, connections);
  const fewer = await make(most, size.fewerPods, fewerConnections);
  /** Starts a fresh agent serving `served`, none node-driven. */
  const serve = async (served: DrivenPod[]) => {
    await worker.writeConfig(served, false);
    return worker.startAgent();
  };
  /** Has the agent drive `driven`, of `each` connections; resolves once the gateway holds all their associations. */
  const drive = async (driven: DrivenPod[], each: number) => {
    const streams = await acceptedStreams();
    await worker.writeConfig(driven, true);
    await until(
      `${driven.length} node-driven streams`,
      async () => ((await acceptedStreams()) >= streams + driven.length ? true : undefined),
      60_000,
    );
    // Each pod's connecting sockets at least.
    await until(
      `the associations of ${driven.length} pods`,
      async () =>
        (await gateway!.agentGet<AgentReport>('/status')).associations >= driven.length * each ? true : undefined,
      60_000,
    );
  };
  const idleCpu: NodeCost['idleCpu'] = {
    serving: { started: NaN, warm: NaN },
    driving: { started: NaN, warm: NaN },
  };
  /** A fresh agent's memory serving `served`, then driving them; at the most pods, its idle CPU too. */
  const measure = async (served: DrivenPod[], each: number): Promise<NodeMemory> => {
    progress(`The node agent serving ${served.length} pods of ${2 * each} sockets, then driving them`);
    const sampleCpu = served.length === most && each === connections;
    const agent = await serve(served);
    await sleep(size.settleMs);
    const base = await rssOf(agent.pid!, 'main.ts');
    const baseHeap = await heapOf(worker);
    if (sampleCpu) idleCpu.serving.started = await cpuShare(agent.pid!, size.idleSeconds);
    await drive(served, each);
    await sleep(size.settleMs);
    const driving = await rssOf(agent.pid!, 'main.ts');
    const heap = { base: baseHeap, driving: await heapOf(worker) };
    if (sampleCpu) idleCpu.driving.started = await cpuShare(agent.pid!, size.idleSeconds);
    await worker.stopAgent();
    return { pods: served.length, sockets: served.length * 2 * each, base, driving, heap };
  };
  const memory: NodeMemory[] = [];
  for (const count of size.nodePods) memory.push(await measure(pods.slice(0, count), connections));
  const sameSockets = await measure(fewer, fewerConnections);
  progress(
    `The node agent serving ${most} pods, then driving them, each for ${size.warm.after} s before its CPU is sampled`,
  );
  const agent = await serve(pods);
  await sleep(size.warm.after * 1000);
  idleCpu.serving.warm = await cpuShare(agent.pid!, size.warm.over);
  await drive(pods, connections);
  await sleep(size.warm.after * 1000);
  idleCpu.driving.warm = await cpuShare(agent.pid!, size.warm.over);
  await worker.stopAgent();
  return { memory, sameSockets, idleCpu };
}

/**
 * The worker's node agent's V8 heap spaces in use and its memory outside the heap, in MiB by name
 * (`old`, `new`, `code`, …, `external`), from its /metrics (prom-client's nodejs_heap_space_* and
 * nodejs_external_memory_bytes): where its RSS goes.
 */
async function heapOf(worker: DriverNode): Promise<Record<string, number>> {
  const { stdout } = await gateway!.topology.exec(worker.ns, ['curl', '-sf', 'http://127.0.0.1:7742/metrics']);
  const mib: Record<string, number> = {};
  for (const [, space, bytes] of stdout.matchAll(/^nodejs_heap_space_size_used_bytes\{space="(\w+)"[^}]*\} (\S+)$/gm)) {
    mib[space!] = Number(bytes) / 2 ** 20;
  }
  const external = /^nodejs_external_memory_bytes(?:\{[^}]*\})? (\S+)$/m.exec(stdout)?.[1];
  if (external !== undefined) mib.external = Number(external) / 2 ** 20;
  return mib;
}

/** VmRSS in MiB of a child that `ip netns exec` started (it execs, so the pid is the program's). */
async function rssOf(pid: number, expected: string): Promise<number> {
  const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  if (!cmdline.some((arg) => arg.endsWith(expected))) throw new Error(`pid ${pid} is ${cmdline.join(' ')}`);
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]) / 1024;
}

const signed = (value: number) => `${value < 0 ? '' : '+'}${value.toFixed(1)}`;
const ms = (value: number) => (Number.isFinite(value) ? `${value.toFixed(value < 10 ? 1 : 0)} ms` : '—');
const spread = (values: number[]) =>
  `p50 ${ms(percentile(values, 0.5))}  p90 ${ms(percentile(values, 0.9))}  p99 ${ms(percentile(values, 0.99))}  max ${ms(Math.max(...values))}`;

async function main(bench: Bench, size: Size): Promise<void> {
  const { connections, spacingMs, holdMs } = size;
  const progress = (line: string) => process.stderr.write(`  ${line}\n`);
  cluster = await startCluster({
    workloads: true,
    nodes: [{ name: node, labels: { 'naat.dev/gateway': 'true' } }, { name: workerNode }],
    progress,
  });
  gateway = new NaaGateway({
    kubeconfig: cluster.kubeconfig,
    namespace,
    node,
    uplinks: 1,
    // The baseline runs first; the TLS run restarts the agent with its --tls-dir.
    plaintext: true,
    unassociatedFlows: 'PodRules',
    // The worker's node agent asks the agent's /steering there.
    agentArgs: ['--metrics-listen', steeringListen],
    // Each sync's "Synced the kernel" line (debug) times the agent's leg.
    agentEnv: { NAAT_LOG_LEVEL: 'debug' },
    // Only associations whose application a rule names become elements of the flow maps.
    rules: (podIp) => [
      {
        policy: `${namespace}/apps`,
        rule: 'python-allowed',
        priority: 1,
        sources: [podIp],
        applications: [{ processName: 'python3' }],
        action: 'Allow',
      },
    ],
  });
  await gateway.start();
  const { topology: t, pod, dir } = gateway;
  progress(`Created pod ${namespace}/app with address ${pod.ip}`);
  await writeFile(join(dir, 'client.py'), clientProgram);
  const listening = spawnLines(t.ns.srv, [process.execPath, '-e', holdServer, server.v4, String(serverPort)], () => {});
  await new Promise((resolve) => listening.stdout!.once('data', resolve));
  await sleep(1000);
  const agentIdleRss = await rssOf(gateway.agent.pid!, 'main.ts');

  // Every element added to flows4, timestamped as the event reaches this process.
  const added: Array<{ address: string; port: number; at: number }> = [];
  spawnLines(
    t.ns.gw,
    ['nft', 'monitor', 'elements'],
    (line, at) => {
      const match = /^add element inet naat flows4 \{ (.*) \}$/.exec(line);
      if (!match) return;
      for (const element of match[1]!.split(', ')) {
        const parts = /^(\S+) \. tcp \. (\d+) :/.exec(element);
        if (parts) added.push({ address: parts[1]!, port: Number(parts[2]), at });
      }
      // A full sync re-creates the rules' anonymous sets, which the monitor's cache never saw.
    },
    /^W: (Unable to cache set_elem\. Set not found|Received event for an unknown set)\.$/,
  );
  await sleep(500);

  const sidecar = (label: string, scanIntervalMs: number | undefined) => async (): Promise<DriverRun> => {
    const process = await gateway!.startSidecar({ log: `sidecar-${label}.log`, scanIntervalMs });
    return { process, stop: () => stopProcess(process) };
  };
  /** `adopt` makes the client one of the pod's processes: the node agent tells them by their cgroup. */
  const run = async (
    label: string,
    startDriver: () => Promise<DriverRun>,
    adopt?: (pid: number) => void,
  ): Promise<RunResult> => {
    const connected: Connected[] = [];
    let rss: RunResult['rss'] | undefined;
    // The client waits in the pod for its go, so that it is in place (in the pod's cgroup, with
    // `adopt`) before the driver starts: the node agent reads a process's cgroup when it first sees
    // it, and exec keeps the pid.
    const client = spawnLines(
      pod.netns,
      ['sh', '-c', 'read go && exec "$@"', 'client', 'python3', join(dir, 'client.py'), server.v4].concat([
        String(serverPort),
        pod.ip,
        String(connections),
        String(spacingMs),
        String(holdMs),
      ]),
      (line) => {
        if (line === 'done') {
          // Measured while the stream holds every association of the run.
          setTimeout(() => {
            // The agent of now: the TLS run restarts it.
            Promise.all([rssOf(gateway!.agent.pid!, 'main.ts'), rssOf(driver.process.pid!, 'main.ts')])
              .then(([a, d]) => (rss = { agent: a, driver: d }))
              .catch((error: Error) => console.error(`could not read RSS: ${error.message}`));
          }, holdMs / 2);
          return;
        }
        const [port, at] = line.split(' ').map(Number);
        connected.push({ port: port!, at: at! });
      },
      undefined,
      'pipe',
    );
    adopt?.(client.pid!);
    const exited = new Promise<number | null>((resolve) => client.once('exit', resolve));
    const driver = await startDriver();
    await sleep(1000);

    const counts: Array<{ count: number; after: number; before: number }> = [];
    const poller = spawnLines(t.ns.gw, [process.execPath, '-e', statusPoller, String(pollMs)], (line) => {
      const [count, after, before] = line.split(' ').map(Number);
      counts.push({ count: count!, after: after!, before: before! });
    });
    await until('the first /status poll', async () => (counts.length ? true : undefined));
    const base = counts.at(-1)!.count;
    const startedAt = now();
    added.length = 0;

    client.stdin!.end('go\n');
    const code = await exited;
    if (code !== 0) throw new Error(`the client exited with ${code}`);
    await stopProcess(poller);
    const endedAt = now();

    const first = new Map<number, number>();
    for (const event of added) if (event.address === pod.ip && !first.has(event.port)) first.set(event.port, event.at);
    const kernel: number[] = [];
    let early = 0;
    for (const c of connected) {
      const at = first.get(c.port);
      if (at === undefined) continue;
      kernel.push(at - c.at);
      if (at < c.at) early++;
    }
    // Scans see every socket that exists when they run, so the agent takes associations in the
    // order of connect(): the k-th connection is in once the count has grown by k.
    const upper: number[] = [];
    const lower: number[] = [];
    const agentLeg: RunResult['agentLeg'] = { upper: [], lower: [] };
    connected.forEach((c, i) => {
      const seen = counts.find((entry) => entry.count - base >= i + 1);
      if (!seen) return;
      upper.push(seen.before - c.at);
      lower.push(seen.after - c.at);
      const at = first.get(c.port);
      if (at === undefined) return;
      agentLeg.upper.push(at - seen.after);
      agentLeg.lower.push(at - seen.before);
    });
    const during = counts.filter((e) => e.count > base && e.before <= connected.at(-1)!.at + 1);
    const deliveries = during.slice(1).map((e, i) => e.before - during[i]!.before);
    const syncs = (await gateway!.log('agent.log'))
      .split('\n')
      .filter((line) => line.includes('"Synced the kernel"'))
      .map((line) => JSON.parse(line) as { ts: string; full: boolean; durationMs: number })
      .filter((entry) => {
        const at = Date.parse(entry.ts);
        return at >= startedAt && at <= endedAt;
      });

    // The next run starts from an empty map: the driver reports the closed sockets gone.
    await until(
      'the flow elements to go',
      async () => {
        const { stdout } = await t.exec(t.ns.gw, ['nft', 'list', 'map', 'inet', 'naat', 'flows4']);
        return stdout.includes(pod.ip) ? undefined : true;
      },
      15_000,
    );
    await driver.stop();
    if (!rss) throw new Error('RSS was not measured');
    return {
      label,
      connected,
      kernel,
      missing: connected.length - kernel.length,
      early,
      accepted: { upper, lower, missing: connected.length - upper.length },
      agentLeg,
      deliveries,
      syncs: {
        count: syncs.length,
        full: syncs.filter((s) => s.full).length,
        durations: syncs.map((s) => s.durationMs),
      },
      rss,
    };
  };

  const results: Array<RunResult & { interval: number }> = [];
  for (const interval of [undefined, 50]) {
    progress(`Measuring with the sidecar's scan interval at ${interval ?? 'its default'}`);
    const label = interval ? `${interval}ms` : 'default';
    results.push({ ...(await run(label, sidecar(label, interval))), interval: interval ?? 200 });
  }
  progress('Measuring over TLS, with the scan interval at 50 ms');
  gateway.plaintext = false;
  await gateway.restartAgent();
  const tls = await run('50ms-tls', sidecar('50ms-tls', 50));

  // The Node driver scans at the sidecar's default interval, and its node agent's streams are
  // always over TLS: the same client, from the same addresses, through the same gateway.
  progress("Measuring over TLS at the sidecar's default scan interval, and with the Node driver");
  const tlsDefault = await run('default-tls', sidecar('default-tls', undefined));
  worker = new DriverNode(gateway);
  await worker.start();
  const appNode = await worker.addPod('app-node', pod.ip);
  const nodeRun = await run(
    'node',
    async () => {
      await worker!.writeConfig([appNode], true);
      const streams = await acceptedStreams();
      const agent = await worker!.startAgent();
      await until('the node-driven stream', async () => ((await acceptedStreams()) > streams ? true : undefined));
      return { process: agent, stop: () => worker!.stopAgent() };
    },
    (pid) => appNode.container.place(pid),
  );
  const nodeCost = await measureNodeCost(worker, size, progress);

  const idle = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60_000)'], { stdio: 'ignore' });
  hostChildren.push(idle);
  await sleep(1000);
  const idleRss = await rssOf(idle.pid!, '-e').catch(() => rssOf(idle.pid!, '60_000)'));
  await stopProcess(idle);

  bench.section(
    `NAA through the gateway: agent in PodRules mode, one pod, ${connections} connections ${spacingMs} ms apart, held ${holdMs / 1000} s`,
  );
  const latency = (key: string, label: string, q: number, values: number[], baseline?: string, note?: string) =>
    bench.figure({
      key: `${key}.p${q * 100}`,
      label: `${label}, p${q * 100}`,
      value: percentile(values, q),
      unit: 'ms',
      ...(baseline ? { baseline: `${baseline}.p${q * 100}` } : {}),
      ...(note ? { note } : {}),
    });
  const never = (values: number[], missing: number) => [...values, ...Array<number>(missing).fill(Infinity)];
  for (const r of results) {
    const p = r.label === 'default' ? 'scan-default' : 'scan-50ms';
    const period = percentile(r.deliveries, 0.5);
    const n = r.connected.length;
    bench.section(`sidecar scan interval ${r.interval} ms${r.label === 'default' ? ' (its default)' : ''}:`);
    bench.figure({
      key: `${p}.delivery-period`,
      label: "time between the agent's new associations, p50 (interval + scan)",
      value: period,
      unit: 'ms',
      note: `a socket waits ${ms(period / 2)} on average for its scan  (bound)`,
    });
    const held = never(r.accepted.upper, r.accepted.missing);
    const heldNote = `(/status every ${pollMs} ms, upper bound${r.accepted.missing ? `; ${r.accepted.missing} never seen` : ''})`;
    const kernel = never(r.kernel, r.missing);
    const kernelNote = r.missing ? `(${r.missing} never appeared)` : '';
    for (const q of [0.5, 0.99]) {
      latency(
        `${p}.connect-to-held`,
        'connect() → association held by the agent (baseline)',
        q,
        held,
        undefined,
        heldNote,
      );
    }
    bench.note(
      `connect() → association held, all: ${spread(r.accepted.upper)}; lower bound ${spread(r.accepted.lower)}`,
    );
    for (const q of [0.5, 0.99]) {
      latency(
        `${p}.connect-to-kernel`,
        'connect() → element in inet naat flows4',
        q,
        kernel,
        `${p}.connect-to-held`,
        kernelNote,
      );
    }
    bench.note(`connect() → element, all: ${spread(r.kernel)}`);
    bench.note(
      `held → element, per flow (agent's leg): p50 between ${ms(percentile(r.agentLeg.lower, 0.5))} and ${ms(percentile(r.agentLeg.upper, 0.5))}, p99 between ${ms(percentile(r.agentLeg.lower, 0.99))} and ${ms(percentile(r.agentLeg.upper, 0.99))}`,
    );
    bench.figure({
      key: `${p}.syncs`,
      label: 'kernel syncs during the run',
      value: r.syncs.count,
      unit: 'syncs',
      digits: 0,
      note: `${r.syncs.full} full, each p50 ${ms(percentile(r.syncs.durations, 0.5))}, max ${ms(Math.max(...r.syncs.durations))}`,
    });
    bench.figure({
      key: `${p}.early`,
      label: "elements in place before the flow's first packet",
      value: (100 * r.early) / n,
      unit: '%',
      digits: 1,
      note: `${r.early} of ${n}; observe mode reports sockets after connect()`,
    });
  }
  bench.section('memory (VmRSS):');
  const memory = (key: string, label: string, mib: number) =>
    bench.figure({
      key,
      label,
      value: mib,
      unit: 'MiB',
      digits: 0,
      ...(key === 'memory.idle-node' ? {} : { baseline: 'memory.idle-node' }),
    });
  memory('memory.idle-node', 'idle Node process (baseline)', idleRss);
  memory('memory.agent-idle', 'agent, NAA server listening, no stream yet', agentIdleRss);
  for (const r of results) {
    const p = r.label === 'default' ? 'scan-default' : 'scan-50ms';
    memory(
      `memory.${p}.agent`,
      `agent, one stream holding ${connections} associations (${r.interval} ms scans)`,
      r.rss.agent,
    );
    memory(`memory.${p}.sidecar`, `sidecar, scanning every ${r.interval} ms`, r.rss.driver);
  }
  bench.section('over TLS (50 ms scans), against the same in plaintext:');
  for (const q of [0.5, 0.99]) {
    latency(
      'tls.connect-to-held',
      'connect() → association held by the agent, TLS',
      q,
      never(tls.accepted.upper, tls.accepted.missing),
      'scan-50ms.connect-to-held',
    );
  }
  for (const q of [0.5, 0.99]) {
    latency(
      'tls.connect-to-kernel',
      'connect() → element in inet naat flows4, TLS',
      q,
      never(tls.kernel, tls.missing),
      'scan-50ms.connect-to-kernel',
    );
  }
  memory('memory.tls.agent', `agent, one TLS stream holding ${connections} associations`, tls.rss.agent);
  memory('memory.tls.sidecar', 'sidecar over TLS, scanning every 50 ms', tls.rss.driver);
  bench.section(
    "the Node driver (the worker's node agent, through its relay, over TLS) against the sidecar over TLS, both scanning every 200 ms:",
  );
  const goal = (value: number, of?: string): Goal => ({
    bound: 'max',
    value,
    ...(of ? { of } : {}),
    source: 'Node mode cost (docs/naa.md)',
  });
  for (const q of [0.5, 0.99]) {
    latency(
      'node-driver.sidecar.connect-to-kernel',
      'connect() → element in inet naat flows4, sidecar (baseline)',
      q,
      never(tlsDefault.kernel, tlsDefault.missing),
    );
  }
  for (const q of [0.5, 0.99]) {
    const key = `node-driver.connect-to-kernel.p${q * 100}`;
    const baseline = `node-driver.sidecar.connect-to-kernel.p${q * 100}`;
    bench.figure({
      key,
      label: `connect() → element in inet naat flows4, Node driver, p${q * 100}`,
      value: percentile(never(nodeRun.kernel, nodeRun.missing), q),
      unit: 'ms',
      baseline,
      goal: goal(1, baseline),
      ...(nodeRun.missing ? { note: `(${nodeRun.missing} never appeared)` } : {}),
    });
  }
  bench.note(`connect() → element, all: sidecar ${spread(tlsDefault.kernel)}; Node driver ${spread(nodeRun.kernel)}`);
  bench.section(
    `the node agent's memory (VmRSS), serving pods of ${size.socketsPerPod} sockets each, then driving their association:`,
  );
  const addedBy = (m: NodeCost['memory'][number]) => m.driving - m.base;
  for (const m of nodeCost.memory) {
    const base = `node-driver.memory.${m.pods}-pods.base`;
    bench.figure({
      key: base,
      label: `node agent serving ${m.pods} pods, none node-driven (baseline)`,
      value: m.base,
      unit: 'MiB',
      digits: 1,
    });
    bench.figure({
      key: `node-driver.memory.${m.pods}-pods.added`,
      label: `added by driving them (${m.sockets} sockets)`,
      value: addedBy(m),
      unit: 'MiB',
      digits: 1,
      goal: goal(80),
      note: `${m.driving.toFixed(1)} MiB in all`,
    });
    // The spaces that moved by at least 0.1 MiB: most of V8's dozen stay empty.
    const spaces = Object.keys(m.heap.driving).filter(
      (space) => space in m.heap.base && Math.abs(m.heap.driving[space]! - m.heap.base[space]!) >= 0.1,
    );
    bench.note(
      `  in use, driving against serving: ${spaces
        .map((space) => `${space} ${signed(m.heap.driving[space]! - m.heap.base[space]!)}`)
        .join(', ')} MiB`,
    );
  }
  const [fewest, most] = [nodeCost.memory[0]!, nodeCost.memory.at(-1)!];
  bench.figure({
    key: 'node-driver.memory.per-pod',
    label: `added per further pod, ${fewest.pods} → ${most.pods} pods (flat: about 0)`,
    value: (addedBy(most) - addedBy(fewest)) / (most.pods - fewest.pods),
    unit: 'MiB',
    digits: 2,
  });
  // The pods above each hold as many sockets, so that a further pod brings its sockets too: the
  // same sockets on fewer pods tell what a pod itself costs.
  const same = nodeCost.sameSockets;
  bench.figure({
    key: 'node-driver.memory.same-sockets.added',
    label: `added by driving ${same.pods} pods of ${same.sockets / same.pods} sockets (${same.sockets} sockets)`,
    value: addedBy(same),
    unit: 'MiB',
    digits: 1,
    note: `${same.driving.toFixed(1)} MiB in all`,
  });
  bench.figure({
    key: 'node-driver.memory.per-pod.same-sockets',
    label: `added per further pod, the same ${most.sockets} sockets on ${same.pods} → ${most.pods} pods (flat: about 0)`,
    value: (addedBy(most) - addedBy(same)) / (most.pods - same.pods),
    unit: 'MiB',
    digits: 2,
  });
  // What the agent costs idle without association (its peers' heartbeats and answers, say) is
  // measured too, so that the share the association adds shows; the goal is on the whole, once
  // the agent has warmed up. Just after it started, V8 still compiles its hot code.
  const cpu = nodeCost.idleCpu;
  const addedCpu = (phase: 'started' | 'warm') =>
    `${((cpu.driving[phase] - cpu.serving[phase]) * 100).toFixed(2)} % of a core added by driving them`;
  bench.figure({
    key: 'node-driver.idle-cpu.serving',
    label: `node agent's CPU serving ${most.pods} pods, none node-driven, no traffic, over ${size.idleSeconds} s after start (baseline)`,
    value: cpu.serving.started * 100,
    unit: '% of a core',
    digits: 2,
  });
  bench.figure({
    key: 'node-driver.idle-cpu',
    label: `node agent's CPU driving ${most.pods} pods, no traffic, over ${size.idleSeconds} s after it began`,
    value: cpu.driving.started * 100,
    unit: '% of a core',
    digits: 2,
    baseline: 'node-driver.idle-cpu.serving',
    note: addedCpu('started'),
  });
  bench.figure({
    key: 'node-driver.idle-cpu.serving.warm',
    label: `the same serving them, from ${size.warm.after} s after start, over ${size.warm.over} s (baseline)`,
    value: cpu.serving.warm * 100,
    unit: '% of a core',
    digits: 2,
  });
  bench.figure({
    key: 'node-driver.idle-cpu.warm',
    label: `the same driving them, from ${size.warm.after} s after it began, over ${size.warm.over} s`,
    value: cpu.driving.warm * 100,
    unit: '% of a core',
    digits: 2,
    baseline: 'node-driver.idle-cpu.serving.warm',
    goal: goal(1),
    note: addedCpu('warm'),
  });
  await gateway.printErrorsLogged(logs);
}

await runBenchmark<Size>({
  name: 'naa-gateway',
  sizes: {
    // 100 pods of 100 sockets: the node the issue's cost goal is stated for.
    full: {
      connections: 200,
      spacingMs: 20,
      holdMs: 3000,
      nodePods: [1, 10, 100],
      socketsPerPod: 100,
      fewerPods: 10,
      settleMs: 3000,
      idleSeconds: 10,
      warm: { after: 60, over: 60 },
    },
    quick: {
      connections: 100,
      spacingMs: 20,
      holdMs: 2000,
      nodePods: [1, 10],
      socketsPerPod: 100,
      fewerPods: 1,
      settleMs: 2000,
      idleSeconds: 5,
      warm: { after: 20, over: 10 },
    },
    // Connections over 1 s: several scans at the default interval, so that their period shows.
    smoke: {
      connections: 20,
      spacingMs: 50,
      holdMs: 1000,
      nodePods: [1, 2],
      socketsPerPod: 20,
      fewerPods: 1,
      settleMs: 1000,
      idleSeconds: 2,
      warm: { after: 4, over: 2 },
    },
  },
  async run(bench, size) {
    try {
      await main(bench, size);
    } catch (error) {
      for (const log of logs) {
        const text = (await gateway?.log(log)) ?? '';
        if (text) console.error(`--- ${log} (last lines)\n${text.split('\n').slice(-15).join('\n')}`);
      }
      throw error;
    } finally {
      await cleanup();
    }
  },
});
