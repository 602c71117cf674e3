// Dataplane benchmarks (`npm run bench:dataplane`, as root; --quick, --smoke, --json:
// test/bench/harness.ts; `--part traffic|rules|scale`, repeatable, runs only those parts): figures,
// each against a baseline measured in the same run on the same machine. All traffic stays inside
// network namespaces this script creates and deletes.
//  1. TCP throughput pod → server through the e2e topology: plain forwarding (static routes, no
//     conntrack, no NAT) and one masquerade rule vs the naat agent with one uplink and with three
//     balanced. Goal: naat's throughput at least that of one masquerade rule.
//  2. New TCP connections per second over the same set-ups. Goal: with three uplinks, at least
//     0.95 × one masquerade rule. The agent's CPU per new flow meanwhile (its NEW and its DESTROY
//     event, the latter made by flushing the table after the runs). Goal: 10 µs, i.e. 10 % of a
//     core at 10,000 new flows/s. And the agent's CPU at idle, 3 uplinks. Goal: 1 % of a core.
//  2b. (`--part rules`) New TCP connections per second with the config at scale (1,000 rules in
//     the full form) against the same set-up with one rule. Goal: at least 0.9 × one rule.
//  3. The agent at scale (10,000 pod addresses, 1,000 rules, 3 uplinks in the full form), the
//     Agent class driving real nft, ip and conntrack in a namespace of its own: the first full
//     sync, then each kind of change (a new application class, an association, a rule edited, a
//     pod added or removed) p50/p99 against the goal of 20 ms, and a full resync after a restart
//     against 300 ms, all beside rendering alone; and the agent process's memory vs an idle Node:
//     run from the sources, and at its goal (compiled and started as its image and DaemonSet start
//     it, 10,000 pods, 1,000 rules, 100,000 flows, its attribution log full). Goal: 120 MiB.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from '../../dataplane/agent.ts';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { parseGatewayConfig } from '../../contracts/gateway/index.ts';
import { ExecConntrack } from '../../dataplane/conntrack.ts';
import { ExecNftables, operationText, planSync, type Nftables, type Operation } from '../../dataplane/nft/nftables.ts';
import { localUplinks, maxUplinkId, render, uplinkMarks, type FlowAssociation } from '../../dataplane/render.ts';
import { ExecRouting } from '../../dataplane/routing.ts';
import { allocateUplinkIds } from '../../dataplane/uplink-ids.ts';
import { parse as parseYaml } from 'yaml';
import {
  createTopology,
  ispServerSide,
  podAddress,
  podNetwork,
  server,
  stopProcess,
  until,
  uplinkAddress,
  uplinkNextHop,
  type Topology,
} from '../e2e/topology.ts';
import { connectMany, startWhoami } from '../e2e/traffic.ts';
import { median, percentile, runBenchmark, type Bench, type Goal } from './harness.ts';
import { agentGoalMemory } from './agent-memory.ts';
import { buildImage } from './image.ts';
import { memory } from './process.ts';
import { agentAttributionRecords, agentNodeOptions } from '../../operator/desired.ts';

const root = join(import.meta.dirname, '..', '..');
const main = join(root, 'dataplane', 'main.ts');

const iperfPort = 5201;
const iperfStreams = 4;
const whoamiPort = 9000;
const rulesPerPolicy = 5;

interface Size {
  iperfSeconds: number;
  iperfRuns: number;
  /** New connections per run, `concurrency` at a time. */
  connections: number;
  connectionRuns: number;
  concurrency: number;
  /** How long the agent's CPU is measured at idle. */
  idleSeconds: number;
  /** Pod addresses of the config at scale, in `scalePolicies` policies of 5 rules (a multiple of 20). */
  scalePods: number;
  scalePolicies: number;
  /** How many times each kind of change is applied at scale, for its p50 and p99. */
  changeRuns: number;
  /**
   * The agent's memory at its goal: pods and policies of its config, flows held open, records of
   * its attribution log (the DaemonSet's when absent), made `batch` at a time.
   */
  goal: { pods: number; policies: number; flows: number; records?: number; batch: number };
}

const sizes: Record<'full' | 'quick' | 'smoke', Size> = {
  full: {
    iperfSeconds: 3,
    iperfRuns: 5,
    connections: 5000,
    connectionRuns: 5,
    concurrency: 200,
    idleSeconds: 60,
    scalePods: 10_000,
    scalePolicies: 200,
    changeRuns: 20,
    goal: { pods: 10_000, policies: 200, flows: 100_000, batch: 150 },
  },
  quick: {
    iperfSeconds: 2,
    iperfRuns: 3,
    connections: 2000,
    connectionRuns: 3,
    concurrency: 200,
    idleSeconds: 20,
    scalePods: 2000,
    scalePolicies: 40,
    changeRuns: 10,
    // The memory goal is stated at this size: the quick form measures it too.
    goal: { pods: 10_000, policies: 200, flows: 100_000, batch: 150 },
  },
  smoke: {
    iperfSeconds: 1,
    iperfRuns: 1,
    connections: 200,
    connectionRuns: 1,
    concurrency: 50,
    idleSeconds: 3,
    scalePods: 200,
    scalePolicies: 20,
    changeRuns: 3,
    goal: { pods: 200, policies: 20, flows: 1000, records: 1000, batch: 150 },
  },
};

const throughputGoal: Goal = {
  bound: 'min',
  value: 1,
  of: 'throughput.masquerade',
  source: 'dataplane goal: throughput at least that of one masquerade rule',
};
const connectionsGoal: Goal = {
  bound: 'min',
  value: 0.95,
  of: 'connections.masquerade',
  source: 'dataplane goal: new connections/s with three uplinks at least 0.95 × one masquerade rule',
};

const rulesGoal: Goal = {
  bound: 'min',
  value: 0.9,
  of: 'connections.naat-one-rule',
  source: 'dataplane goal: new connections/s with 1,000 rules at least 0.9 × the same set-up with one rule',
};

const rulesKernelGoal: Goal = {
  ...rulesGoal,
  of: 'connections.naat-one-rule-kernel',
  source: `${rulesGoal.source}, kernel alone`,
};

const changeGoal: Goal = {
  bound: 'max',
  value: 20,
  source: 'dataplane goal: every change an incremental transaction, p99 ≤ 20 ms at 10k pods / 1k rules',
};
const resyncGoal: Goal = {
  bound: 'max',
  value: 300,
  source: 'dataplane goal: a full resync ≤ 300 ms at 10k pods / 1k rules',
};
const agentFlowGoal: Goal = {
  bound: 'max',
  value: 10,
  source: 'dataplane goal: the agent at most 10 % of a core at 10,000 new flows/s, i.e. 10 µs of CPU per new flow',
};
const agentMemoryGoal: Goal = {
  bound: 'max',
  value: 120,
  source: 'dataplane goal: agent RSS ≤ 120 MiB at 10k pods / 1k rules with 100k flows and the attribution log full',
};
const agentIdleGoal: Goal = {
  bound: 'max',
  value: 1,
  source: 'dataplane goal: the agent at idle at most 1 % of a core',
};

/** What `--part` can limit a run to: sections 1 and 2, 2b, and 3 of the header. */
const parts = ['traffic', 'rules', 'scale'];

const thousands = (n: number) => n.toLocaleString('en');
const numbers = (count: number) => Array.from({ length: count }, (_, i) => i + 1);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function run(argv: string[], input?: string, timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      argv[0]!,
      argv.slice(1),
      { timeout: timeoutMs, maxBuffer: 1 << 28 },
      (error, stdout, stderr) =>
        error ? reject(new Error(`${argv.join(' ')}: ${stderr.trim() || error.message}`)) : resolve(stdout),
    );
    child.stdin!.on('error', () => {});
    child.stdin!.end(input);
  });
}

// ---------------------------------------------------------------------------------------------
// Gateway configs

function uplinkConfig(n: number) {
  return {
    name: `isp${n}`,
    interface: `up${n}`,
    nextHop: { ipv4: uplinkNextHop(n).v4, ipv6: uplinkNextHop(n).v6 },
    snat: { addresses: [uplinkAddress(n).v4, uplinkAddress(n).v6] },
    weight: 1,
  };
}

/** Every pod network served, no rules, `uplinks` uplinks of weight 1 without health checks. */
function smallConfig(uplinks: number, hash: string): Record<string, unknown> {
  return {
    version: 1,
    gateway: 'bench',
    hash,
    sources: [podNetwork.v4, podNetwork.v6],
    bypass: [],
    uplinks: numbers(uplinks).map(uplinkConfig),
    balancing: { mode: 'Weighted' },
    timeouts: {},
    defaultAction: 'Allow',
    rules: [],
  };
}

/** Three uplinks and one rule of which pod1 is a source and which its flows do not match (telnet denied). */
function oneRuleConfig(): Record<string, unknown> {
  const rule = {
    policy: 'bench/p0',
    rule: 'r0',
    priority: 0,
    sources: [scalePod(0), podAddress(1).v4],
    destinations: [{ protocol: 'TCP', ports: [{ port: 23 }] }],
    action: 'Deny',
  };
  return { ...smallConfig(3, 'one-rule'), rules: [rule] };
}

/** Pod `i` of the config at scale: 10.244.10.2 … 10.244.49.251, clear of the topology's pods. */
const scalePod = (i: number) => `10.244.${10 + Math.floor(i / 250)}.${2 + (i % 250)}`;

/**
 * `size.scalePods` pod addresses in `sources` (10,000 in the full form), `size.scalePolicies`
 * policies (200) with 5 rules each (1,000 rules), each of the same share of the pods: Deny
 * and Allow, TCP, UDP and ICMP, IPv4 and IPv6 destinations, port lists and ranges, an uplink
 * restriction on some, and an application rule in every tenth policy (processName curl0 in
 * policy 0, curl1 in policy 10, …: each its own application class). `changed` alters one rule's
 * port, as an edited policy would; `addedPod` is one more pod, selected by policy 0;
 * `everyPolicy` one more, selected by every policy.
 */
function scaleConfig(
  size: Size,
  hash: string,
  options: { changed?: boolean; addedPod?: string; everyPolicy?: string } = {},
) {
  const { scalePods, scalePolicies } = size;
  const podsPerPolicy = scalePods / scalePolicies;
  const rules: Record<string, unknown>[] = [];
  for (let p = 0; p < scalePolicies; p++) {
    const sources = Array.from({ length: podsPerPolicy }, (_, i) => scalePod(p * podsPerPolicy + i));
    if (p === 0 && options.addedPod) sources.push(options.addedPod);
    if (options.everyPolicy) sources.push(options.everyPolicy);
    const rule = (k: number, body: Record<string, unknown>) =>
      rules.push({ policy: `bench/p${p}`, rule: `r${k}`, priority: p * rulesPerPolicy + k, sources, ...body });
    const telnet = options.changed && p === scalePolicies / 2 ? 24 : 23;
    rule(0, { destinations: [{ protocol: 'TCP', ports: [{ port: telnet }, { port: 2323 }] }], action: 'Deny' });
    rule(1, {
      destinations: [
        {
          cidr: `172.${16 + (p % 16)}.${p}.0/24`,
          protocol: 'TCP',
          ports: [{ port: 443 }, { port: 8000, endPort: 8080 }],
        },
      ],
      action: 'Allow',
      ...(p % 3 === 0 ? { uplinks: { allowed: ['isp1', 'isp2'], preferred: ['isp1'] } } : {}),
    });
    rule(2, { destinations: [{ cidr: `10.${p}.0.0/16`, protocol: 'UDP', ports: [{ port: 53 }] }], action: 'Allow' });
    if (p % 10 === 0)
      rule(3, {
        applications: [{ processName: `curl${p / 10}` }],
        destinations: [{ cidr: '203.0.113.0/24', protocol: 'TCP', ports: [{ port: 443 }] }],
        action: 'Deny',
      });
    else rule(3, { destinations: [{ cidr: `192.168.${p}.0/24`, protocol: 'ICMP' }], action: 'Deny' });
    rule(4, {
      destinations: [
        { cidr: `2001:db8:${p.toString(16)}::/48`, protocol: 'TCP', ports: [{ port: 80 }, { port: 443 }] },
      ],
      action: 'Allow',
      ...(p % 4 === 0 ? { uplinks: { allowed: ['isp3'] } } : {}),
    });
  }
  return {
    version: 1,
    gateway: 'bench',
    hash,
    sources: [
      ...Array.from({ length: scalePods }, (_, i) => scalePod(i)),
      ...(options.everyPolicy ? [options.everyPolicy] : []),
      ...(options.addedPod ? [options.addedPod] : []),
    ],
    bypass: ['10.96.0.0/12'],
    uplinks: numbers(3).map(uplinkConfig),
    balancing: { mode: 'Weighted' },
    timeouts: {},
    defaultAction: 'Allow',
    rules,
  };
}

/** Connections by curl from pods of the policies with the application rule, which it matches. */
function associations(size: Size, from: number, count: number): FlowAssociation[] {
  const { scalePods, scalePolicies } = size;
  const podsPerPolicy = scalePods / scalePolicies;
  return Array.from({ length: count }, (_, j) => {
    const i = from + j;
    const policy = 10 * (i % (scalePolicies / 10));
    const processName = `curl${policy / 10}`;
    return {
      transport: 'tcp',
      sourceAddress: scalePod(policy * podsPerPolicy + (Math.floor(i / 20) % podsPerPolicy)),
      sourcePort: 40_000 + i,
      application: {
        processName,
        executable: `/usr/bin/${processName}`,
        commandLine: ['curl', 'https://example.test/'],
        containerName: 'app',
        containerId: 'c'.repeat(64),
        uid: 1000,
        pid: 1000 + i,
      },
    };
  });
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: traffic through the topology

async function throughput(t: Topology, size: Size): Promise<number[]> {
  const results: number[] = [];
  for (let i = 0; i < size.iperfRuns; i++) {
    const argv = ['iperf3', '-J', '-c', server.v4, '-p', String(iperfPort), '-t', String(size.iperfSeconds)];
    argv.push('-P', String(iperfStreams), '--connect-timeout', '3000');
    const { stdout } = await t.exec(t.ns.pods[0]!, argv, { timeoutMs: 60_000 });
    const report = JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } };
    results.push(report.end.sum_received.bits_per_second / 1e9);
  }
  return results;
}

interface Rate {
  ok: number;
  failures: number;
  seconds: number;
  seen: string[];
  error?: string;
}

async function connectRate(t: Topology, count: number, parallel: number): Promise<Rate> {
  const { answers, failures, error, seconds } = await connectMany(t, t.ns.pods[0]!, server.v4, whoamiPort, count, {
    concurrency: parallel,
    timeoutMs: 3000,
  });
  const seen = [...new Set(answers.map((answer) => answer.split(' ')[0]!))].sort();
  return { ok: answers.length, failures, seconds, seen, ...(error ? { error } : {}) };
}

/** A few connections, to learn which source addresses the server sees on the current path. */
async function checkPath(t: Topology, expected: string[]): Promise<void> {
  const { seen, failures, error } = await connectRate(t, 30, 5);
  if (failures || seen.join(',') !== [...expected].sort().join(',')) {
    throw new Error(`expected the server to see ${expected.join(', ')}, it saw ${seen.join(', ')} (${error ?? ''})`);
  }
}

/**
 * CPU seconds of a process and of the programs it ran: its own, those of the children it has
 * waited for, and those of its children still running (the agent's conntrack -E).
 */
async function cpuSeconds(pid: number): Promise<number> {
  const stat = async (p: number) => {
    const fields = (await readFile(`/proc/${p}/stat`, 'utf8')).split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) / 100;
  };
  const children = (await readFile(`/proc/${pid}/task/${pid}/children`, 'utf8').catch(() => ''))
    .split(' ')
    .filter(Boolean)
    .map(Number);
  let total = await stat(pid);
  for (const child of children) total += await stat(child).catch(() => 0);
  return total;
}

/** The agent's CPU over a set-up's connection runs. */
interface AgentCpu {
  seconds: number;
  /** New flows made meanwhile (the connections that got an answer). */
  flows: number;
}

/** The agent's CPU per new flow, in µs. */
const perFlowUs = (agent: AgentCpu) => (agent.seconds / agent.flows) * 1e6;

interface SetupResult {
  gbits?: number;
  rate: number;
  failures: number;
  agent?: AgentCpu;
}

async function measure(
  t: Topology,
  size: Size,
  agentPid: number | undefined,
  withThroughput = true,
): Promise<SetupResult> {
  const gbits = withThroughput ? median(await throughput(t, size)) : undefined;
  // Every set-up starts from an empty conntrack table (a no-op before naat makes the gateway track);
  // the agent has a moment to handle the DESTROY events of the flush before its CPU is read.
  const flush = async () => {
    await t.exec(t.ns.gw, ['conntrack', '-F']).catch(() => undefined);
    if (agentPid) await sleep(1500);
  };
  await flush();
  const rates: number[] = [];
  let failures = 0;
  let flows = 0;
  const cpuBefore = agentPid ? await cpuSeconds(agentPid) : 0;
  for (let i = 0; i < size.connectionRuns; i++) {
    const result = await connectRate(t, size.connections, size.concurrency);
    failures += result.failures;
    flows += result.ok;
    rates.push(result.ok / result.seconds);
  }
  // The flows wait in TIME_WAIT for two minutes before conntrack destroys them: a flush ends them
  // now, so that the agent's work on their DESTROY events is counted with that on their NEW ones.
  let agent: AgentCpu | undefined;
  if (agentPid) {
    await flush();
    agent = { seconds: (await cpuSeconds(agentPid)) - cpuBefore, flows };
  }
  return {
    ...(gbits !== undefined ? { gbits } : {}),
    rate: median(rates),
    failures,
    ...(agent ? { agent } : {}),
  };
}

/** The agent's CPU over `seconds` in which nothing happens, as a share of one core. */
async function idleCpu(agentPid: number, seconds: number): Promise<number> {
  const before = await cpuSeconds(agentPid);
  const started = performance.now();
  await sleep(seconds * 1000);
  return ((await cpuSeconds(agentPid)) - before) / ((performance.now() - started) / 1000);
}

/** The topology of the traffic figures, its whoami server up; `work` runs with it and its end destroys it. */
async function withTopology(dir: string, work: (t: Topology, agents: AgentRunner) => Promise<void>): Promise<void> {
  const t = await createTopology({ pods: 1, uplinks: 3 });
  const agents = agentRunner(t, dir);
  try {
    await startWhoami(t, whoamiPort);
    await work(t, agents);
    const leaked = (await t.serverPacketsFromPods()) - agents.fromPods;
    if (leaked) throw new Error(`${leaked} packets reached the server with a pod's address while naat ran`);
  } catch (error) {
    const log = await readFile(join(dir, 'agent.log'), 'utf8').catch(() => '');
    if (log) console.log(`agent log:\n${log}`);
    throw error;
  } finally {
    await agents.stop().catch(() => undefined);
    await t.destroy();
  }
}

/** The naat agent run from its sources in the gateway's namespace, from a config file it reloads. */
interface AgentRunner {
  /** Packets from the pods' own addresses the server had seen before naat ran. */
  fromPods: number;
  start(config: Record<string, unknown>): Promise<number>;
  /** A new config for the running agent, applied. */
  apply(config: Record<string, unknown>): Promise<void>;
  /** SIGTERM: the kernel keeps the agent's ruleset. */
  stop(): Promise<void>;
}

function agentRunner(t: Topology, dir: string): AgentRunner {
  const file = join(dir, 'gateway.json');
  let agent: ChildProcess | undefined;
  let started = false;
  const status = async () =>
    JSON.parse((await t.exec(t.ns.gw, ['curl', '-sf', 'http://127.0.0.1:7741/status'])).stdout) as AgentReport;
  const applied = (hash: string) =>
    until(`config ${hash}`, async () => ((await status()).appliedHash === hash ? true : undefined), 120_000);
  const runner: AgentRunner = {
    fromPods: 0,
    async start(config) {
      if (!started) runner.fromPods = await t.serverPacketsFromPods();
      started = true;
      await writeFile(file, JSON.stringify(config));
      const log = openSync(join(dir, 'agent.log'), 'a');
      const argv = ['run', '--config', file, '--node', 'gw', '--state-dir', join(dir, 'state'), '--reload-ms', '100'];
      agent = t.spawn(t.ns.gw, [process.execPath, main, ...argv], { stdio: ['ignore', log, log] });
      closeSync(log);
      await applied(String(config.hash));
      return agent.pid!;
    },
    async apply(config) {
      await writeFile(file, JSON.stringify(config));
      await applied(String(config.hash));
    },
    async stop() {
      const child = agent;
      agent = undefined;
      if (!child) return;
      if (child.exitCode !== null || child.signalCode !== null) throw new Error('the agent had exited');
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
  return runner;
}

const allThree = [1, 2, 3].map((n) => uplinkAddress(n).v4);

/** The new-connection figures of the set-ups measured, each against the set-up `baseline` names. */
function connectionFigures(
  bench: Bench,
  results: ReadonlyArray<[string, string, SetupResult]>,
  baseline: (key: string) => string,
  goals: Readonly<Record<string, Goal>>,
): void {
  for (const [key, label, r] of results) {
    const notes = [
      r.failures ? `${r.failures} failed` : '',
      r.agent ? `agent CPU ${(perFlowUs(r.agent) * r.rate * 1e-4).toFixed(0)} % of a core` : '',
    ].filter(Boolean);
    bench.figure({
      key: `connections.${key}`,
      label,
      value: r.rate,
      unit: '/s',
      digits: 0,
      ...(key === baseline(key) ? {} : { baseline: `connections.${baseline(key)}` }),
      ...(goals[key] ? { goal: goals[key] } : {}),
      ...(notes.length ? { note: notes.join('; ') } : {}),
    });
  }
}

/** The agent's CPU per new flow of the set-ups it ran in. */
function agentCpuFigures(bench: Bench, results: ReadonlyArray<[string, string, SetupResult]>): void {
  for (const [key, label, r] of results) {
    if (!r.agent) continue;
    bench.figure({
      key: `agent-cpu.${key}`,
      label,
      value: perFlowUs(r.agent),
      unit: 'µs/flow',
      goal: agentFlowGoal,
      note: `${(perFlowUs(r.agent) * r.rate * 1e-4).toFixed(1)} % of a core at ${r.rate.toFixed(0)} new flows/s; ${r.agent.seconds.toFixed(2)} s for ${r.agent.flows} flows`,
    });
  }
}

/** Throughput and new connections of plain forwarding, one masquerade rule and the agent without rules. */
async function trafficBench(bench: Bench, size: Size, dir: string): Promise<void> {
  bench.section(
    `traffic pod1 → server (iperf3 -P ${iperfStreams}, ${size.iperfRuns} × ${size.iperfSeconds} s; ` +
      `${size.connectionRuns} × ${size.connections} connections, ${size.concurrency} at a time; medians):`,
  );
  await withTopology(dir, async (t, agents) => {
    t.spawn(t.ns.srv, ['iperf3', '-s', '-B', server.v4, '-p', String(iperfPort)], { stdio: 'ignore' });
    await until(
      'the iperf3 server',
      async () => {
        const { stdout } = await t.exec(t.ns.srv, ['ss', '-Hltn', `sport = :${iperfPort}`]);
        return stdout.includes(server.v4) ? true : undefined;
      },
      120_000,
    );

    // (a) Plain forwarding through isp1: static routes both ways, the pod's own address end to end.
    const plainRoutes: Array<[string, string[]]> = [
      [t.ns.gw, [`${server.v4}/32`, 'via', uplinkNextHop(1).v4]],
      [t.ns.isps[0]!, [podNetwork.v4, 'via', uplinkAddress(1).v4]],
      [t.ns.srv, [podNetwork.v4, 'via', ispServerSide(1).v4]],
    ];
    for (const [ns, route] of plainRoutes) await t.exec(ns, ['ip', 'route', 'add', ...route]);
    await checkPath(t, [podAddress(1).v4]);
    const plain = await measure(t, size, undefined);
    // Each set-up by the key of its figures and its words.
    const results: Array<[string, string, SetupResult]> = [['plain', 'plain forwarding, no naat (baseline)', plain]];
    for (const [ns, route] of plainRoutes) await t.exec(ns, ['ip', 'route', 'del', ...route]);

    // (a2) The least any NAT gateway does: the static route and one masquerade rule, so that
    // conntrack and translation are paid for but none of naat's own rules and routing.
    const natRoute = [`${server.v4}/32`, 'via', uplinkNextHop(1).v4];
    await t.exec(t.ns.gw, ['ip', 'route', 'add', ...natRoute]);
    await t.exec(t.ns.gw, [
      'nft',
      'add table ip natbench; add chain ip natbench post { type nat hook postrouting priority 100; }; add rule ip natbench post oifname "up1" masquerade',
    ]);
    await checkPath(t, [uplinkAddress(1).v4]);
    results.push(['masquerade', 'one masquerade rule, no naat', await measure(t, size, undefined)]);
    await t.exec(t.ns.gw, ['nft', 'delete table ip natbench']);
    await t.exec(t.ns.gw, ['ip', 'route', 'del', ...natRoute]);
    await t.exec(t.ns.gw, ['conntrack', '-F']);

    // (b) The naat agent with isp1 only; (c) three uplinks of weight 1, then the same ruleset
    // with the agent stopped (the kernel keeps it), which leaves out the agent's own CPU (it
    // reads every conntrack event).
    const pid = await agents.start(smallConfig(1, 'one'));
    await checkPath(t, [uplinkAddress(1).v4]);
    results.push(['naat-1-uplink', 'naat agent, 1 uplink', await measure(t, size, pid)]);

    await agents.apply(smallConfig(3, 'three'));
    // Idle: the config applied and its uplinks' links read (the monitor's first rounds), no traffic.
    await sleep(2000);
    const idle = await idleCpu(pid, size.idleSeconds);
    await checkPath(t, allThree);
    results.push(['naat-3-uplinks', 'naat agent, 3 uplinks balanced', await measure(t, size, pid)]);
    await agents.stop();
    await checkPath(t, allThree);
    const threeKernel = await measure(t, size, undefined, false);
    results.push(['naat-3-uplinks-kernel', '  same ruleset, agent stopped (kernel alone)', threeKernel]);

    bench.section('TCP throughput, pod1 → server:');
    for (const [key, label, r] of results) {
      if (r.gbits === undefined) continue;
      bench.figure({
        key: `throughput.${key}`,
        label,
        value: r.gbits,
        unit: 'Gbit/s',
        ...(r === plain ? {} : { baseline: 'throughput.plain' }),
        ...(key.startsWith('naat') ? { goal: throughputGoal } : {}),
      });
    }
    bench.section('new TCP connections per second (connect, read the answer, close):');
    connectionFigures(bench, results, () => 'plain', { 'naat-3-uplinks': connectionsGoal });
    bench.section(
      "the agent's CPU (its own and that of the programs it runs, /proc/PID/stat), per new flow over the " +
        'connection runs (NEW and DESTROY) and at idle:',
    );
    agentCpuFigures(bench, results);
    bench.figure({
      key: 'agent-cpu.idle',
      label: `naat agent, 3 uplinks, idle for ${size.idleSeconds} s`,
      value: idle * 100,
      unit: '% of a core',
      goal: agentIdleGoal,
    });
  });
}

/**
 * New connections with the policy rules at scale (1,000 in the full form) against the same
 * set-up with one rule, three uplinks each. pod1 is in the sources of every policy and matches
 * none of their rules, so its flows are decided by the default Allow after every rule was ruled
 * out: the most a new flow's lookups have to tell apart. Throughput is left out: rules are
 * evaluated for a flow's first packet only.
 */
async function rulesBench(bench: Bench, size: Size, dir: string): Promise<void> {
  const rules = thousands(size.scalePolicies * rulesPerPolicy);
  bench.section(
    `new TCP connections per second, pod1 → server, 3 uplinks, one rule vs ${rules} ` +
      `(${size.connectionRuns} × ${size.connections} connections each, ${size.concurrency} at a time, ` +
      'the two configs in turn; medians):',
  );
  const setUps = [
    { key: 'naat-one-rule', label: 'naat agent, 3 uplinks, one rule (baseline)', config: oneRuleConfig() },
    {
      key: 'naat-rules',
      label: `naat agent, 3 uplinks, ${rules} rules`,
      config: scaleConfig(size, 'scale', { everyPolicy: podAddress(1).v4 }),
    },
  ];
  await withTopology(dir, async (t, agents) => {
    // The configs take turns run by run, first one then the other first, so that a machine that
    // slows down or speeds up during the benchmark weighs on both alike. With the agent, it is
    // given the other config; kernel alone, an agent applies it and is stopped.
    const inTurn = async (kernelAlone: boolean) => {
      const runs = new Map(setUps.map(({ key }) => [key, [] as SetupResult[]]));
      let pid: number | undefined;
      for (let run = 0; run < size.connectionRuns; run++) {
        for (const { key, config } of run % 2 ? [...setUps].reverse() : setUps) {
          if (kernelAlone) {
            await agents.start(config);
            await agents.stop();
          } else if (pid === undefined) pid = await agents.start(config);
          else await agents.apply(config);
          if (run === 0) await checkPath(t, allThree);
          runs.get(key)!.push(await measure(t, { ...size, connectionRuns: 1 }, pid, false));
        }
      }
      if (!kernelAlone) await agents.stop();
      return runs;
    };
    const withAgent = await inTurn(false);
    const kernel = await inTurn(true);
    const results: Array<[string, string, SetupResult]> = setUps.flatMap(({ key, label }) => [
      [key, label, combined(withAgent.get(key)!)],
      [`${key}-kernel`, '  same ruleset, agent stopped (kernel alone)', combined(kernel.get(key)!)],
    ]);
    connectionFigures(bench, results, (key) => (key.endsWith('-kernel') ? 'naat-one-rule-kernel' : 'naat-one-rule'), {
      'naat-rules': rulesGoal,
      'naat-rules-kernel': rulesKernelGoal,
    });
    bench.section("the agent's CPU per new flow over the connection runs (NEW and DESTROY):");
    agentCpuFigures(bench, results);
  });
}

/** The runs of a set-up as one: the median rate, the failures and the agent's CPU of all. */
function combined(runs: readonly SetupResult[]): SetupResult {
  const agents = runs.flatMap((r) => (r.agent ? [r.agent] : []));
  return {
    rate: median(runs.map((r) => r.rate)),
    failures: runs.reduce((sum, r) => sum + r.failures, 0),
    ...(agents.length
      ? {
          agent: {
            seconds: agents.reduce((sum, a) => sum + a.seconds, 0),
            flows: agents.reduce((sum, a) => sum + a.flows, 0),
          },
        }
      : {}),
  };
}

// ---------------------------------------------------------------------------------------------
// 3: the agent at scale

/**
 * The agent's memory at its goal (agent-memory.ts): compiled as its image holds it, with the
 * NODE_OPTIONS and the attribution log's size its DaemonSet gives it, the config of `size.goal`
 * with its pods listed (as the operator compiles them), holding `size.goal.flows` flows.
 */
async function goalMemory(size: Size, ns: string, dir: string) {
  const { pods, policies, flows, records = agentAttributionRecords, batch } = size.goal;
  const config = {
    ...scaleConfig({ ...size, scalePods: pods, scalePolicies: policies }, 'goal'),
    pods: Array.from({ length: pods }, (_, i) => ({ namespace: 'bench', name: `pod-${i}`, addresses: [scalePod(i)] })),
  };
  const image = await buildImage('dataplane');
  try {
    const nodeOptions = [image.nodeOptions, agentNodeOptions].filter(Boolean).join(' ');
    const measured = await agentGoalMemory({
      ns,
      dir,
      image,
      config,
      nodeOptions,
      args: ['--attribution-records', String(records)],
      records,
      flows,
      batch,
      // A listing of the flow table (every 10 s) and more.
      settleMs: 12_000,
    });
    return {
      ...measured,
      nodeOptions,
      scale: `${thousands(pods)} pods, ${thousands(policies * rulesPerPolicy)} rules`,
    };
  } finally {
    await rm(image.app, { recursive: true, force: true });
  }
}

/** Counts the time spent listing naat's table and applying transactions, and their size. */
class TimedNftables implements Nftables {
  readonly inner: Nftables;
  listMs = 0;
  runMs = 0;
  bytes = 0;
  constructor(inner: Nftables) {
    this.inner = inner;
  }
  async list() {
    const started = performance.now();
    try {
      return await this.inner.list();
    } finally {
      this.listMs += performance.now() - started;
    }
  }
  counters() {
    return this.inner.counters();
  }
  close() {
    return this.inner.close();
  }
  async run(operations: Operation[]) {
    this.bytes += operations.map(operationText).join('\n').length;
    const started = performance.now();
    try {
      await this.inner.run(operations);
    } finally {
      this.runMs += performance.now() - started;
    }
  }
  reset(): void {
    this.listMs = 0;
    this.runMs = 0;
    this.bytes = 0;
  }
}

function timeSync(runs: number, work: () => unknown): number {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    work();
    times.push(performance.now() - started);
  }
  return median(times);
}

async function elementCount(ns: string, kind: 'set' | 'map', name: string): Promise<number> {
  const listing = JSON.parse(
    await run(['ip', 'netns', 'exec', ns, 'nft', '-j', 'list', kind, 'inet', 'naat', name]),
  ) as {
    nftables: Array<Record<string, { elem?: unknown[] }>>;
  };
  return listing.nftables.reduce((sum, item) => sum + (item[kind]?.elem?.length ?? 0), 0);
}

async function scaleBench(bench: Bench, size: Size, dir: string): Promise<void> {
  const ns = `naat-bench-${process.pid}`;
  const inNs = (tool: string) => ['ip', 'netns', 'exec', ns, tool];
  const errors: string[] = [];
  const children: ChildProcess[] = [];
  let agent: Agent | undefined;
  await run(['ip', 'netns', 'add', ns]);
  try {
    await run([...inNs('sysctl'), '-q', '-w', 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0']);
    const links = numbers(3).flatMap((n) => [
      `link add up${n} type veth peer name peer${n}`,
      `address add ${uplinkAddress(n).v4}/24 dev up${n}`,
      `address add ${uplinkAddress(n).v6}/64 dev up${n}`,
      `link set up${n} up`,
      `link set peer${n} up`,
    ]);
    await run(['ip', '-n', ns, '-batch', '-'], ['link set lo up', ...links].join('\n') + '\n');

    const { scalePods, scalePolicies } = size;
    const raw = scaleConfig(size, 'scale-1');
    const text = JSON.stringify(raw);
    const config = parseGatewayConfig(raw);
    const changed = parseGatewayConfig(scaleConfig(size, 'scale-2', { changed: true }));
    const jsonMs = timeSync(3, () => JSON.parse(text));
    const yamlMs = timeSync(3, () => parseYaml(text));
    const checkMs = timeSync(3, () => parseGatewayConfig(raw));
    const ids = allocateUplinkIds(
      new Map(),
      localUplinks(config, 'gw').map((u) => u.name),
      maxUplinkId(uplinkMarks(config)),
    );
    const input = { config, node: 'gw', ids, health: new Map<string, boolean>() };
    const renderMs = timeSync(5, () => render(input));
    const rendered = render(input);
    const script = planSync(rendered.table, undefined).map(operationText);
    const ruleCount = rendered.table.chains.reduce((sum, c) => sum + c.rules.length, 0);
    const elements = rendered.table.sets.reduce((sum, s) => sum + s.elements.length, 0);
    // The maps the compiled rules are looked up in (classify.ts): their size is the decision's.
    const classifying = new Set(
      rendered.table.chains.flatMap((c) =>
        c.rules.flatMap((r) => r.then.flatMap((s) => (s.kind === 'classify' ? [s.map] : []))),
      ),
    );
    const boxes = rendered.table.sets.filter((s) => classifying.has(s.name));
    bench.section(
      `the agent at scale: ${scalePods} pod addresses, ${config.rules.length} rules in ${scalePolicies} policies, ` +
        `3 uplinks (config ${(text.length / 1e6).toFixed(1)} MB of JSON) → ${rendered.table.chains.length} chains, ` +
        `${ruleCount} nft rules, ${rendered.table.sets.length} sets with ${elements} elements ` +
        `(the rules compiled: ${boxes.reduce((sum, s) => sum + s.elements.length, 0)} elements in ${boxes.length} maps); ` +
        `first transaction ${script.length} lines, ${(script.join('\n').length / 1e6).toFixed(1)} MB, ` +
        `longest line ${Math.max(...script.map((l) => l.length))} characters`,
    );

    const nft = new TimedNftables(new ExecNftables(inNs('nft')));
    const agentOptions: ConstructorParameters<typeof Agent>[0] = {
      node: 'gw',
      nft,
      routing: new ExecRouting(inNs('ip')),
      conntrack: new ExecConntrack(inNs('conntrack')),
      stateDir: join(dir, 'scale-state'),
      interfaceAddresses: async () => [],
      writeSysctl: async (path, value) => void (await run([...inNs('sysctl'), '-q', '-w', `${path}=${value}`])),
      log: {
        debug: () => {},
        info: () => {},
        warn: () => {},
        error: (message, fields) => errors.push(`${message} ${JSON.stringify(fields)}`),
      },
    };
    agent = new Agent(agentOptions);
    const timed = async (work: () => Promise<unknown>) => {
      nft.reset();
      const started = performance.now();
      await work();
      const ms = performance.now() - started;
      const sync = agent!.report().lastSync!;
      if (sync.error) throw new Error(`the sync failed: ${sync.error}`);
      return { ms, listMs: nft.listMs, runMs: nft.runMs, bytes: nft.bytes, full: sync.full };
    };
    const describe = (r: { listMs: number; runMs: number; bytes: number; full: boolean }) =>
      `${r.full ? 'full sync' : 'incremental'}: nft list ${r.listMs.toFixed(0)} ms, ` +
      `nft transaction ${r.runMs.toFixed(0)} ms for ${(r.bytes / 1e3).toFixed(0)} kB`;

    const first = await timed(() => agent!.start(config));
    const sources4 = await elementCount(ns, 'set', 'sources4');
    // Each kind of change `changeRuns` times (the application classes: as many as the config has),
    // timed from the call to the kernel holding it.
    const times = async (runs: number, change: (run: number) => Promise<unknown>) => {
      const samples: Array<Awaited<ReturnType<typeof timed>>> = [];
      for (let run = 0; run < runs; run++) samples.push(await timed(() => change(run)));
      return samples;
    };
    const classes = scalePolicies / 10;
    const newClass = await times(Math.min(size.changeRuns, classes), (run) =>
      agent!.associate(associations(size, run, 1), []),
    );
    // Flows of applications whose classes exist by now.
    const association = await times(size.changeRuns, (run) =>
      agent!.associate(associations(size, classes * (1 + run), 1), []),
    );
    const hundred = await timed(() => agent!.associate(associations(size, classes * 100, 100), []));
    const policyEdit = await times(size.changeRuns, (run) => agent!.configure(run % 2 ? config : changed));
    await agent.configure(config);
    const podAdded = parseGatewayConfig(scaleConfig(size, 'scale-3', { addedPod: '10.244.250.2' }));
    const podChange = await times(size.changeRuns, (run) => agent!.configure(run % 2 ? config : podAdded));
    await agent.configure(config);
    const flows4 = await elementCount(ns, 'map', 'flows4');
    const flows = newClass.length + association.length + 100;
    if (sources4 !== scalePods || flows4 !== flows) {
      throw new Error(
        `the kernel holds ${sources4} sources4 elements (want ${scalePods}), ${flows4} flows4 (want ${flows})`,
      );
    }
    // A full resync: an agent that does not know what the kernel holds (it restarted) lists the
    // table and refills it.
    const resync = await times(Math.min(size.changeRuns, 5), async () => {
      await agent!.stop();
      agent = new Agent(agentOptions);
      await agent.start(config);
    });
    const removeStarted = performance.now();
    await agent.remove();
    const removeMs = performance.now() - removeStarted;
    agent = undefined;

    const ms = (
      key: string,
      label: string,
      value: number,
      options: { baseline?: string; note?: string; goal?: Goal } = {},
    ) => bench.figure({ key, label, value, unit: 'ms', ...options });
    bench.section('reading the config file (medians of 3):');
    ms('config.json-parse', 'JSON.parse of the file (baseline)', jsonMs);
    ms('config.yaml-parse', 'yaml parse of the same config (YAML files only)', yamlMs, {
      baseline: 'config.json-parse',
    });
    ms('config.check', 'parseGatewayConfig (schema, defaults, checks)', checkMs, { baseline: 'config.json-parse' });
    bench.section('sync times, the Agent class with real nft/ip/conntrack, from the call to the kernel holding it:');
    ms('sync.render', 'render() alone, pure (median of 5) (baseline)', renderMs);
    ms('sync.first-full', 'first full sync, empty kernel (Agent.start)', first.ms, {
      baseline: 'sync.render',
      note: describe(first),
    });
    const change = (key: string, label: string, samples: Awaited<ReturnType<typeof times>>, goal: Goal) => {
      const values = samples.map((r) => r.ms);
      const full = samples.filter((r) => r.full).length;
      const slowest = samples.reduce((a, b) => (b.ms > a.ms ? b : a));
      ms(key, `${label}, p99 of ${samples.length}`, percentile(values, 0.99), {
        baseline: 'sync.render',
        goal,
        note:
          `p50 ${percentile(values, 0.5).toFixed(0)} ms; ${full ? `${full} of ${samples.length} full syncs` : 'all incremental'}; ` +
          `slowest ${describe(slowest)}`,
      });
    };
    change('sync.new-class', '1st association of a new application class', newClass, changeGoal);
    change('sync.association', 'one more association', association, changeGoal);
    change('sync.policy-edit', 'one rule edited', policyEdit, changeGoal);
    change('sync.pod-change', 'a pod added to a policy or removed', podChange, changeGoal);
    change('sync.resync', 'full resync after a restart', resync, resyncGoal);
    ms('sync.hundred-associations', '100 more associations at once', hundred.ms, {
      baseline: 'sync.render',
      note: describe(hundred),
    });
    ms('sync.remove', 'Agent.remove (table and routes)', removeMs);
    if (errors.length) console.log(`  the agent logged errors (on stop):\n    ${errors.join('\n    ')}`);

    // Memory: the real agent process (dataplane/main.ts) in the namespace, read from /proc.
    const spawnIn = (argv: string[], log?: number) => {
      const child = spawn('ip', ['netns', 'exec', ns, ...argv], {
        stdio: ['ignore', log ?? 'ignore', log ?? 'ignore'],
      });
      children.push(child);
      return child;
    };
    const idle = spawnIn([process.execPath, '-e', 'setInterval(() => {}, 1000)']);
    await sleep(1000);
    const idleVm = await memory(idle.pid!);
    await stopProcess(idle);
    const status = async () =>
      JSON.parse(await run([...inNs('curl'), '-sf', 'http://127.0.0.1:7741/status'])) as AgentReport;
    const runAgent = async (name: string, gateway: Record<string, unknown>) => {
      const file = join(dir, `${name}.json`);
      await writeFile(file, JSON.stringify(gateway));
      const log = openSync(join(dir, `${name}.log`), 'a');
      const started = performance.now();
      const argv = ['run', '--config', file, '--node', 'gw', '--state-dir', join(dir, `${name}-state`)];
      const child = spawnIn([process.execPath, main, ...argv], log);
      closeSync(log);
      try {
        const report = await until(
          `the ${name} agent`,
          async () => {
            const r = await status();
            return r.appliedHash === gateway.hash ? r : undefined;
          },
          120_000,
        );
        const readyMs = performance.now() - started;
        await sleep(1000);
        return { ...(await memory(child.pid!)), readyMs, syncMs: report.lastSync!.durationMs };
      } catch (error) {
        console.log(`${name} agent log:\n${await readFile(join(dir, `${name}.log`), 'utf8').catch(() => '')}`);
        throw error;
      } finally {
        await stopProcess(child);
        await run([...inNs('nft'), 'delete', 'table', 'inet', 'naat']).catch(() => undefined);
      }
    };
    const small = await runAgent('small', smallConfig(3, 'small'));
    const big = await runAgent('big', raw);
    const scale = `${thousands(scalePods)} pods, ${thousands(scalePolicies * rulesPerPolicy)} rules`;
    bench.section('memory of the agent process (dataplane/main.ts run, VmRSS 1 s after the config applied):');
    const mib = (key: string, label: string, v: { rss: number; peak?: number }) =>
      bench.figure({
        key,
        label,
        value: v.rss,
        unit: 'MiB',
        digits: 0,
        ...(v.peak === undefined ? {} : { baseline: 'memory.idle-node', note: `peak ${v.peak.toFixed(0)} MiB` }),
      });
    mib('memory.idle-node', 'idle Node process (baseline)', { rss: idleVm.rss });
    mib('memory.agent-small', 'agent, 3 uplinks, no rules', small);
    mib('memory.agent-scale', `agent, ${scale}`, big);
    const goal = await goalMemory(size, ns, dir);
    bench.section(
      'memory of the agent at its goal (dist/dataplane/main.js run, VmRSS after its flows opened and a flow listing):',
    );
    bench.figure({
      key: 'memory.agent-goal',
      label: `agent as its image and DaemonSet run it, ${goal.scale}, ${thousands(goal.flows)} flows, log full`,
      value: goal.rss,
      unit: 'MiB',
      digits: 0,
      baseline: 'memory.idle-node',
      goal: agentMemoryGoal,
      note:
        `peak ${goal.peak.toFixed(0)} MiB; V8 heap ${goal.heapUsed.toFixed(0)} MiB used of ${goal.heapTotal.toFixed(0)}, ` +
        `external ${goal.external.toFixed(0)} MiB; ${thousands(goal.records)} records (${thousands(goal.dropped)} ended ones ` +
        `dropped for the open flows); NODE_OPTIONS=${goal.nodeOptions || '(none)'}; the log filled in ` +
        `${goal.fillSeconds.toFixed(0)} s, the flows opened in ${goal.openSeconds.toFixed(0)} s`,
    });
    bench.section('start → config applied (main.ts):');
    ms('startup.small', 'no rules (baseline)', small.readyMs);
    ms('startup.scale', scale, big.readyMs, {
      baseline: 'startup.small',
      note: `of which its first sync ${big.syncMs.toFixed(0)} ms`,
    });
  } finally {
    await agent?.stop().catch(() => undefined);
    for (const child of children) await stopProcess(child);
    const pids = await run(['ip', 'netns', 'pids', ns]).catch(() => '');
    for (const pid of pids.split('\n').filter(Boolean).map(Number)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
    await run(['ip', 'netns', 'delete', ns]).catch(() => undefined);
  }
}

await runBenchmark<Size>({
  name: 'dataplane',
  sizes,
  parts: { flag: 'part', names: parts },
  async run(bench, size, only = parts) {
    const dir = await mkdtemp(join(tmpdir(), 'naat-bench-dataplane-'));
    try {
      if (only.includes('traffic')) await trafficBench(bench, size, dir);
      if (only.includes('rules')) await rulesBench(bench, size, dir);
      if (only.includes('scale')) await scaleBench(bench, size, dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
});
