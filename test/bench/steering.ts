// The steering benchmark (`npm run bench:steering`, as root; --quick, --smoke, --json:
// test/bench/harness.ts). In the multi-node topology of the steering tests (network namespaces:
// nodes on an underlay, pods behind a CNI of the test's own that masquerades, gateway nodes with
// ISP uplinks, a server), in one run:
//  1. TCP throughput (iperf3) and new TCP connections per second to the server from a pod on a
//     worker node through a hand-written VXLAN tunnel + SNAT (test/bench/hand-tunnel.ts: the
//     baseline), from the same pod steered by naat (the real node and gateway agents), and from
//     a pod on the gateway node (naat, no tunnel); and naat's kernel state with both agents
//     stopped, which leaves out their CPU. Goal: steered ≥ 0.9 × the hand-written tunnel.
//  2. The largest packet that passes from the worker pod with DF set, IPv4 and IPv6, through the
//     hand-written tunnel and through naat's.
//  3. The node agent's memory (VmRSS) and its CPU while idle, following one gateway node and
//     following four. Goal: ≤ 1 % of a core.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { tunnelMtu } from '../../dataplane/steering/tunnel.ts';
import {
  createCluster,
  gatewayAddress,
  nodeNetwork,
  podAddress,
  podNetwork,
  uplinkAddress,
  uplinkNextHop,
  workerAddress,
  type Cluster,
} from '../e2e/cluster-topology.ts';
import { deleteNamespace, ipBatch, linksUp, run, server, stopProcess, until, type DualStack } from '../e2e/topology.ts';
import { connectMany, iperf, startWhoami } from '../e2e/traffic.ts';
import { handTunnel } from './hand-tunnel.ts';
import { median, runBenchmark, type Bench, type Goal } from './harness.ts';
import { cpuShare, memory } from './process.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const whoamiPort = 9000;
const iperfPort = 5201;
const tunnel = { vni: 7700, port: 4790 };
/** The underlay's MTU (veth), which the tunnels' MTU follows. */
const underlayMtu = 1500;
/** The pod on gateway node g1, which this benchmark adds to the cluster. */
const localPod: DualStack = { v4: '10.244.100.2', v6: 'fd00:244:100::2' };
const localPodGateway: DualStack = { v4: '10.244.100.1', v6: 'fd00:244:100::1' };

interface Size {
  iperfSeconds: number;
  iperfRuns: number;
  /** New connections per run, `concurrency` at a time. */
  connections: number;
  connectionRuns: number;
  concurrency: number;
  /** How long the node agent's idle CPU is sampled. */
  idleSeconds: number;
}

const sizes: Record<'full' | 'quick' | 'smoke', Size> = {
  full: { iperfSeconds: 3, iperfRuns: 5, connections: 5000, connectionRuns: 5, concurrency: 200, idleSeconds: 30 },
  quick: { iperfSeconds: 2, iperfRuns: 3, connections: 2000, connectionRuns: 3, concurrency: 200, idleSeconds: 10 },
  smoke: { iperfSeconds: 1, iperfRuns: 1, connections: 200, connectionRuns: 1, concurrency: 50, idleSeconds: 2 },
};

const source = "issue 18's goal";
const ofHandTunnel = (figure: string): Goal => ({ bound: 'min', value: 0.9, of: figure, source });
const idleGoal: Goal = { bound: 'max', value: 1, source };

/** IP and ICMP echo headers: what ping's payload size leaves out of the packet's size. */
const echoHeaders = { 4: 28, 6: 48 } as const;

/**
 * The largest IP packet (bytes, headers included) that reaches `address` from namespace `ns`
 * with fragmentation forbidden (`ping -M do`), by bisection between `low` (must pass) and
 * `high`. A packet over the path's MTU is refused, by the ICMP "fragmentation needed" (packet
 * too big) that comes back or, once the pod's kernel learnt the path MTU from it, locally; either
 * way it does not pass. The pod's learnt path MTUs are flushed first, so that one set-up does not
 * inherit another's.
 */
async function largestPacket(t: Cluster, ns: string, address: string, family: 4 | 6, low: number, high: number) {
  await t.exec(ns, ['ip', `-${family}`, 'route', 'flush', 'cache']);
  const ping = ['ping', `-${family}`, '-n', '-q', '-c', '1', '-W', '1', '-M', 'do'];
  const passes = (size: number) =>
    t.exec(ns, [...ping, '-s', String(size - echoHeaders[family]), address]).then(
      () => true,
      () => false,
    );
  if (!(await passes(low))) throw new Error(`a packet of ${low} bytes does not reach ${address} from ${ns}`);
  let [yes, no] = [low, high + 1];
  while (no - yes > 1) {
    const middle = Math.floor((yes + no) / 2);
    if (await passes(middle)) yes = middle;
    else no = middle;
  }
  return yes;
}

interface Traffic {
  gbits: number;
  rate: number;
  failures: number;
  /** Packets the nodes' kube-proxy-like rule dropped as conntrack-INVALID meanwhile. */
  invalid: number;
}

/** What the kube-proxy-like rule of the nodes `nodes` dropped as conntrack-INVALID so far. */
async function invalidDrops(t: Cluster, nodes: readonly string[]): Promise<number> {
  let total = 0;
  for (const ns of nodes) {
    const { stdout } = await t.exec(ns, ['nft', 'list', 'chain', 'inet', 'kube-proxy-like', 'forward']);
    total += Number(/counter packets (\d+)/.exec(stdout)?.[1] ?? NaN);
  }
  return total;
}

/** Throughput and new connections per second from pod namespace `ns` to the server (medians). */
async function traffic(t: Cluster, ns: string, size: Size): Promise<Traffic> {
  const nodes = [t.worker(1), t.gateway(1)];
  const dropped = await invalidDrops(t, nodes);
  const gbits: number[] = [];
  for (let i = 0; i < size.iperfRuns; i++) {
    gbits.push((await iperf(t, ns, server.v4, { seconds: size.iperfSeconds, port: iperfPort })) / 1e9);
  }
  const rates: number[] = [];
  let failures = 0;
  for (let i = 0; i < size.connectionRuns; i++) {
    const result = await connectMany(t, ns, server.v4, whoamiPort, size.connections, {
      concurrency: size.concurrency,
      timeoutMs: 3000,
    });
    failures += result.failures;
    rates.push(result.answers.length / result.seconds);
  }
  return { gbits: median(gbits), rate: median(rates), failures, invalid: (await invalidDrops(t, nodes)) - dropped };
}

/** Throws unless the server sees connections from `ns` come from `expected` (an uplink's addresses) alone. */
async function checkPath(t: Cluster, ns: string, expected: DualStack): Promise<void> {
  for (const family of ['v4', 'v6'] as const) {
    const { answers, failures, error } = await connectMany(t, ns, server[family], whoamiPort, 20, { concurrency: 5 });
    const seen = [...new Set(answers.map((answer) => answer.split(' ')[0]!))];
    if (failures || seen.join() !== expected[family]) {
      const saw = seen.join(', ') || 'nothing';
      throw new Error(`expected the server to see ${expected[family]} from ${ns}, it saw ${saw} (${error ?? ''})`);
    }
  }
}

interface Mtu {
  4: number;
  6: number;
}

async function largestPackets(t: Cluster, ns: string): Promise<Mtu> {
  return {
    4: await largestPacket(t, ns, server.v4, 4, 1280, underlayMtu),
    6: await largestPacket(t, ns, server.v6, 6, 1280, underlayMtu),
  };
}

/** The gateway's config: its pods on w1 (steered) and on g1 (local), one uplink on g1. */
function gatewayConfig(): Record<string, unknown> {
  return {
    version: 1,
    gateway: 'egress',
    hash: 'bench',
    sources: [podNetwork.v4, podNetwork.v6],
    pods: [
      { namespace: 'bench', name: 'worker', addresses: [podAddress(1).v4, podAddress(1).v6], node: 'w1' },
      { namespace: 'bench', name: 'local', addresses: [localPod.v4, localPod.v6], node: 'g1' },
    ],
    uplinks: [
      {
        name: 'isp1',
        nodes: ['g1'],
        interface: 'up1',
        nextHop: { ipv4: uplinkNextHop(1, 1).v4, ipv6: uplinkNextHop(1, 1).v6 },
        snat: { addresses: [uplinkAddress(1, 1).v4, uplinkAddress(1, 1).v6] },
      },
    ],
    balancing: { mode: 'Weighted' },
    timeouts: {},
    steering: {
      tunnel,
      markMask: 0x10,
      sources: [{ node: 'w1', addresses: [workerAddress(1).v4, workerAddress(1).v6] }],
    },
  };
}

/**
 * Worker w1's node config: its pod, steered to g1. With `followed` > 1, as many gateways, the others
 * without pods and each with its own tunnel to g1: the node agent then follows g1's `/steering` on
 * that many connections, as it would follow that many gateway nodes.
 */
function nodeConfig(followed = 1): Record<string, unknown> {
  const gateway = (i: number) => ({
    gateway: i ? `idle-${i}` : 'egress',
    tunnel: { ...tunnel, vni: tunnel.vni + i },
    selection: 'Pod',
    associationPort: 7740 + i,
    healthPort: 7741,
    bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
    pods: i ? [] : [{ namespace: 'bench', name: 'worker', addresses: [podAddress(1).v4, podAddress(1).v6] }],
    peers: [{ node: 'g1', addresses: [gatewayAddress(1).v4, gatewayAddress(1).v6] }],
  });
  return {
    version: 1,
    node: 'w1',
    hash: followed === 1 ? 'bench' : `bench-${followed}`,
    markMask: 0xe0,
    gateways: Array.from({ length: followed }, (_, i) => gateway(i)),
  };
}

/** How many gateway nodes the node agent follows in the second idle measurement. */
const followedPeers = 4;

/** A pod on gateway node g1 (the cluster has pods on workers only), behind a veth as the CNI's. */
async function addLocalPod(t: Cluster, ns: string): Promise<void> {
  await run(['ip', 'netns', 'add', ns]);
  await ipBatch(t.gateway(1), [
    `link add lpod type veth peer name eth0 netns ${ns}`,
    `address add ${localPodGateway.v4}/24 dev lpod`,
    `address add ${localPodGateway.v6}/64 dev lpod nodad`,
    'link set lpod up',
  ]);
  await ipBatch(ns, [
    `address add ${localPod.v4}/24 dev eth0`,
    `address add ${localPod.v6}/64 dev eth0 nodad`,
    'link set eth0 up',
    'link set lo up',
  ]);
  await linksUp(t.gateway(1));
  await linksUp(ns);
  await ipBatch(ns, [`route add default via ${localPodGateway.v4}`, `route add default via ${localPodGateway.v6}`]);
}

async function steeringBench(bench: Bench, size: Size, dir: string): Promise<void> {
  const t = await createCluster();
  const local = `${t.prefix}lpod`;
  const worker = t.pod(1);
  const agents: ChildProcess[] = [];
  const start = (name: string, ns: string, argv: string[]) => {
    const log = openSync(join(dir, `${name}.log`), 'a');
    const child = t.spawn(ns, [process.execPath, main, ...argv, '--state-dir', join(dir, `${name}-state`)], {
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    agents.push(child);
    return child;
  };
  const applied = (ns: string, port: number, hash = 'bench') =>
    until(
      `the agent in ${ns}`,
      async () => {
        const { stdout } = await t.exec(ns, ['curl', '-sf', `http://127.0.0.1:${port}/status`]);
        const status = JSON.parse(stdout) as {
          appliedHash?: string;
          lastSync?: { error?: string };
          peers?: Array<{ up: boolean }>;
        };
        const up = (status.peers ?? []).every((p) => p.up);
        return status.appliedHash === hash && !status.lastSync?.error && up ? true : undefined;
      },
      60_000,
    );
  const uplink = uplinkAddress(1, 1);
  try {
    await addLocalPod(t, local);
    await startWhoami(t, whoamiPort);

    // 1. By hand: the tunnel, the routing and the NAT, nothing else.
    const hand = handTunnel({
      source: { ns: t.worker(1), underlay: workerAddress(1).v4, pods: [podAddress(1).v4, podAddress(1).v6] },
      gateway: {
        ns: t.gateway(1),
        underlay: gatewayAddress(1).v4,
        uplink: 'up1',
        nextHops: [uplinkNextHop(1, 1).v4, uplinkNextHop(1, 1).v6],
      },
      bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
      ...tunnel,
      mtu: tunnelMtu(underlayMtu, 4),
    });
    for (const step of hand.up) await t.exec(step.ns, step.argv, step.input === undefined ? {} : { input: step.input });
    await checkPath(t, worker, uplink);
    const byHand = await traffic(t, worker, size);
    const byHandMtu = await largestPackets(t, worker);
    for (const step of hand.down) await t.exec(step.ns, step.argv).catch(() => undefined);
    for (const ns of [t.worker(1), t.gateway(1)]) await t.exec(ns, ['conntrack', '-F']).catch(() => undefined);

    // 2. naat: the gateway agent on g1, the node agent on w1, each from its config file.
    await writeFile(join(dir, 'gateway.json'), JSON.stringify(gatewayConfig()));
    await writeFile(join(dir, 'node.json'), JSON.stringify(nodeConfig()));
    // On every address: the node agent asks g1's underlay address whether it takes flows.
    const listen = ['--listen', '0.0.0.0:7741'];
    start('g1', t.gateway(1), ['run', '--config', join(dir, 'gateway.json'), '--node', 'g1', ...listen]);
    const nodeAgent = start('w1', t.worker(1), ['node', '--config', join(dir, 'node.json'), '--node', 'w1']);
    await applied(t.gateway(1), 7741);
    await applied(t.worker(1), 7742);
    await until('the steered path', () => checkPath(t, worker, uplink).then(() => true), 30_000);
    const steered = await traffic(t, worker, size);
    const steeredMtu = await largestPackets(t, worker);
    // A gateway node's own pod gets no reply past strict reverse-path filtering: the reply's
    // mark is not restored (it is routed to the pod by the main table), so the reverse lookup
    // finds no route to the server in a main table that has none. Measured with IPv4's filter
    // off on g1, last, so that it changes nothing above.
    for (const conf of ['all', 'default', 'up1']) {
      await t.exec(t.gateway(1), ['sysctl', '-q', '-w', `net.ipv4.conf.${conf}.rp_filter=0`]);
    }
    await checkPath(t, local, uplink);
    const direct = await traffic(t, local, size);
    const leaked = await t.serverPacketsFromInside();
    if (leaked) throw new Error(`the server saw ${leaked} packets from a pod or node address`);

    // 3. The node agent, idle: no new flows; it follows its peer's /steering as always. Then
    // following `followedPeers` of them.
    const idleCpu = await cpuShare(nodeAgent.pid!, size.idleSeconds);
    const { rss, peak } = await memory(nodeAgent.pid!);
    await writeFile(join(dir, 'node.json'), JSON.stringify(nodeConfig(followedPeers)));
    await applied(t.worker(1), 7742, `bench-${followedPeers}`);
    const idleCpuMore = await cpuShare(nodeAgent.pid!, size.idleSeconds);

    // 4. The same kernel state with both agents stopped (it stays): the kernel's path alone,
    // without the agents' CPU (the gateway agent reads every conntrack event).
    for (const agent of agents.splice(0)) await stopProcess(agent);
    const steeredKernel = await traffic(t, worker, size);

    const notes = (r: Traffic) => {
      const words = [
        r.failures ? `${r.failures} connections failed` : '',
        r.invalid ? `${r.invalid} dropped as INVALID` : '',
      ];
      const note = words.filter(Boolean).join('; ');
      return note ? { note } : {};
    };
    bench.section(
      `worker pod → server (iperf3, ${size.iperfRuns} × ${size.iperfSeconds} s; ${size.connectionRuns} × ` +
        `${size.connections} connections, ${size.concurrency} at a time; medians):`,
    );
    const setups: Array<[string, string, Traffic]> = [
      ['hand-tunnel', 'worker-node pod, hand-written VXLAN tunnel + SNAT (baseline)', byHand],
      ['steered', 'worker-node pod, naat steering through its tunnel', steered],
      ['steered-kernel', '  same kernel state, both agents stopped', steeredKernel],
      ['local', 'gateway-node pod, naat, no tunnel (IPv4 rp_filter off on g1)', direct],
    ];
    bench.section('TCP throughput:');
    for (const [key, label, r] of setups) {
      bench.figure({
        key: `throughput.${key}`,
        label,
        value: r.gbits,
        unit: 'Gbit/s',
        ...(key === 'hand-tunnel' ? {} : { baseline: 'throughput.hand-tunnel' }),
        ...(key === 'steered' ? { goal: ofHandTunnel('throughput.hand-tunnel') } : {}),
        ...notes(r),
      });
    }
    bench.section('new TCP connections per second (connect, read the answer, close):');
    for (const [key, label, r] of setups) {
      bench.figure({
        key: `connections.${key}`,
        label,
        value: r.rate,
        unit: '/s',
        digits: 0,
        ...(key === 'hand-tunnel' ? {} : { baseline: 'connections.hand-tunnel' }),
        ...(key === 'steered' ? { goal: ofHandTunnel('connections.hand-tunnel') } : {}),
        ...notes(r),
      });
    }
    bench.section('largest packet that passes from the worker pod with DF set (IP header included):');
    for (const family of [4, 6] as const) {
      bench.figure({
        key: `mtu.hand-tunnel.ipv${family}`,
        label: `IPv${family}, hand-written tunnel (baseline)`,
        value: byHandMtu[family],
        unit: 'bytes',
        digits: 0,
      });
      bench.figure({
        key: `mtu.steered.ipv${family}`,
        label: `IPv${family}, naat`,
        value: steeredMtu[family],
        unit: 'bytes',
        digits: 0,
        baseline: `mtu.hand-tunnel.ipv${family}`,
      });
    }
    bench.section('the node agent (dataplane/main.ts node):');
    bench.figure({
      key: 'node-agent.rss',
      label: 'memory (VmRSS)',
      value: rss,
      unit: 'MiB',
      digits: 0,
      note: `peak ${peak.toFixed(0)} MiB`,
    });
    bench.figure({
      key: 'node-agent.idle-cpu',
      label: `CPU while idle, over ${size.idleSeconds} s`,
      value: idleCpu * 100,
      unit: '% of a core',
      goal: idleGoal,
    });
    bench.figure({
      key: `node-agent.idle-cpu-${followedPeers}-peers`,
      label: `CPU while idle following ${followedPeers} gateway nodes, over ${size.idleSeconds} s`,
      value: idleCpuMore * 100,
      unit: '% of a core',
      goal: idleGoal,
      note: `${(((idleCpuMore - idleCpu) / (followedPeers - 1)) * 100).toFixed(3)} % per more peer`,
    });
  } catch (error) {
    for (const name of ['g1', 'w1']) {
      const log = await readFile(join(dir, `${name}.log`), 'utf8').catch(() => '');
      if (log) console.log(`${name} agent log:\n${log}`);
    }
    throw error;
  } finally {
    for (const agent of agents) await stopProcess(agent);
    await deleteNamespace(local).catch(() => undefined);
    await t.destroy();
  }
}

await runBenchmark<Size>({
  name: 'steering',
  sizes,
  async run(bench, size) {
    const dir = await mkdtemp(join(tmpdir(), 'naat-bench-steering-'));
    try {
      await steeringBench(bench, size, dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
});
