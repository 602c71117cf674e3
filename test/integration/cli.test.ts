// The naat CLI's `status` and `explain` against the real apiserver: they find a gateway's objects
// by the names and labels the operator gives them (contracts/gateway/objects.ts), read the status
// the operator and the agents write, and explain a pod's flows from the ConfigMap's compiled config.
// Here the objects are written as the operator and agents would; test/e2e/real-node.test.ts (its
// CLI section) runs the CLI against a real installation, flows and attribution included.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { agentConfigKey, gatewayLabels, gatewayObjectName, parseGatewayConfig } from '../../contracts/gateway/index.ts';
import { apiVersion } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { kubectl } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { until } from '../e2e/topology.ts';

const run = promisify(execFile);
const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const apply = (items: object[]) => k(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
const namespace = `naat-cli-${process.pid}`;
const apps = `naat-cli-apps-${process.pid}`;
const gateway = `cli-${process.pid}`;
const uplink = `cli-${process.pid}-isp`;
const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');

const naat = async (args: string[]) =>
  (await run(process.execPath, [join(root, 'cli/main.ts'), ...args, '-n', namespace], { env: process.env })).stdout;
const condition = (type: string, status: 'True' | 'False', reason: string, message: string) => ({
  type,
  status,
  reason,
  message,
  lastTransitionTime: now,
});

beforeAll(async () => {
  await installCrds(process.env.KUBECONFIG!);
  await apply([
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: apps } },
    {
      apiVersion,
      kind: 'Uplink',
      metadata: { name: uplink },
      spec: { interface: 'eth1', nextHop: { ipv4: '192.0.2.1' }, snat: { addresses: ['203.0.113.7'] } },
    },
    {
      apiVersion,
      kind: 'EgressGateway',
      metadata: { name: gateway },
      spec: { nodeSelector: { 'naat.dev/gateway': 'true' }, uplinks: { names: [uplink] }, namespaceSelector: {} },
    },
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'app', namespace: apps },
      spec: { nodeName: 'worker-a', containers: [{ name: 'app', image: 'app:test' }] },
    },
    // The agent's pod as the operator's DaemonSet makes it, on a gateway node.
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: `${gatewayObjectName(gateway)}-a`, namespace, labels: gatewayLabels(gateway) },
      spec: {
        nodeName: 'gateway-a',
        containers: [
          {
            name: 'dataplane',
            image: 'dataplane:test',
            args: ['run', '--listen', ':9091', '--local-listen', '127.0.0.1:9095', '--report'],
          },
        ],
      },
    },
  ]);
}, 120_000);

afterAll(async () => {
  await k(['delete', 'egressgateway', gateway, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', uplink, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'namespace', namespace, apps, '--wait=false']);
});

test('status and explain read a gateway from the apiserver as the operator and its agents write it', async () => {
  const address = await until('the pod address', async () => {
    const pod = JSON.parse(await k(['get', 'pod', 'app', '-n', apps, '-o', 'json']));
    return pod.status?.podIP as string | undefined;
  });
  const config = parseGatewayConfig({
    version: 1,
    gateway,
    sources: [address],
    pods: [{ namespace: apps, name: 'app', addresses: [address] }],
    uplinks: [
      { name: uplink, interface: 'eth1', nextHop: { ipv4: '192.0.2.1' }, snat: { addresses: ['203.0.113.7'] } },
    ],
    balancing: {},
    timeouts: {},
    rules: [
      {
        policy: `${apps}/no-ssh`,
        rule: 'deny-ssh',
        priority: 10,
        sources: [address],
        destinations: [{ protocol: 'TCP', ports: [{ port: 22 }] }],
        action: 'Deny',
      },
    ],
  });
  await apply([
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: gatewayObjectName(gateway), namespace, labels: gatewayLabels(gateway) },
      data: { [agentConfigKey]: JSON.stringify(config) },
    },
  ]);
  await k([
    'patch',
    'uplink',
    uplink,
    '--subresource=status',
    '--type=merge',
    '-p',
    JSON.stringify({
      status: {
        nodes: [{ node: 'gateway-a', healthy: true, since: now, activeFlows: 2, portUtilisationPercent: 1 }],
      },
    }),
  ]);
  await k([
    'patch',
    'egressgateway',
    gateway,
    '--subresource=status',
    '--type=merge',
    '-p',
    JSON.stringify({
      status: {
        desiredNodes: 1,
        readyNodes: 1,
        conditions: [
          condition('Accepted', 'True', 'Resolved', 'every uplink exists'),
          condition('Ready', 'True', 'Serving', '1 node serves'),
        ],
      },
    }),
  ]);

  const status = JSON.parse(await naat(['status', '-o', 'json']));
  expect(status.gateways).toContainEqual({
    name: gateway,
    ready: 'True',
    accepted: 'True',
    steeringReady: 'Unknown',
    readyNodes: 1,
    desiredNodes: 1,
    uplinks: [uplink],
  });
  expect(status.nodes).toContainEqual({
    gateway,
    node: 'gateway-a',
    pod: `${gatewayObjectName(gateway)}-a`,
    ready: expect.any(Boolean),
    localPort: 9095,
  });
  expect(status.uplinks).toContainEqual(
    expect.objectContaining({ uplink, gateway, node: 'gateway-a', healthy: true, activeFlows: 2 }),
  );
  expect(status.addresses).toContainEqual({ address: '203.0.113.7', uplink, gateway, owners: ['gateway-a'] });
  expect(status.failovers).toContainEqual({ at: now, uplink, node: 'gateway-a', healthy: true });
  expect(parse(await naat(['status', '-o', 'yaml']))).toEqual(status);
  expect(await naat(['status'])).toMatch(new RegExp(`^${gateway} +True +1/1 +Unknown +${uplink}$`, 'm'));

  const denied = JSON.parse(await naat(['explain', '--pod', `${apps}/app`, '--to', '198.51.100.1:22', '-o', 'json']));
  expect(denied.flows).toEqual([
    { gateway, node: 'gateway-a', source: address, allowed: false, rule: `${apps}/no-ssh#deny-ssh`, candidates: [] },
  ]);
  const allowed = JSON.parse(await naat(['explain', '--pod', `${apps}/app`, '--to', '198.51.100.1:443', '-o', 'json']));
  expect(allowed.flows).toEqual([
    { gateway, node: 'gateway-a', source: address, allowed: true, uplink, candidates: [uplink] },
  ]);
  await expect(naat(['explain', '--pod', `${apps}/missing`, '--to', '198.51.100.1:22'])).rejects.toMatchObject({
    stderr: `naat: pod ${apps}/missing not found\n`,
  });
}, 120_000);
