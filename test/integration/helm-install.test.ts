// The install path a user takes: `helm install` into the real test cluster, `helm upgrade` with
// changed values, `helm uninstall`. The operator's pods are scheduled on the kwok nodes and run;
// what the operator writes (the webhook's certificate) survives upgrades; uninstall leaves none
// of the chart's objects behind, cluster-scoped ones included, and keeps the CRDs.
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { definitions, group } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { kubectl } from '../cluster/cluster.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { testNodes } from './global-setup.ts';

const chart = join(root, 'charts/naat');
const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
// Tests share one apiserver: the release and its namespace are unique to this run.
const release = `naat-i${process.pid}`;
const namespace = `naat-helm-install${process.pid}`;
const caBundle = Buffer.from('-----BEGIN CERTIFICATE-----\nwritten by the operator\n').toString('base64');

interface ObjectRef {
  kind: string;
  name: string;
  namespace?: string;
}

interface PodList {
  items: { metadata: { name: string }; spec: { nodeName?: string }; status: { phase: string } }[];
}

let binary: string;
const h = (args: string[]) => helm(binary, [...args, '--namespace', namespace], kubeconfig);

beforeAll(async () => {
  binary = await buildHelm();
}, 600_000);

afterAll(async () => {
  // Whatever a failed step left: the release (if any), then the namespace.
  await h(['uninstall', release, '--ignore-not-found', '--wait', '--timeout', '60s']).catch(() => '');
  await k(['delete', 'namespace', namespace, '--ignore-not-found', '--wait=false']);
});

async function operatorPods(): Promise<PodList['items']> {
  const pods = JSON.parse(
    await k(['get', 'pods', '-n', namespace, '-l', `app.kubernetes.io/instance=${release}`, '-o', 'json']),
  ) as PodList;
  return pods.items;
}

async function rendered(): Promise<ObjectRef[]> {
  return parseAllDocuments(await h(['get', 'manifest', release]))
    .map((document) => document.toJS() as { kind: string; metadata: { name: string; namespace?: string } } | null)
    .filter((m) => m !== null)
    .map((m) => ({ kind: m.kind, name: m.metadata.name, namespace: m.metadata.namespace }));
}

const webhookName = `${release}-sidecar-injector`;
let installed: ObjectRef[] = [];

test('helm install runs the operator on the kwok nodes', async () => {
  const out = await h(['install', release, chart, '--create-namespace', '--wait', '--timeout', '90s']);
  // The notes tell the user the next steps with the names this release really has.
  expect(out).toContain(`kubectl -n ${namespace} get lease ${release}-operator`);
  expect(out).toContain('kubectl label namespace <namespace> naat.dev/injection=enabled');
  expect(out).toContain('kubectl delete crd uplinks.naat.dev egressgateways.naat.dev egresspolicies.naat.dev');
  for (const definition of definitions) {
    await k(['wait', '--for=condition=Established', '--timeout=30s', `crd/${definition.plural}.${group}`]);
  }
  const pods = await operatorPods();
  expect(pods).toHaveLength(2);
  for (const pod of pods) {
    expect(pod.status.phase).toBe('Running');
    expect(testNodes.map((node) => node.name)).toContain(pod.spec.nodeName);
  }
  installed = await rendered();
  expect(installed.length).toBeGreaterThan(10);
  const status = JSON.parse(await h(['status', release, '-o', 'json']));
  expect(status.info.status).toBe('deployed');
}, 180_000);

describe("the operator's ServiceAccount, as the real authorizer sees it", () => {
  const as = () => `--as=system:serviceaccount:${namespace}:${release}-operator`;
  const can = async (args: string[]) =>
    (await k(['auth', 'can-i', as(), ...args]).catch((error: Error) => error.message)).trim().endsWith('yes');

  test.each([
    ['create daemonsets.apps', namespace],
    ['delete serviceaccounts', namespace],
    ['create rolebindings.rbac.authorization.k8s.io', namespace],
    ['update configmaps', namespace],
    ['create leases.coordination.k8s.io', namespace],
    ['list pods', 'default'],
    ['watch nodes', ''],
    ['list egresspolicies.naat.dev', 'default'],
    ['patch egressgateways.naat.dev --subresource=status', ''],
    ['create events.events.k8s.io', 'default'],
    ['delete clusterrolebindings.rbac.authorization.k8s.io', ''],
  ])('may %s (namespace %j)', async (verbResource, ns) => {
    expect(await can([...verbResource.split(' '), ...(ns ? ['-n', ns] : [])])).toBe(true);
  });

  test.each([
    ['create daemonsets.apps', 'default'],
    ['update configmaps', 'kube-system'],
    ['get secrets', namespace],
    ['get secrets', 'default'],
    ['update egressgateways.naat.dev', ''],
    ['delete pods', 'default'],
    ['create clusterroles.rbac.authorization.k8s.io', ''],
    ['patch mutatingwebhookconfigurations.admissionregistration.k8s.io', ''],
    ['create tokenreviews.authentication.k8s.io', ''],
  ])('may not %s (namespace %j)', async (verbResource, ns) => {
    expect(await can([...verbResource.split(' '), ...(ns ? ['-n', ns] : [])])).toBe(false);
  });

  test('may touch its own webhook, Lease and certificate Secret only', async () => {
    expect(await can(['patch', `mutatingwebhookconfigurations/${webhookName}`])).toBe(true);
    expect(await can(['update', `leases/${release}-operator`, '-n', namespace])).toBe(true);
    expect(await can(['update', 'leases/other', '-n', namespace])).toBe(false);
    expect(await can(['update', `secrets/${release}-webhook-tls`, '-n', namespace])).toBe(true);
  });

  test("may bind the dataplane's role and grant what it holds, and nothing more", async () => {
    const dryRun = (args: string[]) => k([...args, as(), '--dry-run=server']);
    await dryRun([
      'create',
      'clusterrolebinding',
      `${release}-gw`,
      `--clusterrole=${release}-dataplane`,
      `--serviceaccount=${namespace}:gw`,
    ]);
    await expect(
      dryRun([
        'create',
        'clusterrolebinding',
        `${release}-gw`,
        '--clusterrole=cluster-admin',
        `--serviceaccount=${namespace}:gw`,
      ]),
    ).rejects.toThrow(/forbidden/);
    await dryRun([
      'create',
      'role',
      'gw',
      '-n',
      namespace,
      '--verb=get,watch',
      '--resource=configmaps',
      '--resource-name=gw',
    ]);
    await expect(dryRun(['create', 'role', 'gw', '-n', namespace, '--verb=get', '--resource=secrets'])).rejects.toThrow(
      /forbidden/,
    );
  });
});

test('helm upgrade applies changed values and keeps what the operator wrote', async () => {
  // What the operator does once it runs: stores its certificate and patches the CA into the webhook.
  await k([
    'patch',
    'secret',
    `${release}-webhook-tls`,
    '-n',
    namespace,
    '--type=merge',
    '-p',
    JSON.stringify({ data: { 'tls.crt': caBundle, 'tls.key': caBundle } }),
  ]);
  await k([
    'patch',
    'mutatingwebhookconfiguration',
    webhookName,
    '--type=json',
    '-p',
    JSON.stringify([{ op: 'add', path: '/webhooks/0/clientConfig/caBundle', value: caBundle }]),
  ]);

  await h([
    'upgrade',
    release,
    chart,
    '--reuse-values',
    '--set',
    'operator.replicas=3',
    '--set',
    'logLevel=debug',
    '--set',
    'sidecarInjection.timeoutSeconds=3',
    '--wait',
    '--timeout',
    '90s',
  ]);

  const webhook = JSON.parse(await k(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json']));
  expect(webhook.webhooks[0].timeoutSeconds).toBe(3);
  expect(webhook.webhooks[0].clientConfig.caBundle).toBe(caBundle);
  const secret = JSON.parse(await k(['get', 'secret', `${release}-webhook-tls`, '-n', namespace, '-o', 'json']));
  expect(secret.data).toEqual({ 'tls.crt': caBundle, 'tls.key': caBundle });
  const config = JSON.parse(
    await k(['get', 'configmap', `${release}-operator`, '-n', namespace, '-o', 'jsonpath={.data.config\\.json}']),
  );
  expect(config.logLevel).toBe('debug');
  const pods = await operatorPods();
  expect(pods.filter((pod) => pod.status.phase === 'Running')).toHaveLength(3);
  const history = JSON.parse(await h(['history', release, '-o', 'json']));
  expect(history.map((revision: { status: string }) => revision.status)).toEqual(['superseded', 'deployed']);
}, 180_000);

test('helm uninstall removes every object of the release and keeps the CRDs', async () => {
  await h(['uninstall', release, '--cascade', 'foreground', '--wait', '--timeout', '90s']);
  for (const object of installed) {
    const args = ['get', object.kind, object.name, '--ignore-not-found', '-o', 'name'];
    expect(await k(object.namespace ? [...args, '-n', object.namespace] : args)).toBe('');
  }
  // Nothing else carries the release's label, in its namespace or cluster-wide, pods included.
  const labelled = await k([
    'get',
    'all,configmaps,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,clusterroles,clusterrolebindings,mutatingwebhookconfigurations',
    '-A',
    '-l',
    `app.kubernetes.io/instance=${release}`,
    '-o',
    'name',
  ]);
  expect(labelled).toBe('');
  // Helm keeps its release records in Secrets of the release namespace; none remain.
  expect(await k(['get', 'secrets', '-n', namespace, '-l', `name=${release},owner=helm`, '-o', 'name'])).toBe('');
  // Helm never deletes CRDs (that would delete every object of their kinds).
  for (const definition of definitions) {
    expect(await k(['get', 'crd', `${definition.plural}.${group}`, '-o', 'name'])).toBe(
      `customresourcedefinition.apiextensions.k8s.io/${definition.plural}.${group}\n`,
    );
  }
}, 180_000);
