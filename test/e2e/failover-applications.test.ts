// Cluster-wide egress across gateway-node failover (failover-cluster.ts with `applications`): the
// pod on w1 is a real Pod with its sidecar in strict mode, whose stream the node agent relays to
// both gateway nodes; the gateway denies curl to one port, routes python3 to another through ISP 2
// (the node's own address there, not the failover address) and holds unassociated flows. When the
// owner of the pod's failover address is drained or powered off, the other node already holds the
// pod's associations and stamps in its kernel before it claims; after the move it denies, routes
// and attributes the pod's flows as the old owner did, classifies stamped flows from their first
// packet and unstamped ones by their association, and attributes the flow that moved with it (pod,
// container, application, the bytes it carried after the move). Then the same drain made the way a
// cluster makes it: a real Node cordoned through the API server, or the gateway's drainNodes, as
// the operator's compile turns them into the gateway config, moves the addresses with no lost flow,
// and uncordoning moves nothing back.
import type { V1Node } from '@kubernetes/client-node';
import { createInterface } from 'node:readline';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AttributionRecord } from '../../dataplane/attribution.ts';
import { compileGateway } from '../../operator/compile.ts';
import { nodeFacts } from '../../operator/reconcilers/cluster.ts';
import { validate, type EgressGateway, type Uplink } from '../../crds/index.ts';
import { kubectl } from '../cluster/cluster.ts';
import { podAddress, sharedNextHop, sharedUplinkAddress } from './cluster-topology.ts';
import { FailoverCluster, floating, type Fault, type FaultRun } from './failover-cluster.ts';
import { strictCounters } from './naa-pod.ts';
import { metricSum } from './naa-harness.ts';
import { exited } from '../cluster/processes.ts';
import { server, until } from './topology.ts';
import {
  curlConnects,
  pythonConnects,
  pythonDownload,
  startStreamServer,
  startWhoami,
  type Server,
} from './traffic.ts';

const leaseDurationMs = 600;
const ports = { allowed: 9301, denied: 9302, download: 9303 };
const pod = podAddress(1);
/** A rule of python3 or curl towards the server's `port`, in both families. */
const rule = (name: string, priority: number, processName: string, port: number, decision: object) => ({
  policy: 'failover/apps',
  rule: name,
  priority,
  sources: [pod.v4, pod.v6],
  applications: [{ processName }],
  destinations: [`${server.v4}/32`, `${server.v6}/128`].map((cidr) => ({ cidr, protocol: 'TCP', ports: [{ port }] })),
  ...decision,
});
const rules = [
  rule('no-curl', 1, 'curl', ports.denied, { action: 'Deny' }),
  rule('python-via-isp2', 2, 'python3', ports.allowed, { action: 'Allow', uplinks: { allowed: ['isp2'] } }),
];

let f: FailoverCluster;
const servers: Server[] = [];

beforeAll(async () => {
  f = await FailoverCluster.create(process.env.KUBECONFIG!, { leaseDurationMs, applications: { rules } });
  servers.push(
    await startWhoami(f.c, ports.allowed),
    await startWhoami(f.c, ports.denied),
    await startStreamServer(f.c, ports.download),
  );
}, 240_000);

afterAll(async () => {
  await Promise.all(servers.map((s) => s.stop()));
  await f?.destroy();
}, 60_000);

const other = (node: string) => (node === 'g1' ? 'g2' : 'g1');
const gatewayNs = (node: string) => f.c.gateway(Number(node.slice(1)));

async function agentGet<T>(node: string, path: string): Promise<T> {
  const { stdout } = await f.c.exec(gatewayNs(node), ['curl', '-sf', `http://127.0.0.1:7744${path}`]);
  return JSON.parse(stdout) as T;
}

async function metric(node: string, name: string, labels: Record<string, string>): Promise<number> {
  const { stdout } = await f.c.exec(gatewayNs(node), ['curl', '-sf', 'http://127.0.0.1:7744/metrics']);
  return metricSum(stdout, name, labels);
}

/** The elements of one of gateway node `node`'s maps in table inet naat. */
async function mapOf(node: string, map: string): Promise<string> {
  return (await f.c.exec(gatewayNs(node), ['nft', 'list', 'map', 'inet', 'naat', map])).stdout;
}

/** Runs a shell script in the pod, with `env`; resolves with its lines. */
async function inPod(script: string, env: Record<string, string> = {}): Promise<string[]> {
  const assignments = Object.entries(env).map(([name, value]) => `${name}=${value}`);
  const { stdout } = await f.c.exec(f.c.pod(1), ['env', ...assignments, 'sh', '-c', script], { timeoutMs: 120_000 });
  return stdout.trim().split('\n');
}

/**
 * What the owner of the failover address does with the pod's flows: python3 (stamped) leaves
 * through its ISP 2 with its own address there in both families, curl (stamped or not) is denied,
 * and every new flow of the stamped programs arrived stamped.
 */
async function decidesApplications(owner: string): Promise<void> {
  const g = Number(owner.slice(1));
  const deniedBefore = await metric(owner, 'naat_application_denials_total', { application: 'curl' });
  const before = await strictCounters((argv) => f.c.exec(gatewayNs(owner), argv));
  expect(await inPod(pythonConnects(ports.allowed, 5), f.preloaded)).toEqual(
    Array(5).fill(sharedUplinkAddress(g, 2).v4),
  );
  expect(await inPod(pythonConnects(ports.allowed, 2, server.v6), f.preloaded)).toEqual(
    Array(2).fill(sharedUplinkAddress(g, 2).v6),
  );
  expect(await inPod(curlConnects(ports.denied, 3), f.preloaded)).toEqual(['x', 'x', 'x']);
  const after = await strictCounters((argv) => f.c.exec(gatewayNs(owner), argv));
  expect(after.stamped - before.stamped).toBeGreaterThanOrEqual(10);
  expect(after.stamped - before.stamped).toBe(after.newFlows - before.newFlows);
  // Without the library (a static binary, a cleared environment): decided by its association.
  expect(await inPod(curlConnects(ports.denied, 2))).toEqual(['x', 'x']);
  expect(await metric(owner, 'naat_application_denials_total', { application: 'curl' })).toBeGreaterThanOrEqual(
    deniedBefore + 5,
  );
  // The pod's other flows leave with the failover address.
  expect(await f.whoami()).toMatch(new RegExp(`^${floating.v4.replaceAll('.', '\\.')} `));
}

interface Download {
  sourcePort: number;
  /** What the server sends. */
  bytes: number;
  /** Every byte received and the connection closed by the server. */
  done: Promise<{ bytes: number }>;
}

/** A python3 download from the pod (container "web", stamped) of `seconds` × `rate` bytes, leaving with the failover address. */
async function startDownload(seconds: number, rate: number): Promise<Download> {
  const assignments = Object.entries({ ...f.preloaded, NAAT_CONTAINER_NAME: 'web' }).map(([k, v]) => `${k}=${v}`);
  const child = f.c.spawn(
    f.c.pod(1),
    ['env', ...assignments, 'python3', '-c', pythonDownload(server.v4, ports.download, seconds, rate)],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  const sourcePort = Number((await lines.next()).value);
  const done = (async () => {
    const last = await lines.next();
    await exited(child);
    return { bytes: Number(last.value) };
  })();
  done.catch(() => {});
  return { sourcePort, bytes: seconds * rate, done };
}

/** The flow of the download at gateway node `node`, once it is known there to be python3's. */
const downloadFlow = (node: string, sourcePort: number) =>
  until(`the download at ${node}, attributed`, async () =>
    (await agentGet<AttributedFlow[]>(node, '/flows')).find(
      (flow) => flow.source === pod.v4 && flow.sourcePort === sourcePort && flow.application?.processName === 'python3',
    ),
  );

async function attribution(node: string, port: number): Promise<AttributionRecord[]> {
  const query = new URLSearchParams({ address: floating.v4, port: String(port), at: new Date().toISOString() });
  return agentGet<AttributionRecord[]>(node, `/attribution?${query}`);
}

describe.each<[Fault, string]>([
  ['drain', 'drained'],
  ['power-off', 'powered off'],
])('the owner of the pod’s failover address %s', (fault, _what) => {
  it('leaves the other node deciding, classifying and attributing the pod’s flows as it did, the moved flow too', async () => {
    const from = (await f.owners()).get(floating.v4)!;
    const standby = other(from);
    await decidesApplications(from);

    // Long enough that the new owner's agent lists its conntrack table (every 10 s) twice while the
    // moved download still runs: the second listing counts ten seconds of it there, whatever the
    // listings' phase.
    const seconds = 24;
    const rate = 20_000;
    const download = await startDownload(seconds, rate);
    const before = await downloadFlow(from, download.sourcePort);
    expect(before).toMatchObject({ mappedAddress: floating.v4, uplinkName: 'isp1' });
    // Before any fault, the other node's kernel holds the pod's stamps and the download's
    // association: the relay streams every association to every gateway node that is up.
    expect(await mapOf(standby, 'stamps4')).toContain(`${pod.v4} . `);
    await until(
      'the download’s association at the other node',
      async () =>
        (await mapOf(standby, 'flows4')).includes(`${pod.v4} . tcp . ${download.sourcePort} : goto`) || undefined,
    );

    const run = await f.fault(fault, 5);
    console.log(`${fault}: ${JSON.stringify(run)}`);
    try {
      await afterTheMove(run, download, before);
    } finally {
      // The node back, so that a failure leaves the next test a whole cluster.
      await f.restore(fault, Number(from.slice(1)));
      await f.settled();
    }
    expect((await f.owners()).get(floating.v4)).toBe(standby);
    await decidesApplications(standby);
  }, 180_000);
});

/** What the new owner does with the download that moved to it, and the download itself. */
async function afterTheMove(run: FaultRun, download: Download, before: AttributedFlow): Promise<void> {
  const standby = other(run.from);
  expect(run.to).toBe(standby);
  expect({ survived: run.streamsSurvived }).toEqual({ survived: run.streams });

  // The moved download at the new owner: the same translation, attributed, its bytes counted there.
  const moved = await downloadFlow(standby, download.sourcePort);
  expect(moved).toMatchObject({
    mappedAddress: floating.v4,
    mappedPort: before.mappedPort,
    uplinkName: 'isp1',
    pod: { namespace: f.namespace, name: 'web' },
  });
  // The kernel may reuse the mapped port for a flow to another destination: only the download's counts.
  const records = await attribution(standby, before.mappedPort!);
  expect(records.filter((r) => r.destinationPort === ports.download)).toMatchObject([
    {
      source: pod.v4,
      sourcePort: download.sourcePort,
      uplink: 'isp1',
      pod: { namespace: f.namespace, name: 'web' },
      container: 'web',
      application: { processName: 'python3' },
      verdict: 'Allow',
    },
  ]);
  // Its bytes after the move counted at the new owner, as its agent's listings see them while it
  // runs (a closing flow is left out of them): a good part of the download, not all of it. (Its
  // record there ends only after the kernel's own TIME_WAIT: docs/failover.md, limits.)
  const counted = await until(
    'the download’s bytes counted at the new owner',
    async () => {
      const flow = (await agentGet<AttributedFlow[]>(standby, '/flows')).find(
        (f) => f.source === pod.v4 && f.sourcePort === download.sourcePort,
      );
      return flow?.counters && flow.counters.bytesReceived > download.bytes / 10 ? flow.counters : undefined;
    },
    25_000,
  );
  expect(counted.bytesReceived).toBeLessThan(download.bytes);
  expect(await download.done).toEqual({ bytes: download.bytes });
}

describe('a gateway node drained the way a cluster drains it, through the operator’s compile', () => {
  const label = `naat-test/failover-${process.pid}`;
  const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
  let drainNodes: string[] = [];

  const [uplink] = [
    validate('Uplink', {
      apiVersion: 'naat.dev/v1alpha1',
      kind: 'Uplink',
      metadata: { name: 'isp1', labels: { [label]: 'true' } },
      spec: { interface: 'up1', nextHop: { ipv4: sharedNextHop(1).v4, ipv6: sharedNextHop(1).v6 }, snat: {} },
    }),
  ];

  /** The gateway config's failover.draining as the operator compiles it from the Nodes the API server holds now. */
  async function compiledDraining(): Promise<string[]> {
    const gateway = validate('EgressGateway', {
      apiVersion: 'naat.dev/v1alpha1',
      kind: 'EgressGateway',
      metadata: { name: 'ha' },
      spec: {
        nodeSelector: { [label]: 'true' },
        namespaceSelector: { matchLabels: { [label]: 'true' } },
        uplinks: { selector: { matchLabels: { [label]: 'true' } } },
        failover: {
          addresses: [floating.v4, floating.v6].map((address) => ({ address, uplink: 'isp1' })),
          leaseDurationMilliseconds: leaseDurationMs,
          drainNodes,
        },
      },
    });
    if (!gateway.ok) throw new Error(gateway.errors.join('; '));
    if (!uplink.ok) throw new Error(uplink.errors.join('; '));
    const nodes = JSON.parse(await k(['get', 'nodes', '-l', `${label}=true`, '-o', 'json'])) as { items: V1Node[] };
    const { config } = compileGateway({
      gateway: gateway.value as EgressGateway,
      uplinks: [uplink.value as Uplink],
      policies: [],
      pods: [],
      namespaces: new Map(),
      nodes: nodes.items.map(nodeFacts),
      bypass: [],
    });
    return config.failover!.draining;
  }

  beforeAll(async () => {
    for (const node of ['g1', 'g2']) {
      await k(
        ['create', '-f', '-'],
        JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: node, labels: { [label]: 'true' } } }),
      );
    }
    expect(await compiledDraining()).toEqual([]);
  });

  afterAll(async () => {
    await k(['delete', 'nodes', '-l', `${label}=true`, '--wait=false']).catch(() => {});
  });

  const cordoned = async (node: string, drained: boolean) => {
    await k([drained ? 'cordon' : 'uncordon', node]);
    const { spec } = JSON.parse(await k(['get', 'node', node, '-o', 'json'])) as V1Node;
    expect(spec?.unschedulable ?? false).toBe(drained);
    return compiledDraining();
  };
  const named = async (node: string, drained: boolean) => {
    drainNodes = drained ? [node] : [];
    return compiledDraining();
  };

  it.each([
    ['its Node is cordoned, and nothing back when it is uncordoned', cordoned],
    ['the gateway names it in drainNodes, and nothing back when it no longer does', named],
  ])(
    'moves the addresses with no lost flow when %s',
    async (_how, drainWith) => {
      f.drainWith = drainWith;
      const run = await f.fault('drain', 20);
      console.log(`${drainWith === cordoned ? 'cordon' : 'drainNodes'}: ${JSON.stringify(run)}`);
      await f.restore('drain', Number(run.from.slice(1)));
      await new Promise((resolve) => setTimeout(resolve, 3 * leaseDurationMs));
      const after = await f.holders();
      await f.settled();

      expect(run.to).toBe(other(run.from));
      expect({ survived: run.streamsSurvived }).toEqual({ survived: run.streams });
      // One translation for the UDP stream across the move. (The probe's new connections are not
      // judged here: unassociated flows are held, so its first SYNs wait for their association.)
      expect(run.udpSources).toHaveLength(1);
      expect(run.doubleOwnershipMs).toBe(0);
      expect(await compiledDraining()).toEqual([]);
      // Back in service, it takes nothing back (no failback), and no other node has the addresses.
      expect(after.get(floating.v4)).toEqual([run.to]);
      expect(after.get(floating.v6)).toEqual([run.to]);
    },
    120_000,
  );
});
