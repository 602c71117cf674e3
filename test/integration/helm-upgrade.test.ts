// Upgrading from the previous version of the chart with naat's objects in place: `helm upgrade`
// never touches a chart's crds/, so the new operator puts the CRDs of its version in place when
// it starts; the Uplinks, EgressGateways and EgressPolicies made under the previous version stay
// as they were, and the new operator reconciles them. The previous chart is taken from git: the
// chart at the last commit whose Chart.yaml has another version.
import { execFile, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parse } from 'yaml';
import { apiVersion, customResourceDefinitions } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { kubectl } from '../cluster/cluster.ts';
import { gatewayWithUplink, startReleaseOperator } from '../cluster/operator.ts';
import { buildHelm, helm } from '../cluster/helm.ts';

const run = promisify(execFile);
const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
// Tests share one apiserver: the release, its namespace and the objects are unique to this run.
const release = `naat-u${process.pid}`;
const namespace = `naat-helm-upgrade${process.pid}`;
const name = `helm-u${process.pid}`;
const apps = `helm-u-apps${process.pid}`;

let binary: string;
let dir: string;
let operator: ChildProcess | undefined;
const h = (args: string[]) => helm(binary, [...args, '--namespace', namespace], kubeconfig);
const git = async (args: string[]) => (await run('git', ['-C', root, ...args], { maxBuffer: 1 << 26 })).stdout;

/** The chart as it was at the last commit whose Chart.yaml has another version, and that version. */
async function previousChart(into: string): Promise<{ version: string; commit: string; path: string }> {
  const versionOf = (text: string) => String((parse(text) as { version: string }).version);
  const current = versionOf(await readFile(join(root, 'charts/naat/Chart.yaml'), 'utf8'));
  for (const commit of (await git(['log', '--format=%H', '--', 'charts/naat'])).split('\n').filter(Boolean)) {
    const version = versionOf(await git(['show', `${commit}:charts/naat/Chart.yaml`]));
    if (version === current) continue;
    await run('bash', ['-c', `git -C "${root}" archive "${commit}" charts/naat | tar -x -C "${into}"`]);
    return { version, commit, path: join(into, 'charts/naat') };
  }
  throw new Error(`no commit has a chart version other than ${current}`);
}

interface Crd {
  metadata: { name: string; labels?: Record<string, string>; managedFields?: Array<{ manager: string }> };
  spec: { versions: Array<Record<string, unknown>> };
}
const crdNames = customResourceDefinitions().map((crd) => (crd.metadata as { name: string }).name);
const readCrd = async (crd: string) =>
  JSON.parse(await k(['get', 'crd', crd, '--show-managed-fields', '-o', 'json'])) as Crd;

beforeAll(async () => {
  binary = await buildHelm();
  dir = await mkdtemp(join(tmpdir(), 'naat-helm-upgrade-'));
}, 600_000);

afterAll(async () => {
  operator?.kill('SIGTERM');
  for (const [kind, object] of [
    ['egresspolicy', `${name} -n ${apps}`],
    ['egressgateway', name],
    ['uplink', name],
  ]) {
    await k(['delete', kind!, ...object!.split(' '), '--ignore-not-found', '--wait=false']);
  }
  await k(['delete', 'namespace', apps, '--ignore-not-found', '--wait=false']);
  await h(['uninstall', release, '--ignore-not-found', '--wait', '--timeout', '60s']).catch(() => '');
  await k(['delete', 'namespace', namespace, '--ignore-not-found', '--wait=false']);
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('helm upgrade from the previous chart version brings the new CRDs and keeps the objects made before', async () => {
  const previous = await previousChart(dir);
  // One operator replica: its pods only take room on the kwok nodes the other tests share.
  const oneReplica = ['--set', 'operator.replicas=1'];
  await h(['install', release, previous.path, '--create-namespace', ...oneReplica]);
  expect(JSON.parse(await h(['history', release, '-o', 'json']))[0].chart).toBe(`naat-${previous.version}`);

  // The CRDs as the previous version left them: its crds/, which Helm installs only when missing
  // (as here, where they already are), and which differ from the new ones, at least by the
  // printer columns taken out here. A label someone else gave them must stay.
  await k(['replace', '-f', join(previous.path, 'crds')]);
  for (const crd of crdNames) {
    await k([
      'patch',
      'crd',
      crd,
      '--type=json',
      '-p',
      '[{"op":"remove","path":"/spec/versions/0/additionalPrinterColumns"}]',
    ]);
    await k(['label', 'crd', crd, '--overwrite', `example.com/kept=${release}`]);
  }

  // Objects made under the previous version.
  await k(['create', 'namespace', apps]);
  await k(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'List',
      items: [
        ...gatewayWithUplink(name),
        {
          apiVersion,
          kind: 'EgressPolicy',
          metadata: { name, namespace: apps },
          spec: {
            gateway: name,
            podSelector: {},
            rules: [{ name: 'deny-curl', applications: [{ processName: 'curl' }], action: 'Deny' }],
          },
        },
      ],
    }),
  );
  const objects = ['uplink', 'egressgateway', 'egresspolicy'];
  const get = async (kind: string) =>
    JSON.parse(await k(['get', kind, name, ...(kind === 'egresspolicy' ? ['-n', apps] : []), '-o', 'json']));
  const before = await Promise.all(objects.map(get));

  await h(['upgrade', release, join(root, 'charts/naat'), ...oneReplica]);
  const history = JSON.parse(await h(['history', release, '-o', 'json'])) as Array<{ status: string; chart: string }>;
  expect(history.map((revision) => revision.status)).toEqual(['superseded', 'deployed']);
  expect(history[0]!.chart).toBe(`naat-${previous.version}`);

  // The new operator, as the upgraded release runs it, with exactly the new chart's RBAC.
  const started = await startReleaseOperator({ kubeconfig, release, namespace, dir });
  operator = started.child;
  const { eventually } = started;
  await started.ready();

  // The CRDs are the new version's, whole, with the labels others gave them.
  for (const desired of customResourceDefinitions() as unknown as Crd[]) {
    const live = await readCrd(desired.metadata.name);
    expect(live.spec).toMatchObject(desired.spec);
    expect(live.metadata.labels).toMatchObject({ 'example.com/kept': release });
    expect(live.metadata.managedFields!.map((f) => f.manager)).toContain('naat-operator');
  }
  // The objects made before are the same objects, with every field of their spec as it was (the
  // new version's defaults may add fields when they are read), and the new operator reconciles them.
  const after = await Promise.all(objects.map(get));
  after.forEach((object, i) => {
    expect(object.metadata.uid).toBe(before[i].metadata.uid);
    expect(object.spec).toMatchObject(before[i].spec);
  });
  await eventually(
    'the gateway compiled by the new operator',
    async () => (await get('egressgateway')).status?.configHash,
  );
  await eventually('the policy reconciled', async () => (await get('egresspolicy')).status?.conditions);
  expect(started.output()).not.toMatch(/forbidden|Failed to apply/i);
}, 300_000);
