// A gateway's config as the operator stores it, an index and slices (contracts/gateway/slices.ts),
// against the real apiserver: the operator (`node operator/main.ts`) writes a config too large for
// one slice into several, the gateway agent's config source, with the gateway's own
// ServiceAccount (so with only the Role's get and watch by name), hands on the assembled config;
// a new pod rewrites one slice; fewer slices are deleted after the index that drops them, and the
// Role then names only the rest; and a half-written set (a slice of a new version before its
// index) is not handed on until the index that names it arrives.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import {
  configIndexKey,
  configSliceKey,
  configSliceLabel,
  gatewayLabel,
  gatewayObjectName,
  parseGatewayConfig,
  sliceHash,
  type ConfigIndex,
  type ConfigSlice,
  type GatewayConfig,
} from '../../contracts/gateway/index.ts';
import { apiVersion } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { watchGatewayConfig, type ConfigSource } from '../../dataplane/config-source.ts';
import { kubectl, serviceAccountKubeconfig } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { operatorSettings, servedGateway, webhookObjects } from '../cluster/operator.ts';
import { until } from '../e2e/topology.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const id = `sl${process.pid}`;
const system = `naat-${id}`;
const apps = `apps-${id}`;
let dir: string;
let operator: ChildProcess | undefined;
let output = '';
let source: ConfigSource | undefined;

const apply = (object: unknown) =>
  k(['apply', '--server-side', '--field-manager=test', '-f', '-'], JSON.stringify(object));

const pod = (name: string, app: string) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: apps, labels: { app } },
  spec: { nodeName: 'worker-a', containers: [{ name: 'app', image: 'app:test' }] },
});

/** 50 rules, each a destination of its own: 24 of them make a config of about 240 KB, two slices' worth or more. */
const policy = (i: number) => ({
  apiVersion,
  kind: 'EgressPolicy',
  metadata: { name: `policy-${i}`, namespace: apps },
  spec: {
    gateway: id,
    podSelector: { matchLabels: { app: 'web' } },
    priority: i,
    rules: Array.from({ length: 50 }, (_, r) => ({
      name: `rule-${r}`,
      action: 'Deny',
      destinations: [{ cidr: `198.51.${i}.${r}/32`, protocol: 'TCP', ports: [{ port: 1000 + r }] }],
    })),
  },
});

interface StoredConfigMap {
  metadata: { name: string; resourceVersion: string; labels?: Record<string, string> };
  data: Record<string, string>;
}

/** The gateway's slices as stored, by name. */
async function slices(): Promise<Map<string, StoredConfigMap>> {
  const list = JSON.parse(
    await k(['get', 'configmaps', '-n', system, '-l', `${configSliceLabel},${gatewayLabel}=${id}`, '-o', 'json']),
  ) as { items: StoredConfigMap[] };
  return new Map(list.items.map((cm) => [cm.metadata.name, cm]));
}

const stored = async (name: string) =>
  JSON.parse(await k(['get', 'configmap', name, '-n', system, '-o', 'json'])) as StoredConfigMap;
const index = async () => JSON.parse((await stored(gatewayObjectName(id))).data[configIndexKey]!) as ConfigIndex;
const roleNames = async () =>
  (
    JSON.parse(await k(['get', 'role', gatewayObjectName(id), '-n', system, '-o', 'json'])) as {
      rules: Array<{ resources: string[]; resourceNames?: string[] }>;
    }
  ).rules.find((r) => r.resources.includes('configmaps'))!.resourceNames!;
const configHash = async () =>
  JSON.parse(await k(['get', 'egressgateway', id, '-o', 'json'])).status?.configHash as string | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-slices-'));
  await installCrds(process.env.KUBECONFIG!);
  await k(['create', 'namespace', system]);
  for (const object of webhookObjects(`naat-${id}`, system)) await apply(object);
  for (const object of servedGateway(id, apps)) await apply(object);
  const items = [
    ...Array.from({ length: 20 }, (_, i) => pod(`web-${i}`, 'web')),
    ...Array.from({ length: 24 }, (_, i) => policy(i)),
  ];
  await k(['apply', '--server-side', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));
  const file = join(dir, 'operator.json');
  await writeFile(
    file,
    JSON.stringify(operatorSettings(`naat-${id}`, { metrics: 19300, health: 19301, webhook: 19302 })),
  );
  operator = spawn(process.execPath, [join(root, 'operator', 'main.ts')], {
    env: { ...process.env, NAAT_CONFIG: file, NAAT_NAMESPACE: system, NAAT_POD_NAME: 'operator' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  operator.stdout!.on('data', (d) => (output += d));
  operator.stderr!.on('data', (d) => (output += d));
}, 120_000);

afterAll(async () => {
  source?.stop();
  operator?.kill('SIGTERM');
  await k(['delete', 'mutatingwebhookconfiguration', `naat-${id}`, '--ignore-not-found']);
  await k(['delete', 'egressgateway', id, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', `${id}-isp`, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'namespace', apps, system, '--wait=false']);
  await rm(dir, { recursive: true, force: true });
});

test(
  'the agent assembles the sliced config; one pod rewrites one slice; a half-written set waits',
  () =>
    slicedConfigDelivered().catch((error: Error) => {
      throw new Error(`${error.message}\noperator:\n${output.slice(-3000)}`, { cause: error });
    }),
  180_000,
);

async function slicedConfigDelivered(): Promise<void> {
  // The agent's config source, as the gateway's ServiceAccount: its Role alone lets it read.
  await until('the gateway ServiceAccount', () =>
    k(['get', 'serviceaccount', gatewayObjectName(id), '-n', system]).then(() => true),
  );
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(
    await serviceAccountKubeconfig(
      process.env.KUBECONFIG!,
      system,
      gatewayObjectName(id),
      join(dir, 'agent.kubeconfig'),
    ),
  );
  const delivered: GatewayConfig[] = [];
  const errors: string[] = [];
  source = await watchGatewayConfig(
    kubeConfig,
    system,
    gatewayObjectName(id),
    (text) => delivered.push(parseGatewayConfig(JSON.parse(text))),
    (error) => errors.push(error.message),
  );
  const first = await until(
    'the config with every pod and rule at the agent',
    async () => delivered.find((c) => c.pods.length === 20 && c.rules.length === 24 * 50),
    60_000,
  );
  expect(first.rules[0]!.sources).toHaveLength(20);
  // The compiled config itself, as the gateway's status names it, held in several slices.
  await until('the gateway status naming it', async () => ((await configHash()) === first.hash ? true : undefined));
  expect((await index()).slices.length).toBeGreaterThanOrEqual(2);
  // No slice nor the index near the limit: the index holds no pod and no rule.
  for (const cm of [...(await slices()).values(), await stored(gatewayObjectName(id))]) {
    expect(Buffer.byteLength(JSON.stringify(cm))).toBeLessThan(256 * 1024);
  }
  expect(Buffer.byteLength((await stored(gatewayObjectName(id))).data[configIndexKey]!)).toBeLessThan(8 * 1024);

  // A pod no policy selects: its slice alone is rewritten (and the index, which names its hash).
  const before = await slices();
  await apply(pod('other-0', 'other'));
  const withPod = await until('the new pod at the agent', async () =>
    delivered.find((c) => c.pods.some((p) => p.name === 'other-0')),
  );
  expect(withPod.rules).toEqual(first.rules);
  const after = await slices();
  expect([...after.keys()]).toEqual([...before.keys()]);
  const rewritten = [...after].filter(
    ([name, cm]) => before.get(name)!.metadata.resourceVersion !== cm.metadata.resourceVersion,
  );
  expect(rewritten.map(([name]) => name)).toHaveLength(1);
  expect((JSON.parse(rewritten[0]![1].data[configSliceKey]!) as ConfigSlice).pods.map((p) => p.pod.name)).toContain(
    'other-0',
  );

  // Fewer rules need fewer slices: those no longer named go after the index, then from the Role.
  await k(['delete', 'egresspolicies', '-n', apps, ...Array.from({ length: 23 }, (_, i) => `policy-${i + 1}`)]);
  const one = await until('one slice left at the agent', async () => {
    const config = delivered.find((c) => c.rules.length === 50);
    const left = await slices();
    return config && left.size === 1 && (await roleNames()).length === 2 ? { config, left } : undefined;
  });
  expect(await roleNames()).toEqual([gatewayObjectName(id), ...one.left.keys()]);
  expect((await index()).slices.map((s) => s.name)).toEqual([...one.left.keys()]);

  // Half-written: a slice of a new version (a pod fewer) is not handed on without its index...
  operator!.kill('SIGTERM');
  await new Promise((resolve) => operator!.once('exit', resolve));
  const [name, cm] = [...one.left][0]!;
  const slice = JSON.parse(cm.data[configSliceKey]!) as ConfigSlice;
  const text = JSON.stringify({ ...slice, pods: slice.pods.filter((p) => p.pod.name !== 'web-0') });
  const count = delivered.length;
  const patch = (configMap: string, data: Record<string, string>) =>
    k(['patch', 'configmap', configMap, '-n', system, '--type=merge', '-p', JSON.stringify({ data })]);
  await patch(name, { [configSliceKey]: text });
  await new Promise((r) => setTimeout(r, 2000));
  expect(delivered).toHaveLength(count);
  // ...and is, once the index names it.
  const next = await index();
  next.slices = next.slices.map((s) => (s.name === name ? { ...s, hash: sliceHash(text) } : s));
  await patch(gatewayObjectName(id), { [configIndexKey]: JSON.stringify(next) });
  const without = await until('the new version at the agent', async () =>
    delivered.length > count ? delivered.at(-1) : undefined,
  );
  expect(without.pods.map((p) => p.name)).not.toContain('web-0');
  expect(without.pods).toHaveLength(one.config.pods.length - 1);
  expect(errors).toEqual([]);
}
