// `npm run bench:strict` (as root; --quick, --smoke, --json: test/bench/harness.ts): what strict
// association costs. Through the NAA gateway of the e2e harness (real agent, real sidecar in strict
// mode, the stamping library preloaded), it measures
//   1. connect() time of one program making sequential connections, stamped (library preloaded)
//      against unstamped (the same program without it), p50/p99, and the first stamped connect,
//      which asks the sidecar and waits for the gateway's acknowledgement;
//   2. TCP throughput pod → server of a stamped flow (DSCP cleared on every packet at the
//      gateway) against an unstamped one, as a ratio, each the median of iperf3 runs;
//   3. the share of new flows the gateway counted as stamped.
import { execFileSync } from 'node:child_process';
import { startCluster, type Cluster } from '../cluster/cluster.ts';
import { NaaGateway } from '../e2e/naa-harness.ts';
import { server } from '../e2e/topology.ts';
import { startWhoami, type Server } from '../e2e/traffic.ts';
import { median, percentile, runBenchmark, type Bench } from './harness.ts';

const node = 'gateway-a';
const namespace = 'naa-strict-bench';
const iperfPort = 5201;
const whoamiPort = 9000;

interface Size {
  /** Sequential connects of one program, stamped and not. */
  connects: number;
  iperfSeconds: number;
  iperfRuns: number;
}

let cluster: Cluster | undefined;
let gateway: NaaGateway | undefined;
let whoami: Server | undefined;

async function main(bench: Bench, { connects, iperfSeconds, iperfRuns }: Size): Promise<void> {
  const progress = (line: string) => process.stderr.write(`  ${line}\n`);
  cluster = await startCluster({
    workloads: true,
    nodes: [{ name: node, labels: { 'naat.dev/gateway': 'true' } }],
    progress,
  });
  gateway = new NaaGateway({
    kubeconfig: cluster.kubeconfig,
    namespace,
    node,
    uplinks: 1,
    unassociatedFlows: 'PodRules',
    strict: true,
    rules: (podIp) => [
      {
        policy: `${namespace}/apps`,
        rule: 'python-and-iperf',
        priority: 1,
        sources: [podIp],
        applications: [{ processName: 'python3' }, { processName: 'iperf3' }],
        action: 'Allow',
      },
    ],
  });
  await gateway.start();
  const g = gateway;
  const { env: stamping } = await g.startStampingSidecar({ log: 'sidecar.log' });
  whoami = await startWhoami(g.topology, whoamiPort);
  const preload = Object.entries(stamping).map(([name, value]) => `${name}=${value}`);
  const inPod = async (env: string[], argv: string[], timeoutMs = 120_000) =>
    (await g.topology.exec(g.pod.netns, ['env', ...env, ...argv], { timeoutMs })).stdout;

  const connectTimes = async (env: string[]) =>
    (
      await inPod(env, [
        'python3',
        '-c',
        `import socket, time
times = []
for _ in range(${connects}):
    t = time.perf_counter()
    s = socket.create_connection(('${server.v4}', ${whoamiPort}), timeout=4)
    times.append((time.perf_counter() - t) * 1000)
    s.recv(100); s.close()
print(' '.join('%.4f' % t for t in times))`,
      ])
    )
      .trim()
      .split(' ')
      .map(Number);
  progress(`Measuring ${connects} connects, stamped and not`);
  const stamped = await connectTimes(preload);
  const plain = await connectTimes([]);

  const iperfServer = g.topology.spawn(g.topology.ns.srv, ['iperf3', '-s', '-B', server.v4, '-p', String(iperfPort)], {
    stdio: 'ignore',
  });
  await new Promise((r) => setTimeout(r, 500));
  const throughput = async (env: string[]) => {
    const runs: number[] = [];
    for (let i = 0; i < iperfRuns; i++) {
      const out = await inPod(env, [
        'iperf3',
        '-J',
        '-c',
        server.v4,
        '-p',
        String(iperfPort),
        '-t',
        String(iperfSeconds),
      ]);
      runs.push(
        (JSON.parse(out) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second /
          1e9,
      );
    }
    return median(runs);
  };
  progress('Measuring throughput, stamped and not');
  const stampedGbits = await throughput(preload);
  const plainGbits = await throughput([]);
  iperfServer.kill();

  const counters = JSON.parse(
    execFileSync('ip', ['netns', 'exec', g.topology.ns.gw, 'nft', '-j', 'list', 'counters', 'table', 'inet', 'naat'], {
      encoding: 'utf8',
    }),
  ) as { nftables: Array<{ counter?: { name: string; packets: number } }> };
  // A counter that is not there counted nothing: the figure is not measured.
  const packets = (name: string) => counters.nftables.find((c) => c.counter?.name === name)?.counter?.packets ?? NaN;

  bench.section(
    `strict association (one pod, one uplink; ${connects} sequential connects of python3; iperf3 ${iperfSeconds} s × ${iperfRuns})`,
  );
  const ms = (key: string, label: string, value: number, baseline?: string, note?: string) =>
    bench.figure({
      key,
      label,
      value,
      unit: 'ms',
      digits: 3,
      ...(baseline ? { baseline } : {}),
      ...(note ? { note } : {}),
    });
  ms('connect.unstamped.p50', 'connect() unstamped, p50 (baseline)', median(plain));
  ms('connect.unstamped.p99', 'connect() unstamped, p99 (baseline)', percentile(plain, 0.99));
  ms('connect.stamped.p50', 'connect() stamped, p50', median(stamped), 'connect.unstamped.p50');
  ms('connect.stamped.p99', 'connect() stamped, p99', percentile(stamped, 0.99), 'connect.unstamped.p99');
  ms('connect.stamped.first', 'first stamped connect, which waits for the gateway', stamped[0] ?? NaN);
  bench.figure({
    key: 'throughput.unstamped',
    label: 'throughput unstamped (baseline)',
    value: plainGbits,
    unit: 'Gbit/s',
  });
  bench.figure({
    key: 'throughput.stamped',
    label: 'throughput stamped',
    value: stampedGbits,
    unit: 'Gbit/s',
    baseline: 'throughput.unstamped',
  });
  bench.figure({
    key: 'flows.new',
    label: 'new-flow packets of the strict pod counted at the gateway',
    value: packets('strict_new_flows'),
    unit: 'packets',
    digits: 0,
  });
  bench.figure({
    key: 'flows.stamped',
    label: 'of which stamped',
    value: packets('strict_stamped_flows'),
    unit: 'packets',
    digits: 0,
    baseline: 'flows.new',
    note: '(the unstamped runs account for the difference)',
  });
}

await runBenchmark<Size>({
  name: 'strict',
  sizes: {
    full: { connects: 2000, iperfSeconds: 5, iperfRuns: 3 },
    quick: { connects: 500, iperfSeconds: 2, iperfRuns: 3 },
    smoke: { connects: 50, iperfSeconds: 1, iperfRuns: 1 },
  },
  async run(bench, size) {
    try {
      await main(bench, size);
    } finally {
      await whoami?.stop();
      await gateway?.stop();
      await cluster?.stop();
    }
  },
});
