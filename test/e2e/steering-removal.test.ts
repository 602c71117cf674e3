// A node leaving its gateways, end to end, with the node agent run as the operator runs it:
// `dataplane/main.ts node --config-map NAMESPACE/NAME --report` on worker 1 of the multi-node
// topology (cluster-topology.ts), reading its NodeConfig from a ConfigMap in the real control plane
// and reporting into the EgressGateways' status. Worker 1 steers to two gateways, A (gateway node
// g1) and B (g2), each with its own gateway agent. A gateway dropped from the NodeConfig must take
// away its steering (VXLAN device, FDB and neighbour entries, ip rules, routes) and its status
// entry, and leave the other's working; the ConfigMap deleted and the agent stopped with SIGTERM
// must leave nothing of naat in the node's kernel, not even a conntrack mark.
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiVersion, group } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { nodeTunnelOwnership } from '../../dataplane/steering/node-plan.ts';
import type { SteeringNodeEntry } from '../../dataplane/steering/report.ts';
import { tunnelDeviceName } from '../../dataplane/steering/tunnel.ts';
import { kubectl } from '../cluster/cluster.ts';
import {
  createCluster,
  gatewayAddress,
  gatewayUplinks,
  isps,
  nodeNetwork,
  podAddress,
  podNetwork,
  uplinkAddress,
  workerAddress,
  type Cluster,
} from './cluster-topology.ts';
import { apiserverOf, relayIntoNamespace } from './naa-pod.ts';
import { server, until } from './topology.ts';
import { connectMany, startWhoami, type Server } from './traffic.ts';
import { LoggedProcesses } from './logged-processes.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
const namespace = `steer-removal-${process.pid}`;
const configMap = 'naat-node-w1';
const whoamiPort = 9000;
const markMask = 0xe0;
const port = 4790;

type DualStack = { v4: string; v6: string };
const bothFamilies = (address: DualStack) => [address.v4, address.v6];

/** Gateway A serves worker 1's pod through g1; B serves another address of worker 1 through g2. */
const gws = [
  { name: `steer-rm-a-${process.pid}`, g: 1, vni: 7700, associationPort: 7740, pod: podAddress(1) },
  {
    name: `steer-rm-b-${process.pid}`,
    g: 2,
    vni: 7701,
    associationPort: 7750,
    pod: { v4: '10.244.1.3', v6: 'fd00:244:1::3' },
  },
] as const;
type Gw = (typeof gws)[number];
const [a, b] = gws;

const gatewayConfig = (gw: Gw) => ({
  version: 1,
  gateway: gw.name,
  hash: `${gw.name}-1`,
  sources: [podNetwork.v4, podNetwork.v6],
  pods: [{ namespace: 'shop', name: `web-${gw.vni}`, addresses: bothFamilies(gw.pod), node: 'w1' }],
  uplinks: gatewayUplinks(gw.g, whoamiPort),
  balancing: { mode: 'Weighted' },
  timeouts: {},
  steering: {
    tunnel: { vni: gw.vni, port },
    markMask: 0x10,
    sources: [{ node: 'w1', addresses: bothFamilies(workerAddress(1)) }],
  },
});

const nodeConfig = (hash: string, of: readonly Gw[]) => ({
  version: 1,
  node: 'w1',
  hash,
  markMask,
  gateways: of.map((gw) => ({
    gateway: gw.name,
    tunnel: { vni: gw.vni, port },
    selection: 'Pod',
    associationPort: gw.associationPort,
    healthPort: 7741,
    bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
    pods: [{ namespace: 'shop', name: `web-${gw.vni}`, addresses: bothFamilies(gw.pod) }],
    peers: [{ node: `g${gw.g}`, addresses: bothFamilies(gatewayAddress(gw.g)) }],
  })),
});

let c: Cluster;
let dir: string;
let nodeAgent: ChildProcess;
let processes: LoggedProcesses;
const servers: Server[] = [];

const log = (name: string) => processes.log(name);

/** Applies worker 1's ConfigMap with the NodeConfig for gateways `of`. */
function applyNodeConfig(hash: string, of: readonly Gw[]): Promise<string> {
  const manifest = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: configMap, namespace },
    data: { 'config.json': JSON.stringify(nodeConfig(hash, of)) },
  };
  return k(['apply', '--server-side', '-f', '-'], JSON.stringify(manifest));
}

interface NodeStatus {
  appliedHash?: string;
  peers: Array<{ gateway: string; node: string; id: number; up: boolean }>;
}

async function nodeStatus(): Promise<NodeStatus> {
  const { stdout } = await c.exec(c.worker(1), ['curl', '-sf', 'http://127.0.0.1:7742/status']);
  return JSON.parse(stdout) as NodeStatus;
}

/** Waits until the node agent applied `hash` and sees every peer up; resolves with its status. */
const applied = (hash: string) =>
  until(`w1 to apply ${hash} with every peer up`, async () => {
    const status = await nodeStatus().catch(() => undefined);
    return status?.appliedHash === hash && status.peers.length && status.peers.every((p) => p.up) ? status : undefined;
  });

async function steeringEntries(gateway: string): Promise<SteeringNodeEntry[]> {
  const object = JSON.parse(await k(['get', 'egressgateway', gateway, '-o', 'json'])) as {
    status?: { steering?: { nodes?: SteeringNodeEntry[] } };
  };
  return object.status?.steering?.nodes ?? [];
}

/** What of naat's node agent is in the kernel of namespace `ns`, line by line, by kind. */
async function traces(ns: string) {
  const out = async (argv: string[]) => (await c.exec(ns, argv)).stdout.split('\n').filter(Boolean);
  const result = {
    tables: (await out(['nft', 'list', 'tables'])).filter((l) => l.includes('naat')),
    devices: (await out(['ip', '-o', 'link', 'show'])).filter((l) => /: naatn\d+[:@]/.test(l)),
    fdb: (await out(['bridge', 'fdb', 'show'])).filter((l) => / dev naatn\d/.test(l)),
    neighbours: [] as string[],
    rules: [] as string[],
    routes: [] as string[],
    marks: [] as string[],
  };
  for (const family of ['-4', '-6']) {
    result.neighbours.push(...(await out(['ip', family, 'neigh', 'show'])).filter((l) => / dev naatn\d/.test(l)));
    result.rules.push(
      ...(await out(['ip', family, 'rule', 'show'])).filter((l) =>
        nodeTunnelOwnership.preferences.includes(Number(/^(\d+):/.exec(l)?.[1])),
      ),
    );
    result.routes.push(
      ...(await out(['ip', family, 'route', 'show', 'table', 'all'])).filter((l) =>
        nodeTunnelOwnership.ownsTable(Number(/\btable (\d+)\b/.exec(l)?.[1])),
      ),
    );
  }
  for (const family of ['ipv4', 'ipv6']) {
    result.marks.push(
      ...(await out(['conntrack', '-L', '-f', family])).filter(
        (l) => (Number(/\bmark=(\d+)/.exec(l)?.[1]) & markMask) !== 0,
      ),
    );
  }
  return result;
}

const ofTable = (lines: string[], table: number) =>
  lines.filter((l) => new RegExp(`\\b(table|lookup) ${table}\\b`).test(l));

beforeAll(async () => {
  c = await createCluster();
  dir = await mkdtemp(join(tmpdir(), 'naat-steering-removal-'));
  processes = new LoggedProcesses({ dir, spawnIn: (ns, argv, options) => c.spawn(ns, argv, options) });
  await k(['apply', '--server-side', '--force-conflicts', '-f', join(root, 'crds', `${group}_egressgateways.yaml`)]);
  await k(['wait', '--for=condition=Established', '--timeout=60s', `crd/egressgateways.${group}`]);
  for (const gw of gws) {
    const object = {
      apiVersion,
      kind: 'EgressGateway',
      metadata: { name: gw.name },
      spec: { nodeSelector: { 'naat.dev/gateway': 'true' }, uplinks: { names: ['isp1'] }, namespaceSelector: {} },
    };
    await k(['apply', '--server-side', '-f', '-'], JSON.stringify(object));
  }
  await k(['create', 'namespace', namespace]);
  await applyNodeConfig('w1-1', gws);
  servers.push(await startWhoami(c, whoamiPort));

  for (const gw of gws) {
    await writeFile(join(dir, `${gw.name}.json`), JSON.stringify(gatewayConfig(gw)));
    const argv = ['run', '--config', join(dir, `${gw.name}.json`), '--node', `g${gw.g}`, '--listen', '[::]:7741'];
    processes.spawn(
      c.gateway(gw.g),
      [process.execPath, main, ...argv, '--state-dir', join(dir, `g${gw.g}-state`)],
      `g${gw.g}.log`,
    );
  }
  const apiserver = await apiserverOf(kubeconfig);
  await relayIntoNamespace(processes.spawn, dir, c.worker(1), 'apiserver-w1', apiserver, new URL(apiserver).hostname);
  nodeAgent = processes.spawn(
    c.worker(1),
    [
      process.execPath,
      main,
      'node',
      '--config-map',
      `${namespace}/${configMap}`,
      '--node',
      'w1',
      '--report',
      '--report-ms',
      '300',
      '--state-dir',
      join(dir, 'w1-state'),
    ],
    'w1.log',
  );
  await applied('w1-1');
}, 120_000);

afterAll(async () => {
  await processes?.stopAll();
  for (const s of servers) await s.stop();
  await c?.destroy();
  await k(['delete', 'namespace', namespace, '--wait=false']).catch(() => {});
  await k(['delete', 'egressgateway', ...gws.map((gw) => gw.name), '--ignore-not-found']).catch(() => {});
  const errors = (await Promise.all(['g1.log', 'g2.log', 'w1.log'].map(log)))
    .join('\n')
    .split('\n')
    .filter((line) => line.includes('"level":"error"'));
  if (errors.length) console.log(`errors logged:\n${errors.slice(0, 30).join('\n')}`);
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

describe('a node leaving its gateways, with the node agent run from its ConfigMap', () => {
  it('reports its steering into each EgressGateway’s status.steering.nodes', async () => {
    for (const gw of gws) {
      const entries = await until(`w1's entry in ${gw.name}`, async () => {
        const entries = await steeringEntries(gw.name);
        return entries.some((e) => e.node === 'w1' && e.ready) ? entries : undefined;
      });
      expect(entries).toEqual([
        { node: 'w1', ready: true, reason: 'Applied', hash: 'w1-1', since: expect.any(String) as string },
      ]);
    }
  });

  it('steers the pod’s flows through gateway A’s node, pinned by a conntrack mark', async () => {
    for (const address of bothFamilies(server)) {
      const { answers, failures } = await connectMany(c, c.pod(1), address, whoamiPort, 5);
      expect(failures).toBe(0);
      const ofA = isps.flatMap((i) => bothFamilies(uplinkAddress(a.g, i)));
      for (const answer of answers) expect(ofA).toContain(answer.split(' ')[0]);
    }
    expect((await traces(c.worker(1))).marks.length).toBeGreaterThanOrEqual(10);
  });

  it('takes away a gateway dropped from the NodeConfig, its status entry too, and keeps the other’s steering', async () => {
    const before = await nodeStatus();
    const idOf = (gw: Gw) => before.peers.find((p) => p.gateway === gw.name)!.id;
    const tableOf = (gw: Gw) => 7800 + idOf(gw);
    const had = await traces(c.worker(1));
    for (const gw of gws) {
      expect(had.devices.join('\n')).toContain(tunnelDeviceName('node', gw.vni));
      expect(had.fdb.filter((l) => l.includes(`dev ${tunnelDeviceName('node', gw.vni)} `))).not.toHaveLength(0);
      expect(had.neighbours.filter((l) => l.includes(`dev ${tunnelDeviceName('node', gw.vni)} `))).not.toHaveLength(0);
      expect(ofTable(had.rules, tableOf(gw))).not.toHaveLength(0);
      expect(ofTable(had.routes, tableOf(gw))).not.toHaveLength(0);
    }

    await applyNodeConfig('w1-2', [a]);
    await applied('w1-2');
    const left = await traces(c.worker(1));
    const bDevice = tunnelDeviceName('node', b.vni);
    expect(left.devices.join('\n')).not.toContain(bDevice);
    expect(left.fdb.filter((l) => l.includes(`dev ${bDevice} `))).toEqual([]);
    expect(left.neighbours.filter((l) => l.includes(`dev ${bDevice} `))).toEqual([]);
    expect(ofTable(left.rules, tableOf(b))).toEqual([]);
    expect(ofTable(left.routes, tableOf(b))).toEqual([]);
    // Gateway A's steering stays, and its flows still leave through g1.
    expect(left.devices.join('\n')).toContain(tunnelDeviceName('node', a.vni));
    expect(ofTable(left.rules, tableOf(a))).not.toHaveLength(0);
    expect(ofTable(left.routes, tableOf(a))).not.toHaveLength(0);
    const { failures } = await connectMany(c, c.pod(1), server.v4, whoamiPort, 5);
    expect(failures).toBe(0);

    await until(`w1's entry gone from ${b.name}`, async () =>
      (await steeringEntries(b.name)).length ? undefined : true,
    );
    await until(`w1's entry in ${a.name} at w1-2`, async () =>
      (await steeringEntries(a.name)).some((e) => e.node === 'w1' && e.hash === 'w1-2') ? true : undefined,
    );
  });

  it('leaves nothing of naat in the node’s kernel once its ConfigMap is deleted and it gets SIGTERM', async () => {
    await connectMany(c, c.pod(1), server.v6, whoamiPort, 5);
    expect((await traces(c.worker(1))).marks).not.toHaveLength(0);
    await k(['delete', 'configmap', configMap, '-n', namespace]);
    const exited = new Promise<number | null>((resolve) => nodeAgent.once('exit', resolve));
    nodeAgent.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(await log('w1.log')).toContain('the node config is gone, so the steering goes too');
    expect(await traces(c.worker(1))).toEqual({
      tables: [],
      devices: [],
      fdb: [],
      neighbours: [],
      rules: [],
      routes: [],
      marks: [],
    });
    // The gateway nodes keep their own steering.
    for (const gw of gws) {
      const { stdout } = await c.exec(c.gateway(gw.g), [
        'ip',
        '-o',
        'link',
        'show',
        tunnelDeviceName('gateway', gw.vni),
      ]);
      expect(stdout).toContain(tunnelDeviceName('gateway', gw.vni));
    }
  });
});
