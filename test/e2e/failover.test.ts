// Gateway-node failover end to end (failover-cluster.ts): for each fault a gateway node meets, on
// the node that owns the pod's failover address, the address moves to the other gateway node (or
// stays, when the two only lose each other, unless the owner's renewals fall behind), new
// connections from the pod recover with the same address, established TCP streams keep their
// connection and every byte, the UDP stream keeps its translation, and no two nodes have the
// address at once (a node cut off from everything gives it up within the lease duration, before
// the other can take it: at most the time their kernels take apart). The node that comes back
// takes nothing back, at no moment. The bounds here are loose (a shared CI machine);
// `npm run bench:failover` measures the figures.
import { Failover } from '../../crds/v1alpha1/egress-gateway.ts';
import { FailoverCluster, floating, type Fault } from './failover-cluster.ts';
import { until } from './topology.ts';

/** As a gateway gets by default. */
const leaseDurationMs: number = Failover.properties.leaseDurationMilliseconds.default;
let f: FailoverCluster;

beforeAll(async () => {
  f = await FailoverCluster.create(process.env.KUBECONFIG!, { leaseDurationMs });
}, 180_000);

afterAll(async () => {
  await f?.destroy();
}, 60_000);

const moving: Array<[Fault, string]> = [
  ['drain', 'drained (failover.drainNodes)'],
  ['uplink-down', 'its uplink goes down'],
  ['blackhole', 'everything it sends upstream is dropped, its link up'],
  ['agent-kill', 'its agent is SIGKILLed'],
  ['power-off', 'powered off: its links down and every process in it SIGKILLed'],
  ['isolated', 'cut off from the other gateway node and the control plane, its processes running'],
];

describe.each(moving)('the owner %s', (fault, _what) => {
  it('moves the address, keeps established flows and takes nothing back when it returns', async () => {
    const run = await f.fault(fault);
    console.log(`${fault}: ${JSON.stringify(run)}`);
    // The node back before anything is judged, so that a failure leaves the next fault a whole cluster.
    await f.restore(fault, Number(run.from.slice(1)));
    // Watched while the node comes back: the address never moves again, nor has two holders.
    const seen: string[] = [];
    for (const end = Date.now() + 3 * leaseDurationMs; Date.now() < end;) {
      seen.push(JSON.stringify((await f.holders()).get(floating.v4) ?? []));
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await f.settled();
    // What its kernel kept of the address's flows went on elsewhere: those entries are deleted
    // while the other node holds the address, not when this one next claims it.
    const from = Number(run.from.slice(1));
    await until(`g${from}'s entries translated to ${floating.v4} deleted`, async () =>
      (await f.translatedTo(from, floating.v4)) === 0 ? true : undefined,
    );

    expect(run.to).toBeDefined();
    expect(run.to).not.toBe(run.from);
    expect(run.newConnectionSources).toEqual([floating.v4]);
    expect(run.newConnectionGapMs).toBeLessThan(5000);
    expect({ survived: run.streamsSurvived }).toEqual({ survived: run.streams });
    // One translation for the UDP stream across the move: the server saw one source.
    expect(run.udpSources).toHaveLength(1);
    expect(run.udpSources[0]).toMatch(new RegExp(`^${floating.v4.replaceAll('.', '\\.')} `));
    // An agent SIGKILLed cannot take its addresses off the interface: they stay there until its
    // restart (next line), but its kernel's fence silences them before the new owner claims them.
    if (fault === 'isolated') expect(run.doubleOwnershipMs).toBeLessThan(leaseDurationMs);
    else if (fault !== 'agent-kill') expect(run.doubleOwnershipMs).toBe(0);
    if (fault === 'isolated') expect(run.answeringOverlapMs).toBeLessThan(leaseDurationMs);
    else expect(run.answeringOverlapMs).toBe(0);
    expect(run.answering).toEqual([run.to]);
    // The node that came back took nothing back, and no node but the owner had the address (but
    // the SIGKILLed agent's leftover, until it restarted).
    const owner = JSON.stringify([run.to]);
    const leftover = fault === 'agent-kill' ? JSON.stringify([run.from, run.to].sort()) : owner;
    expect(seen.filter((holders) => holders !== owner && holders !== leftover)).toEqual([]);
    expect(seen.at(-1)).toBe(owner);
  });
});

it('keeps the address where it is when the gateway nodes only lose each other', async () => {
  const logs = () => Promise.all([1, 2].map((g) => f.processes.log(`g${g}.log`)));
  const before = await logs();
  const run = await f.fault('partition');
  console.log(`partition: ${JSON.stringify(run)}`);
  await f.restore('partition', Number(run.from.slice(1)));
  await f.settled();
  if (run.to !== run.from) {
    // The owner still reaches the control plane, but on a loaded machine one of its renewals can
    // come back a lease duration late: its fence then gives the address up, as it must, and the
    // other node takes it over like any released address. Only that may move it.
    const g = Number(run.from.slice(1));
    const since = (await logs())[g - 1]!.slice(before[g - 1]!.length);
    expect(since).toMatch(/"msg":"Released failover address".*"reason":"fence"/);
  }
  expect(run.doubleOwnershipMs).toBe(0);
  expect(run.answeringOverlapMs).toBe(0);
  expect(run.answering).toEqual([run.to]);
  expect({ survived: run.streamsSurvived }).toEqual({ survived: run.streams });
  expect(run.udpSources).toHaveLength(1);
});

it('keeps every stream when a rolling update restarts the other node, and the owner then fails', async () => {
  const owner = (await f.owners()).get(floating.v4)!;
  const other = owner === 'g1' ? 2 : 1;
  // The other node's agent restarts while the streams flow; once it says it is ready, it holds
  // them in its replica (its /readyz waits for the owner's whole round), and the owner fails.
  const run = await f.fault('power-off', 20, { beforeFault: () => f.restartAgent(other) });
  console.log(`power-off after a restart of the other node: ${JSON.stringify(run)}`);
  await f.restore('power-off', Number(run.from.slice(1)));
  await f.settled();
  expect(run.to).toBe(`g${other}`);
  expect({ survived: run.streamsSurvived }).toEqual({ survived: run.streams });
  expect(run.udpSources).toHaveLength(1);
});
