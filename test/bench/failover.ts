// The failover benchmark (`npm run bench:failover`, as root; --quick, --smoke, --json:
// test/bench/harness.ts). In the multi-node topology with shared uplink segments
// (test/e2e/failover-cluster.ts: two gateway nodes holding the failover addresses through Leases
// on a real apiserver, a worker whose pod is steered to the address's owner), each fault is caused
// on the node that owns the IPv4 failover address, many times over, the node brought back after
// each run (so runs alternate between the nodes). Per fault:
//  - new connections: from the fault to the first success among connections opened after it,
//    one every 10 ms (p50, p99, max);
//  - UDP: the longest time without an answer in a stream numbered every millisecond (p50, p99, max);
//  - the share of 20 long-lived TCP streams that kept their connection and every byte (a stream
//    whose server-side 4-tuple changed is reset by the server, so it cannot count);
//  - the longest time both nodes had the address on their uplink at once.
// Goals: new connections p99 ≤ 500 ms after a power-off, ≥ 99 % of established flows surviving,
// 0 ms with two owners except when a node is cut off from everything (there it is measured).
import { Failover } from '../../crds/v1alpha1/egress-gateway.ts';
import { startCluster } from '../cluster/cluster.ts';
import { FailoverCluster, type Fault, type FaultRun } from '../e2e/failover-cluster.ts';
import { percentile, positiveInteger, runBenchmark, type Bench, type Goal } from './harness.ts';

interface Size {
  /** Runs of each fault. */
  runs: number;
  faults: Fault[];
  leaseDurationMs: number;
}

const allFaults: Fault[] = ['power-off', 'agent-kill', 'uplink-down', 'blackhole', 'isolated', 'partition', 'drain'];
/** The figures are those of a gateway that leaves the lease duration to its default, unless --lease-ms says another. */
const leaseDurationMs: number = Failover.properties.leaseDurationMilliseconds.default;
const sizes: Record<'full' | 'quick' | 'smoke', Size> = {
  full: { runs: 50, faults: allFaults, leaseDurationMs },
  quick: { runs: 5, faults: allFaults, leaseDurationMs },
  smoke: { runs: 1, faults: ['power-off', 'drain'], leaseDurationMs },
};

const source = 'the gateway-node HA goals';
const maxGoal = (value: number): Goal => ({ bound: 'max', value, source });
const minGoal = (value: number): Goal => ({ bound: 'min', value, source });

function record(bench: Bench, fault: Fault, runs: readonly FaultRun[]): void {
  bench.section(`${fault} (${runs.length} runs)`);
  const series = (key: string, label: string, values: number[], goal?: Goal) => {
    for (const [q, name] of [
      [0.5, 'p50'],
      [0.99, 'p99'],
      [1, 'max'],
    ] as const) {
      bench.figure({
        key: `${fault}.${key}.${name}`,
        label: `${label} ${name}`,
        value: percentile(values, q),
        unit: 'ms',
        ...(goal && name === 'p99' ? { goal } : {}),
      });
    }
  };
  const gaps = runs.map((r) => r.newConnectionGapMs ?? Infinity);
  series('new-connection', 'fault → first new connection', gaps, fault === 'power-off' ? maxGoal(500) : undefined);
  series(
    'udp-gap',
    'longest UDP gap',
    runs.map((r) => r.udpGapMs),
  );
  const streams = runs.reduce((sum, r) => sum + r.streams, 0);
  bench.figure({
    key: `${fault}.streams-survived`,
    label: 'established TCP streams that survived',
    value: runs.reduce((sum, r) => sum + r.streamsSurvived, 0) / streams,
    unit: 'share',
    goal: minGoal(0.99),
    note: `of ${streams}; UDP kept one source in ${runs.filter((r) => r.udpSources.length === 1).length}/${runs.length} runs`,
  });
  bench.figure({
    key: `${fault}.double-ownership`,
    label: 'longest time with two owners',
    value: Math.max(...runs.map((r) => r.doubleOwnershipMs)),
    unit: 'ms',
    ...(fault === 'isolated' ? {} : { goal: maxGoal(0) }),
  });
  bench.figure({
    key: `${fault}.double-answering`,
    label: 'longest time two nodes answered ARP or ND for the address',
    value: Math.max(...runs.map((r) => r.answeringOverlapMs)),
    unit: 'ms',
    ...(fault === 'isolated' ? {} : { goal: maxGoal(0) }),
  });
}

await runBenchmark<Size>({
  name: 'failover',
  sizes,
  parts: { flag: 'fault', names: allFaults },
  options: {
    usage: { 'lease-ms': `  --lease-ms MS      the gateway's leaseDurationMilliseconds (default ${leaseDurationMs})` },
    apply: (size, values) =>
      values['lease-ms'] === undefined
        ? size
        : { ...size, leaseDurationMs: positiveInteger('lease-ms', values['lease-ms']) },
  },
  async run(bench, size, only) {
    const faults = only ? size.faults.filter((fault) => only.includes(fault)) : size.faults;
    if (faults.length === 0) throw new Error(`the ${bench.form} form runs none of the faults ${only!.join(', ')}`);
    const control = await startCluster();
    let cluster: FailoverCluster | undefined;
    try {
      cluster = await FailoverCluster.create(control.kubeconfig, { leaseDurationMs: size.leaseDurationMs });
      bench.note(`lease duration ${size.leaseDurationMs} ms; ${size.runs} runs of each fault`);
      for (const fault of faults) {
        const runs: FaultRun[] = [];
        for (let i = 0; i < size.runs; i++) {
          const run = await cluster.fault(fault);
          runs.push(run);
          await cluster.restore(fault, Number(run.from.slice(1)));
          await cluster.settled();
        }
        record(bench, fault, runs);
      }
    } finally {
      await cluster?.destroy();
      await control.stop();
    }
  },
});
