// The install path a user takes: `helm install` into the real test cluster, `helm upgrade` with
// changed values, `helm uninstall`. The operator's pods are scheduled on the kwok nodes (which run
// no processes), so the operator also runs here as a process with the release's configuration and
// ServiceAccount token: with exactly the chart's RBAC it issues its webhook certificate, has the
// sidecar injected and a gateway's dataplane DaemonSet scheduled on the kwok gateway nodes. What
// the operator writes survives upgrades; uninstall leaves none of the chart's objects behind,
// cluster-scoped ones included, and keeps the CRDs.
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { definitions, group } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { sidecarContainerName } from '../../operator/compile.ts';
import { objectName } from '../../operator/desired.ts';
import { kubectl } from '../cluster/cluster.ts';
import { gatewayWithUplink, problemLines, startReleaseOperator } from '../cluster/operator.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { until } from '../e2e/topology.ts';
import { testNodes } from './global-setup.ts';

const chart = join(root, 'charts/naat');
const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
// Tests share one apiserver: the release and its namespace are unique to this run.
const release = `naat-i${process.pid}`;
const namespace = `naat-helm-install${process.pid}`;
const gateway = `helm-i${process.pid}`;
const apps = `helm-apps${process.pid}`;

interface ObjectRef {
  kind: string;
  name: string;
  namespace?: string;
}

interface PodList {
  items: { metadata: { name: string }; spec: { nodeName?: string }; status: { phase: string } }[];
}

let binary: string;
let dir: string;
let operator: ChildProcess | undefined;
let output = '';
const h = (args: string[]) => helm(binary, [...args, '--namespace', namespace], kubeconfig);

beforeAll(async () => {
  binary = await buildHelm();
  dir = await mkdtemp(join(tmpdir(), 'naat-helm-install-'));
}, 600_000);

afterAll(async () => {
  operator?.kill('SIGTERM');
  await k(['delete', 'egressgateway', gateway, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', gateway, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'namespace', apps, '--ignore-not-found', '--wait=false']);
  await rm(dir, { recursive: true, force: true });
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
    ['patch serviceaccounts', namespace],
    ['create rolebindings.rbac.authorization.k8s.io', namespace],
    ['patch configmaps', namespace],
    ['create leases.coordination.k8s.io', namespace],
    ['list pods', 'default'],
    ['watch nodes', ''],
    ['list egresspolicies.naat.dev', 'default'],
    ['patch egressgateways.naat.dev --subresource=status', ''],
    ['create events.events.k8s.io', 'default'],
    ['patch clusterrolebindings.rbac.authorization.k8s.io', ''],
    // The node agents' objects serve every gateway, and only the operator removes them: by name.
    ['delete daemonsets.apps/naat-node', namespace],
    ['delete serviceaccounts/naat-node', namespace],
    ['delete roles.rbac.authorization.k8s.io/naat-node', namespace],
    ['delete rolebindings.rbac.authorization.k8s.io/naat-node', namespace],
    // Their ConfigMaps are named after their nodes.
    ['delete configmaps', namespace],
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
    // A gateway's objects go with it by the garbage collector; the operator deletes only the node
    // agents' objects, which serve every gateway, and only in its own namespace.
    ['delete serviceaccounts', 'default'],
    ['delete daemonsets.apps', 'kube-system'],
    ['delete clusterrolebindings.rbac.authorization.k8s.io', ''],
    // Nor any other object of those kinds in its namespace, such as a gateway's or its own.
    ['delete daemonsets.apps', namespace],
    [`delete daemonsets.apps/naat-gw-${gateway}`, namespace],
    [`delete serviceaccounts/${release}-operator`, namespace],
    [`delete roles.rbac.authorization.k8s.io/${release}-operator`, namespace],
    [`delete rolebindings.rbac.authorization.k8s.io/naat-gw-${gateway}`, namespace],
  ])('may not %s (namespace %j)', async (verbResource, ns) => {
    expect(await can([...verbResource.split(' '), ...(ns ? ['-n', ns] : [])])).toBe(false);
  });

  test("may read, make and replace naat's CRDs and no other", async () => {
    for (const verb of ['get', 'create', 'patch', 'update']) {
      expect(await can([verb, `customresourcedefinitions.apiextensions.k8s.io/uplinks.${group}`])).toBe(true);
      expect(await can([verb, 'customresourcedefinitions.apiextensions.k8s.io/other.example.com'])).toBe(false);
    }
    expect(await can(['delete', `customresourcedefinitions.apiextensions.k8s.io/uplinks.${group}`])).toBe(false);
  });

  test('may touch its own webhook and certificate Secret only, and Leases of its namespace only', async () => {
    expect(await can(['update', `mutatingwebhookconfigurations/${webhookName}`])).toBe(true);
    expect(await can(['update', `leases/${release}-operator`, '-n', namespace])).toBe(true);
    // The gateway nodes' failover Leases, named after gateways and nodes, are renewed through a Role it makes.
    expect(await can(['update', 'leases/naat-fo-egress-node-1', '-n', namespace])).toBe(true);
    expect(await can(['update', `leases/${release}-operator`, '-n', 'default'])).toBe(false);
    expect(await can(['list', 'leases', '-n', 'kube-node-lease'])).toBe(false);
    expect(await can(['update', `secrets/${release}-webhook-tls`, '-n', namespace])).toBe(true);
  });

  test('may approve and sign for the signer naat.dev/agent and no other', async () => {
    // Signer names hold a slash, which `kubectl auth can-i` cannot pass: asked as the apiserver asks.
    const allowed = async (verb: string, name: string) => {
      const review = await k(
        ['create', '-o', 'json', '-f', '-'],
        JSON.stringify({
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: {
            user: `system:serviceaccount:${namespace}:${release}-operator`,
            groups: ['system:serviceaccounts', `system:serviceaccounts:${namespace}`, 'system:authenticated'],
            resourceAttributes: { group: 'certificates.k8s.io', resource: 'signers', name, verb },
          },
        }),
      );
      return JSON.parse(review).status.allowed === true;
    };
    for (const verb of ['approve', 'sign']) {
      expect(await allowed(verb, 'naat.dev/agent')).toBe(true);
      expect(await allowed(verb, 'naat.dev/*')).toBe(false);
      expect(await allowed(verb, 'kubernetes.io/kube-apiserver-client')).toBe(false);
    }
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

/** The operator as the release configures it (startReleaseOperator). */
async function startInstalledOperator({ inCluster = false } = {}): Promise<{ health: number; metrics: number }> {
  const started = await startReleaseOperator({
    kubeconfig,
    release,
    namespace,
    dir,
    inCluster,
    log: (text) => (output += text),
  });
  operator = started.child;
  return started;
}

const eventually = <T>(what: string, check: () => Promise<T | undefined>) =>
  until(what, check, 60_000).catch((error: Error) => {
    throw new Error(`${error.message}\n${output.slice(-3000)}`);
  });

test('the installed operator, with only its chart RBAC, issues its certificate, injects sidecars and runs a gateway', async () => {
  const { health } = await startInstalledOperator();
  await eventually(
    'the operator ready',
    async () =>
      (await fetch(`http://127.0.0.1:${health}/readyz`)
        .then((r) => r.ok)
        .catch(() => false)) || undefined,
  );
  const secret = JSON.parse(await k(['get', 'secret', `${release}-webhook-tls`, '-n', namespace, '-o', 'json']));
  expect(Object.keys(secret.data).sort()).toEqual(['ca.crt', 'ca.key', 'tls.crt', 'tls.key']);
  const webhook = JSON.parse(await k(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json']));
  expect(webhook.webhooks[0].clientConfig.caBundle).toBe(secret.data['ca.crt']);

  await k(['create', 'namespace', apps]);
  await k(['label', 'namespace', apps, 'naat.dev/injection=enabled', `egress=${gateway}`]);
  await k(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: gatewayWithUplink(gateway) }));
  const daemonSetPods = await eventually('the dataplane running on both gateway nodes', async () => {
    const list = JSON.parse(
      await k(['get', 'pods', '-n', namespace, '-l', `naat.dev/gateway=${gateway}`, '-o', 'json']),
    ) as PodList;
    const running = list.items.filter((p) => p.status.phase === 'Running');
    return running.length === 2 ? running : undefined;
  });
  expect(daemonSetPods.map((p) => p.spec.nodeName).sort()).toEqual(['gateway-a', 'gateway-b']);
  expect(await k(['get', 'daemonset', objectName(gateway), '-n', namespace, '-o', 'name'])).toBe(
    `daemonset.apps/${objectName(gateway)}\n`,
  );

  await k(
    ['create', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'web', namespace: apps },
      spec: { nodeName: 'gateway-a', containers: [{ name: 'app', image: 'app:test' }] },
    }),
  );
  const pod = JSON.parse(await k(['get', 'pod', 'web', '-n', apps, '-o', 'json']));
  expect(pod.spec.initContainers.map((c: { name: string }) => c.name)).toEqual([sidecarContainerName]);
  expect(pod.spec.shareProcessNamespace).toBe(true);
  await eventually('the association mode condition', async () => {
    const { status } = JSON.parse(await k(['get', 'pod', 'web', '-n', apps, '-o', 'json']));
    return status?.conditions?.find((c: { type: string }) => c.type === 'naat.dev/AssociationMode');
  });
  // Nothing it needed was forbidden.
  expect(problemLines(output)).toEqual([]);
}, 180_000);

/**
 * A helm command run with --debug that waits for the operator's pods: when it fails, the failure
 * says what helm was waiting for (its last debug lines) and what the pods were doing.
 */
const rollout = (command: Promise<string>) =>
  command.catch(async (error: Error) => {
    const state = await k(['get', 'deployments,replicasets,pods', '-n', namespace, '-o', 'wide']).catch(String);
    const events = await k(['get', 'events', '-n', namespace, '--sort-by=.lastTimestamp']).catch(String);
    const lines = error.message.split('\n');
    const waits = lines.filter((line) => line.includes('[debug]')).slice(-15);
    throw new Error([lines[0], ...waits, state, events.split('\n').slice(-40).join('\n')].join('\n'));
  });

test('helm upgrade applies changed values and keeps what the operator wrote', async () => {
  // The operator moves into the cluster: run with the release's own configuration, it points the
  // webhook at its Service again, keeping its CA.
  operator?.kill('SIGTERM');
  await startInstalledOperator({ inCluster: true });
  await eventually('the webhook pointed at the Service', async () => {
    const config = JSON.parse(await k(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json'])).webhooks[0]
      .clientConfig;
    return config.service?.name === `${release}-webhook` && !config.url ? config : undefined;
  });
  const before = {
    secret: JSON.parse(await k(['get', 'secret', `${release}-webhook-tls`, '-n', namespace, '-o', 'json'])).data,
    caBundle: JSON.parse(await k(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json'])).webhooks[0]
      .clientConfig.caBundle,
  };
  await rollout(
    h([
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
      '--debug',
      '--wait',
      // Three replicas roll one by one on the simulated nodes; under a loaded CI run that took over 90 s.
      '--timeout',
      '240s',
    ]),
  );

  const webhook = JSON.parse(await k(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json']));
  expect(webhook.webhooks[0].timeoutSeconds).toBe(3);
  expect(webhook.webhooks[0].clientConfig.caBundle).toBe(before.caBundle);
  const secret = JSON.parse(await k(['get', 'secret', `${release}-webhook-tls`, '-n', namespace, '-o', 'json']));
  expect(secret.data).toEqual(before.secret);
  const config = JSON.parse(
    await k(['get', 'configmap', `${release}-operator`, '-n', namespace, '-o', 'jsonpath={.data.config\\.json}']),
  );
  expect(config.logLevel).toBe('debug');
  const pods = await operatorPods();
  expect(pods.filter((pod) => pod.status.phase === 'Running')).toHaveLength(3);
  const history = JSON.parse(await h(['history', release, '-o', 'json']));
  expect(history.map((revision: { status: string }) => revision.status)).toEqual(['superseded', 'deployed']);
}, 330_000);

test('helm uninstall removes every object of the release and keeps the CRDs', async () => {
  operator?.kill('SIGTERM');
  operator = undefined;
  // The gateway's objects are the operator's, owned by the gateway: deleting it removes them.
  await k(['delete', 'egressgateway', gateway, '--wait=true']);
  // The garbage collector notices a kind's deletions only once it watches that kind (its discovery
  // resync can take tens of seconds after the CRDs appeared).
  await until(
    "the gateway's DaemonSet collected",
    async () => (await k(['get', 'daemonset', '-n', namespace, '-o', 'name'])) === '' || undefined,
    150_000,
  );
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
}, 300_000);
