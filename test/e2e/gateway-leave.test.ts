// A gateway node leaving its gateway while the gateway stays, end to end: the gateway agent run as
// its DaemonSet runs it (`dataplane/main.ts run --config-map NAMESPACE/NAME`) on gateway node g1 of
// the multi-node topology (cluster-topology.ts), with steering from worker 1, reading its config
// from a ConfigMap in the real control plane and its node from a Node object there. The DaemonSet
// controller stops the agent of a node that left exactly as it stops it for a rollout, and the
// ConfigMap stays; the test sends the SIGTERM itself (no kubelet runs the agent here). A node still
// selected keeps everything in its kernel, so flows survive a rollout; a node relabelled out of
// the gateway's nodeSelector, before the operator could write a config without it, or one the
// operator excluded, keeps nothing of naat.
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { kubectl } from '../cluster/cluster.ts';
import {
  createCluster,
  gatewayUplinks,
  podAddress,
  podNetwork,
  workerAddress,
  type Cluster,
} from './cluster-topology.ts';
import { apiserverOf, relayIntoNamespace } from './naa-pod.ts';
import { until } from './topology.ts';
import { startWhoami, type Server } from './traffic.ts';
import { LoggedProcesses } from './logged-processes.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
const namespace = `gw-leave-${process.pid}`;
const configMap = 'naat-gw-leave';
const node = `gw-leave-g1-${process.pid}`;
const vni = 7720;
const whoamiPort = 9000;
const selector = { 'naat.dev/gateway': 'leave' };

const config = (excludedNodes: string[]) => ({
  version: 1,
  gateway: 'leave',
  sources: [podNetwork.v4, podNetwork.v6],
  pods: [{ namespace: 'shop', name: 'web', addresses: [podAddress(1).v4, podAddress(1).v6], node: 'w1' }],
  uplinks: gatewayUplinks(1, whoamiPort).map((u) => ({ ...u, nodes: [node] })),
  balancing: { mode: 'Weighted' },
  timeouts: {},
  steering: {
    tunnel: { vni, port: 4791 },
    markMask: 0x10,
    sources: [{ node: 'w1', addresses: [workerAddress(1).v4, workerAddress(1).v6] }],
  },
  placement: { nodeSelector: selector, excludedNodes },
});

let c: Cluster;
let dir: string;
let processes: LoggedProcesses;
let whoami: Server | undefined;

const log = () => processes.log('g1.log');

function applyConfig(excludedNodes: string[]): Promise<string> {
  const manifest = {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: configMap, namespace },
    data: { 'config.json': JSON.stringify(config(excludedNodes)) },
  };
  return k(['apply', '--server-side', '--force-conflicts', '-f', '-'], JSON.stringify(manifest));
}

/** What of naat is in g1's kernel and state folder, by kind; all empty when nothing is. */
async function traces() {
  const ns = c.gateway(1);
  const out = async (argv: string[]) => (await c.exec(ns, argv)).stdout.split('\n').filter(Boolean);
  const result = {
    tables: (await out(['nft', 'list', 'tables'])).filter((l) => l.includes('naat')),
    devices: (await out(['ip', '-o', 'link', 'show'])).filter((l) => /: naat[ng]\d+[:@]/.test(l)),
    rules: [] as string[],
    routes: [] as string[],
    state: (await readdir(join(dir, 'state')).catch(() => [] as string[])).sort(),
  };
  for (const family of ['-4', '-6']) {
    result.rules.push(...(await out(['ip', family, 'rule', 'show'])).filter((l) => /^(7689|7690|77\d\d):/.test(l)));
    result.routes.push(
      ...(await out(['ip', family, 'route', 'show', 'table', 'all'])).filter((l) => /\btable (7690|77\d\d)\b/.test(l)),
    );
  }
  return result;
}

/**
 * Starts the agent and waits until it answers (it stops on SIGTERM as it should from then on) and
 * its steering and uplinks are in the kernel.
 */
async function start(): Promise<ChildProcess> {
  const argv = ['run', '--config-map', `${namespace}/${configMap}`, '--node', node, '--listen', '127.0.0.1:7741'];
  const agent = processes.spawn(
    c.gateway(1),
    [process.execPath, main, ...argv, '--state-dir', join(dir, 'state')],
    'g1.log',
  );
  await until('the agent listening', async () => {
    await c.exec(c.gateway(1), ['curl', '-sf', 'http://127.0.0.1:7741/status']);
    return true;
  });
  await until('the agent’s steering and uplinks in the kernel', async () => {
    const t = await traces();
    return t.tables.length && t.devices.length && t.rules.length && t.routes.length && t.state.length
      ? true
      : undefined;
  });
  return agent;
}

/** SIGTERM, as the kubelet sends it; resolves with the lines the agent logged while it stopped. */
async function terminate(agent: ChildProcess): Promise<string> {
  const before = (await log()).length;
  const exited = new Promise<number | null>((resolve) => agent.once('exit', resolve));
  agent.kill('SIGTERM');
  expect(await exited).toBe(0);
  return (await log()).slice(before);
}

beforeAll(async () => {
  c = await createCluster();
  dir = await mkdtemp(join(tmpdir(), 'naat-gateway-leave-'));
  processes = new LoggedProcesses({ dir, spawnIn: (ns, argv, options) => c.spawn(ns, argv, options) });
  await k(['create', 'namespace', namespace]);
  await k(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: node, labels: selector } }),
  );
  await applyConfig([]);
  whoami = await startWhoami(c, whoamiPort);
  const apiserver = await apiserverOf(kubeconfig);
  await relayIntoNamespace(processes.spawn, dir, c.gateway(1), 'apiserver-g1', apiserver, new URL(apiserver).hostname);
}, 120_000);

afterAll(async () => {
  await processes?.stopAll();
  await whoami?.stop();
  await c?.destroy();
  await k(['delete', 'namespace', namespace, '--wait=false']).catch(() => {});
  await k(['delete', 'node', node, '--ignore-not-found']).catch(() => {});
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

describe('a gateway node stopped while its gateway stays', () => {
  it('keeps everything in the kernel while the node still has the gateway’s nodeSelector (a rollout)', async () => {
    const agent = await start();
    const had = await traces();
    expect(await terminate(agent)).toContain('the kernel keeps the ruleset');
    // And its attribution log, for the next run on the node to take back.
    expect(await traces()).toEqual({ ...had, state: [...had.state, 'attribution.jsonl'].sort() });
  });

  it('leaves nothing of naat once the node is relabelled out of nodeSelector, before the config says so', async () => {
    const agent = await start();
    await k(['label', 'node', node, 'naat.dev/gateway=elsewhere', '--overwrite']);
    const stopped = await terminate(agent);
    expect(stopped).toContain('this node left the gateway');
    expect(stopped).toContain("the node no longer has nodeSelector's naat.dev/gateway=leave");
    expect(await traces()).toEqual({ tables: [], devices: [], rules: [], routes: [], state: [] });
  });

  it('leaves nothing of naat on a node the operator excluded from the gateway, whatever its labels', async () => {
    await k(['label', 'node', node, 'naat.dev/gateway=leave', '--overwrite']);
    const agent = await start();
    await applyConfig([node]);
    const stopped = await terminate(agent);
    expect(stopped).toContain('excluded: another gateway holds its ports on the node');
    expect(await traces()).toEqual({ tables: [], devices: [], rules: [], routes: [], state: [] });
  });
});
