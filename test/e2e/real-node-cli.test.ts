// The naat CLI against a real node (test/cluster/node.ts), with naat installed by helm as a user
// would: a real pod's connection leaves through the gateway, and the CLI, run as a user who holds
// only the RBAC docs/cli.md lists, finds it with `flows`, names its pod with `who` and reads the
// gateway with `status`, all through the apiserver (the agent's loopback listener by the apiserver's
// port-forward to its host-network pod); `explain` gives the rule that denies another destination.
// A user without the chart's CLI Role is told that pods/portforward was refused.
import { execFile } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { apiVersion } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { serviceAccountKubeconfig, startCluster, type Cluster } from '../cluster/cluster.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { buildImages, helmImageValues, imageRepository, imageTag } from '../cluster/images.ts';
import { realNode } from '../cluster/node.ts';
import { until } from './topology.ts';

const run = promisify(execFile);
const chart = join(root, 'charts/naat');
const release = 'naat';
const namespace = 'naat-system';
const gateway = 'cli';
const apps = 'cli-apps';
const users = 'cli-users';
/** A second address of the node's link, as in real-node.test.ts. */
const uplinkAddress = '172.30.250.3';
/** Servers on the machine, beyond the uplink: one that holds connections, one the policy denies. */
const echoPort = 9001;
const deniedPort = 9002;

let cluster: Cluster;
let echo: Server;
const held = new Set<Socket>();
const k = (args: string[], input?: string) => cluster.kubectl(args, input);
const apply = (items: object[]) => k(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));

/** What the CLI last printed, or its error: said when a wait for its answer times out. */
let lastAnswer = '';

/** Runs the CLI with `kubeconfig`; its output, or the error with its stderr. */
async function naat(kubeconfig: string, args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [join(root, 'cli/main.ts'), ...args, '-n', namespace], {
    env: { ...process.env, KUBECONFIG: kubeconfig },
  }).catch((error: Error & { stderr?: string }) => {
    lastAnswer = `naat ${args.join(' ')} failed: ${error.stderr || error.message}`;
    throw error;
  });
  lastAnswer = `naat ${args.join(' ')}: ${stdout.slice(0, 2000)}`;
  return stdout;
}

/** `until`, whose timeout says what the CLI last answered. */
const untilAnswered = <T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number) =>
  until(what, probe, timeoutMs).catch((error: Error) => {
    throw new Error(`${error.message}; ${lastAnswer}`);
  });

/** A ServiceAccount's kubeconfig, bound to `roles` (ClusterRoles, or the chart's CLI Role). */
async function user(name: string, bindings: object[]): Promise<string> {
  await apply([{ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace: users } }, ...bindings]);
  const dir = await mkdtemp(join(tmpdir(), 'naat-cli-'));
  return serviceAccountKubeconfig(cluster.kubeconfig, users, name, join(dir, 'kubeconfig'));
}
const subject = (name: string) => [{ kind: 'ServiceAccount', name, namespace: users }];

beforeAll(async () => {
  const [images, helmBinary] = await Promise.all([buildImages(), buildHelm()]);
  cluster = await startCluster({ workloads: true, realNode: true });
  await cluster.node!.importImages(Object.values(images));
  await k(['label', 'node', realNode.name, 'naat.dev/gateway=true']);
  await helm(
    helmBinary,
    [
      'install',
      release,
      chart,
      '--create-namespace',
      ...helmImageValues,
      '--wait',
      '--timeout',
      '180s',
      '-n',
      namespace,
    ],
    cluster.kubeconfig,
  );
  echo = createServer((socket) => {
    held.add(socket);
    socket.on('data', (data) => socket.write(data)).on('error', () => undefined);
  });
  await new Promise<void>((resolve) => echo.listen(echoPort, realNode.hostAddress, resolve));
}, 20 * 60_000);

afterAll(async () => {
  for (const socket of held) socket.destroy();
  await new Promise<void>((resolve) => (echo ? echo.close(() => resolve()) : resolve()));
  await cluster?.stop();
});

test('the CLI reads status, flows and attribution through the apiserver, and explains a denial', async () => {
  await cluster.node!.exec('ip', ['addr', 'add', `${uplinkAddress}/${realNode.linkPrefix}`, 'dev', 'eth0']);
  await apply([
    {
      apiVersion,
      kind: 'Uplink',
      metadata: { name: gateway },
      spec: { interface: 'eth0', nextHop: { ipv4: realNode.hostAddress }, snat: { addresses: [uplinkAddress] } },
    },
    {
      apiVersion,
      kind: 'EgressGateway',
      metadata: { name: gateway },
      spec: {
        nodeSelector: { 'naat.dev/gateway': 'true' },
        uplinks: { names: [gateway] },
        namespaceSelector: { matchLabels: { egress: gateway } },
      },
    },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: apps, labels: { egress: gateway } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: users } },
    {
      apiVersion,
      kind: 'EgressPolicy',
      metadata: { name: 'no-9002', namespace: apps },
      spec: {
        gateway,
        podSelector: {},
        priority: 10,
        rules: [
          {
            name: 'deny-9002',
            destinations: [{ cidr: `${realNode.hostAddress}/32`, protocol: 'TCP', ports: [{ port: deniedPort }] }],
            action: 'Deny',
          },
        ],
      },
    },
    {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'app', namespace: apps },
      spec: {
        terminationGracePeriodSeconds: 1,
        containers: [
          {
            name: 'app',
            image: `${imageRepository('operator')}:${imageTag}`,
            imagePullPolicy: 'Never',
            command: ['node', '-e', 'setInterval(() => {}, 1 << 30)'],
          },
        ],
      },
    },
    // What docs/cli.md asks of a CLI user: naat's objects and the pods it explains, cluster-wide…
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRole',
      metadata: { name: 'naat-cli-reader' },
      rules: [
        { apiGroups: ['naat.dev'], resources: ['egressgateways', 'uplinks'], verbs: ['get', 'list'] },
        { apiGroups: [''], resources: ['pods'], verbs: ['get'] },
      ],
    },
  ]);
  const reader = (name: string) => ({
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRoleBinding',
    metadata: { name },
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'naat-cli-reader' },
    subjects: subject(name),
  });
  // …and the chart's Role in the release namespace, for the agents' pods, ConfigMaps and port-forward.
  const operatorOfCli = await user('cli-user', [
    reader('cli-user'),
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: 'cli-user', namespace },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: `${release}-cli` },
      subjects: subject('cli-user'),
    },
  ]);
  await k(['wait', '--for=condition=Ready', 'pod/app', '-n', apps, '--timeout=120s']);
  await until(
    'a Ready gateway agent',
    async () => {
      const out = await k(['get', 'pods', '-n', namespace, '-l', `naat.dev/gateway=${gateway}`, '-o', 'json']);
      const pods = JSON.parse(out).items as { status: { conditions?: { type: string; status: string }[] } }[];
      return pods.some((p) => p.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
        ? true
        : undefined;
    },
    120_000,
  );

  // A connection the pod holds open through the gateway.
  const connection = k([
    'exec',
    '-n',
    apps,
    'app',
    '--',
    'node',
    '-e',
    `const s = require('net').connect(${echoPort}, '${realNode.hostAddress}', () => s.write('x'));
s.on('data', (d) => { if (String(d).includes('bye')) process.exit(0); });
s.on('error', () => process.exit(1));
setTimeout(() => process.exit(0), 60000);`,
  ]).catch(() => undefined);
  const socket = await until('the held connection', async () => [...held][0], 60_000);

  const flows = await untilAnswered(
    'the flow in naat flows',
    async () => {
      const found = JSON.parse(await naat(operatorOfCli, ['flows', '--pod', `${apps}/app`, '-o', 'json'])) as {
        gateway: string;
        node: string;
        flow: { mappedAddress: string; mappedPort: number; uplinkName: string; pod?: { name: string } };
      }[];
      return found.find((f) => f.flow.mappedPort === socket.remotePort) ? found : undefined;
    },
    60_000,
  );
  expect(flows.find((f) => f.flow.mappedPort === socket.remotePort)).toMatchObject({
    gateway,
    node: realNode.name,
    flow: { mappedAddress: uplinkAddress, uplinkName: gateway, pod: { namespace: apps, name: 'app' } },
  });
  // The uplink filter leaves nothing of another uplink's.
  expect(JSON.parse(await naat(operatorOfCli, ['flows', '--uplink', 'elsewhere', '-o', 'json']))).toEqual([]);

  const who = JSON.parse(
    await naat(operatorOfCli, ['who', '--address', uplinkAddress, '--port', String(socket.remotePort), '-o', 'json']),
  );
  expect(who).toMatchObject([
    {
      gateway,
      node: realNode.name,
      record: { pod: { namespace: apps, name: 'app' }, uplink: gateway, verdict: 'Allow' },
    },
  ]);
  socket.write('bye\n');
  await connection;

  const status = JSON.parse(await naat(operatorOfCli, ['status', '-o', 'json']));
  expect(status.gateways).toMatchObject([{ name: gateway, uplinks: [gateway] }]);
  expect(status.nodes).toMatchObject([{ gateway, node: realNode.name, ready: true }]);
  const health = await untilAnswered(
    'the uplink health reported',
    async () => {
      const current = JSON.parse(await naat(operatorOfCli, ['status', '-o', 'json']));
      return current.uplinks.find((u: { healthy?: boolean }) => u.healthy !== undefined) ? current : undefined;
    },
    60_000,
  );
  expect(health.uplinks).toMatchObject([{ uplink: gateway, node: realNode.name, healthy: true }]);
  expect(health.addresses).toEqual([{ address: uplinkAddress, uplink: gateway, gateway, owners: [realNode.name] }]);

  const explained = JSON.parse(
    await naat(operatorOfCli, [
      'explain',
      '--pod',
      `${apps}/app`,
      '--to',
      `${realNode.hostAddress}:${deniedPort}`,
      '-o',
      'json',
    ]),
  );
  expect(explained.flows).toMatchObject([
    { gateway, node: realNode.name, allowed: false, rule: `${apps}/no-9002#deny-9002` },
  ]);
  const allowed = JSON.parse(
    await naat(operatorOfCli, [
      'explain',
      '--pod',
      `${apps}/app`,
      '--to',
      `${realNode.hostAddress}:${echoPort}`,
      '-o',
      'json',
    ]),
  );
  expect(allowed.flows).toMatchObject([{ gateway, node: realNode.name, allowed: true, uplink: gateway }]);

  // Without the chart's Role the agents cannot even be listed; with pods but without
  // pods/portforward, the port-forward is refused and the CLI says by whom.
  const lister = await user('cli-lister', [
    reader('cli-lister'),
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: { name: 'cli-lister', namespace },
      rules: [{ apiGroups: [''], resources: ['pods', 'configmaps'], verbs: ['get', 'list'] }],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: 'cli-lister', namespace },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'cli-lister' },
      subjects: subject('cli-lister'),
    },
  ]);
  const refused = await naat(lister, ['flows']).then(
    () => 'no error',
    (error: { stderr?: string }) => error.stderr ?? '',
  );
  expect(refused).toContain(
    `naat: the agent of gateway ${gateway} on node ${realNode.name} could not be reached through pods/portforward`,
  );
}, 600_000);
