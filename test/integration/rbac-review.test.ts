// RBAC review as a test. The chart (helm template, default values) and the operator's per-gateway
// objects (desiredGatewayObjects) grant no wildcard, and exactly the permissions listed in
// `allowed` below. That list is checked against what the code really does: a control plane of its
// own records every request in its audit log while the operator (with the chart's ServiceAccount
// and RBAC) runs a gateway and the dataplane agent (with the gateway's ServiceAccount) follows its
// ConfigMap, reports its uplink, authenticates a real sidecar and reviews a flow reader on its
// secure listener, with the certificate it asked the operator's signer for with a token bound to
// its pod, and holds its failover Lease. Every request they made must be granted, and every
// permission granted must have been used or say why it is needed unexercised.
// Then the webhook: it can only ever delay the pods it selects, by at most its timeout, even when
// its address swallows connections and never answers.
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { failoverLeaseName } from '../../contracts/gateway/index.ts';
import { apiVersion } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import type { Compiled } from '../../operator/compile.ts';
import { desiredGatewayObjects, desiredNodeObjects, nodeAgentName, objectName } from '../../operator/desired.ts';
import { parseSettings } from '../../operator/settings.ts';
import { podBoundKubeconfig } from '../cluster/agent-identity.ts';
import { freePorts, serviceAccountKubeconfig, startCluster, type Cluster } from '../cluster/cluster.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { gatewayWithUplink, runnableHere } from '../cluster/operator.ts';
import { stopProcess, until } from '../e2e/topology.ts';
import { LoggedProcesses } from '../e2e/logged-processes.ts';

const release = 'naat';
const namespace = 'naat-system';
const gateway = 'rbac';
const apps = 'rbac-apps';
const operatorUser = `system:serviceaccount:${namespace}:${release}-operator`;
const dataplaneUser = `system:serviceaccount:${namespace}:${objectName(gateway)}`;
/** The gateway's one failover address, on its uplink; its one node has an address, so its agent holds a Lease. */
const failoverAddress = '192.0.2.20';
const failoverConfig = {
  addresses: [{ address: failoverAddress, uplink: gateway }],
  leaseDurationMs: 600,
  failback: false,
  failbackDelaySeconds: 30,
  nodes: [{ node: 'gateway-a', addresses: ['127.0.0.1'] }],
  draining: [],
};

/**
 * Every permission each component holds, as `group/resource verb` (`core` for the core group), and
 * null when the tests below see the code use it, or the reason it is needed without being seen.
 */
const allowed: Record<'operator' | 'dataplane', Record<string, string | null>> = {
  operator: {
    // Informers: list, then watch.
    'naat.dev/uplinks list': null,
    'naat.dev/uplinks watch': null,
    'naat.dev/egressgateways list': null,
    'naat.dev/egressgateways watch': null,
    'naat.dev/egresspolicies list': null,
    'naat.dev/egresspolicies watch': null,
    'naat.dev/uplinks/status patch': null,
    'naat.dev/egressgateways/status patch': null,
    'naat.dev/egresspolicies/status patch': null,
    'naat.dev/egressgateways/finalizers update':
      'authorized, not requested: the OwnerReferencesPermissionEnforcement admission plugin checks it for the blockOwnerDeletion owner references of a gateway’s objects (the test apiserver does not enable that plugin)',
    'core/pods list': null,
    'core/pods/status patch': null,
    'core/pods watch': null,
    'core/namespaces get':
      'not requested here: the webhook reads the namespace of a pod under review when its cache does not hold it yet',
    'core/namespaces list': null,
    'core/namespaces watch': null,
    'core/nodes list': null,
    'core/nodes watch': null,
    'events.k8s.io/events create': null,
    'admissionregistration.k8s.io/mutatingwebhookconfigurations list': null,
    'admissionregistration.k8s.io/mutatingwebhookconfigurations watch': null,
    'admissionregistration.k8s.io/mutatingwebhookconfigurations update': null,
    'rbac.authorization.k8s.io/clusterroles bind':
      'authorized, not requested: creating the ClusterRoleBindings to the dataplane and node agent ClusterRoles needs it (the operator holds neither TokenReview nor the node agents’ role itself)',
    'rbac.authorization.k8s.io/clusterrolebindings create': null,
    'rbac.authorization.k8s.io/clusterrolebindings patch': null,
    'rbac.authorization.k8s.io/clusterrolebindings delete':
      'the node agents’ binding, once no node needs a node agent (this test serves no pod away from its gateway’s nodes)',
    'apps/daemonsets list': null,
    'apps/daemonsets watch': null,
    'apps/daemonsets create': null,
    'apps/daemonsets patch': null,
    'apps/daemonsets delete': 'the node agents’ DaemonSet, once no node needs one',
    'core/serviceaccounts list': null,
    'core/serviceaccounts watch': null,
    'core/serviceaccounts create': null,
    'core/serviceaccounts patch': null,
    'core/serviceaccounts delete': 'the node agents’ ServiceAccount, once no node needs a node agent',
    'rbac.authorization.k8s.io/roles list': null,
    'rbac.authorization.k8s.io/roles watch': null,
    'rbac.authorization.k8s.io/roles create': null,
    'rbac.authorization.k8s.io/roles patch': null,
    'rbac.authorization.k8s.io/roles delete': 'the node agents’ Role, once no node needs a node agent',
    'rbac.authorization.k8s.io/rolebindings list': null,
    'rbac.authorization.k8s.io/rolebindings watch': null,
    'rbac.authorization.k8s.io/rolebindings create': null,
    'rbac.authorization.k8s.io/rolebindings patch': null,
    'rbac.authorization.k8s.io/rolebindings delete': 'the node agents’ RoleBinding, once no node needs a node agent',
    'core/configmaps create': null,
    'core/configmaps patch': null,
    'core/configmaps get':
      'not requested: RBAC lets the operator make the Role by which a dataplane gets and watches its ConfigMap only because it holds those verbs itself',
    // The node agents' ConfigMaps are cached (by label) to find those of nodes that need none any more.
    'core/configmaps list': null,
    'core/configmaps watch': null,
    'core/configmaps delete': 'a node agent’s ConfigMap, once its node needs none',
    'coordination.k8s.io/leases create': null,
    // The gateway nodes' failover Leases, cached by label for the gateways' status.failover.
    'coordination.k8s.io/leases list': null,
    'coordination.k8s.io/leases watch': null,
    'coordination.k8s.io/leases get': null,
    'coordination.k8s.io/leases update': null,
    'coordination.k8s.io/leases patch':
      'not requested: RBAC lets the operator make the Role by which a gateway agent renews its failover Lease only because it holds that verb itself',
    'coordination.k8s.io/leases delete':
      'the failover Lease of a node that left its gateway, once unrenewed (test/integration/operator-failover.test.ts)',
    'core/secrets list': null,
    'core/secrets watch': null,
    'core/secrets update': null,
    // naat's CRDs at start: those there replaced, the missing one made by server-side apply.
    'apiextensions.k8s.io/customresourcedefinitions get': null,
    'apiextensions.k8s.io/customresourcedefinitions update': null,
    'apiextensions.k8s.io/customresourcedefinitions patch': null,
    'apiextensions.k8s.io/customresourcedefinitions create': null,
    // The signer naat.dev/agent: requests cached, approved, signed.
    'certificates.k8s.io/certificatesigningrequests list': null,
    'certificates.k8s.io/certificatesigningrequests watch': null,
    'certificates.k8s.io/certificatesigningrequests/approval update': null,
    'certificates.k8s.io/certificatesigningrequests/status update': null,
    'certificates.k8s.io/signers approve':
      'authorized, not requested: the apiserver checks it for naat.dev/agent when the operator approves a request',
    'certificates.k8s.io/signers sign':
      'authorized, not requested: the apiserver checks it for naat.dev/agent when the operator writes a certificate',
  },
  dataplane: {
    // Sidecars' tokens on NAA streams, and flow readers' tokens on the secure listener.
    'authentication.k8s.io/tokenreviews create': null,
    // Whether a flow reader may get the flows of the gateway.
    'authorization.k8s.io/subjectaccessreviews create': null,
    // The NAA server reads the pod a token is bound to, or a node-driven stream names: that it still
    // exists, where it runs and, for a node-driven stream, that its driver is the node agent.
    'core/pods get': null,
    // Stopped, whether its node still has the gateway's nodeSelector (dataplane/membership.ts).
    'core/nodes get': null,
    'naat.dev/uplinks/status patch': null,
    'core/configmaps get': null,
    'core/configmaps watch': null,
    // Its node's certificate: asked for, and read back until signed.
    'certificates.k8s.io/certificatesigningrequests create': null,
    'certificates.k8s.io/certificatesigningrequests get': null,
    // With failover addresses: its node's failover Lease, created and renewed, and the gateway's
    // Leases listed and watched.
    'coordination.k8s.io/leases create': null,
    'coordination.k8s.io/leases patch': null,
    'coordination.k8s.io/leases list': null,
    'coordination.k8s.io/leases watch': null,
  },
};

interface Rule {
  apiGroups?: string[];
  resources?: string[];
  verbs: string[];
  resourceNames?: string[];
  nonResourceURLs?: string[];
}
interface Manifest {
  kind: string;
  metadata: { name: string; namespace?: string };
  rules?: Rule[];
  roleRef?: { kind: string; name: string };
  subjects?: { kind: string; name: string; namespace?: string }[];
  webhooks?: Webhook[];
  data?: Record<string, string>;
}
interface Webhook {
  failurePolicy: string;
  timeoutSeconds: number;
  clientConfig: Record<string, unknown>;
  namespaceSelector: { matchLabels?: Record<string, string>; matchExpressions?: Expression[] };
  objectSelector?: { matchExpressions?: Expression[] };
}
interface Expression {
  key: string;
  operator: string;
  values?: string[];
}

const permissions = (rules: Rule[]) =>
  new Set(
    rules.flatMap((rule) =>
      (rule.apiGroups ?? []).flatMap((group) =>
        (rule.resources ?? []).flatMap((resource) =>
          rule.verbs.map((verb) => `${group || 'core'}/${resource} ${verb}`),
        ),
      ),
    ),
  );
const sorted = (set: Iterable<string>) => [...set].sort();

let cluster: Cluster;
let binary: string;
let dir: string;
let chart: Manifest[];
let gatewayObjects: Manifest[];
let nodeAgentObjects: Manifest[];
const processes = new LoggedProcesses();
const netns = `naat-rbac-${process.pid}`;

const inNetns = (argv: string[]) => ['ip', 'netns', 'exec', netns, ...argv];

interface AuditEvent {
  stage: string;
  verb: string;
  user: { username: string };
  objectRef?: { apiGroup?: string; resource?: string; subresource?: string };
  responseStatus?: { code?: number };
}

/** What `user` asked the apiserver, by the audit log: permissions used, and those refused. */
async function requestsOf(user: string): Promise<{ used: Set<string>; forbidden: Set<string> }> {
  const used = new Set<string>();
  const forbidden = new Set<string>();
  for (const line of (await readFile(cluster.auditLog!, 'utf8')).split('\n').filter(Boolean)) {
    const event = JSON.parse(line) as AuditEvent;
    if (event.user.username !== user || !event.objectRef?.resource) continue;
    const { apiGroup, resource, subresource } = event.objectRef;
    const permission = (verb: string) =>
      `${apiGroup || 'core'}/${resource}${subresource ? `/${subresource}` : ''} ${verb}`;
    const code = event.responseStatus?.code ?? 0;
    if (code === 403) forbidden.add(permission(event.verb));
    else used.add(permission(event.verb));
    // A server-side apply that made the object was authorized as a create as well.
    if (event.verb === 'patch' && code === 201) used.add(permission('create'));
  }
  return { used, forbidden };
}

beforeAll(async () => {
  [binary, cluster] = await Promise.all([buildHelm(), startCluster({ audit: true })]);
  dir = await mkdtemp(join(tmpdir(), 'naat-rbac-'));
  const rendered = await helm(binary, [
    'template',
    release,
    join(root, 'charts/naat'),
    '--namespace',
    namespace,
    '--include-crds',
  ]);
  chart = parseAllDocuments(rendered)
    .map((document) => document.toJS() as Manifest | null)
    .filter((m): m is Manifest => m !== null);
  const settings = parseSettings(
    JSON.parse(
      chart.find((m) => m.kind === 'ConfigMap' && m.metadata.name === `${release}-operator`)!.data!['config.json']!,
    ),
  );
  const sample = {
    apiVersion,
    kind: 'EgressGateway',
    metadata: { name: gateway, uid: '00000000-0000-0000-0000-000000000001' },
    spec: { nodeSelector: { 'naat.dev/gateway': 'true' }, association: { port: 7740 } },
  };
  const compiled = {
    config: {
      version: 1,
      gateway,
      timeouts: { icmpSeconds: 30 },
      failover: failoverConfig,
      sources: [],
      pods: [],
      rules: [],
    },
  } as unknown as Compiled;
  gatewayObjects = desiredGatewayObjects(
    sample as unknown as Parameters<typeof desiredGatewayObjects>[0],
    compiled,
    settings,
    namespace,
  ) as Manifest[];
  nodeAgentObjects = desiredNodeObjects(
    [{ version: 1, node: 'worker-a', hash: 'sha256:0', markMask: 0xe0, gateways: [] }],
    settings,
    namespace,
  ) as Manifest[];
}, 300_000);

afterAll(async () => {
  await processes.stopAll();
  await new Promise((resolve) => spawn('ip', ['netns', 'del', netns]).on('exit', resolve));
  await cluster?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the roles the chart and the operator grant', () => {
  const roles = () =>
    [...chart, ...gatewayObjects, ...nodeAgentObjects].filter((m) => m.kind === 'Role' || m.kind === 'ClusterRole');

  test('grant no wildcard and no non-resource URL', () => {
    expect(roles().length).toBe(8);
    for (const role of roles()) {
      for (const rule of role.rules ?? []) {
        for (const value of [
          ...rule.verbs,
          ...(rule.resources ?? []),
          ...(rule.apiGroups ?? []),
          ...(rule.resourceNames ?? []),
        ]) {
          expect(`${role.kind} ${role.metadata.name}: ${value}`).not.toMatch(/\*/);
        }
        expect(rule.nonResourceURLs).toBeUndefined();
      }
    }
  });

  test('grant the operator and the dataplane exactly the listed permissions', () => {
    const bound = (account: string, objects: Manifest[]) =>
      objects
        .filter((b) => b.kind.endsWith('Binding') && b.subjects?.some((s) => s.name === account))
        .flatMap((b) =>
          [...chart, ...objects].filter((r) => r.kind === b.roleRef!.kind && r.metadata.name === b.roleRef!.name),
        )
        .flatMap((role) => role.rules ?? []);
    expect(sorted(permissions(bound(`${release}-operator`, chart)))).toEqual(sorted(Object.keys(allowed.operator)));
    expect(sorted(permissions(bound(objectName(gateway), gatewayObjects)))).toEqual(
      sorted(Object.keys(allowed.dataplane)),
    );
    // The node agents: their own node's config (by name), their entries of gateways' status, and
    // their node's certificate as the gateway agents get theirs.
    expect(sorted(permissions(bound(nodeAgentName, nodeAgentObjects)))).toEqual(
      sorted([
        'core/configmaps get',
        'core/configmaps watch',
        'naat.dev/egressgateways/status patch',
        'certificates.k8s.io/certificatesigningrequests create',
        'certificates.k8s.io/certificatesigningrequests get',
      ]),
    );
  });
});

test("lets the operator delete by name alone what nothing owns: the node agents' objects, not a gateway's", () => {
  const operatorRules = chart
    .filter((m) => m.kind.endsWith('Role') && m.metadata.name === `${release}-operator`)
    .flatMap((role) => role.rules ?? []);
  const deletable = Object.fromEntries(
    operatorRules
      .filter((rule) => rule.verbs.includes('delete'))
      .flatMap((rule) =>
        (rule.resources ?? []).map((resource) => [`${rule.apiGroups![0] || 'core'}/${resource}`, rule.resourceNames]),
      ),
  );
  expect(deletable).toEqual({
    'apps/daemonsets': [nodeAgentName],
    'core/serviceaccounts': [nodeAgentName],
    'rbac.authorization.k8s.io/roles': [nodeAgentName],
    'rbac.authorization.k8s.io/rolebindings': [nodeAgentName],
    'rbac.authorization.k8s.io/clusterrolebindings': [`${release}-node`],
    // One per node, named after it (naat-node-<node>): RBAC cannot name them in advance.
    'core/configmaps': undefined,
  });
});

describe('what the code does with them, in a control plane of its own', () => {
  test('the operator and the dataplane use every permission listed as used, and need none they lack', async () => {
    // The chart as `helm install` would apply it, without the Deployment (no nodes run pods here).
    const k = cluster.kubectl;
    await k(['create', 'namespace', namespace]);
    // All CRDs but one, which the operator makes when it starts, as it would after a `helm install
    // --skip-crds`; the others it replaces with its own, as after `helm upgrade`.
    const made = 'egresspolicies.naat.dev';
    const crds = chart.filter((m) => m.kind === 'CustomResourceDefinition' && m.metadata.name !== made);
    await k(['apply', '--server-side', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: crds }));
    await k(['wait', '--for=condition=Established', '--timeout=30s', 'crd', '--all']);
    const rest = chart.filter((m) => m.kind !== 'CustomResourceDefinition' && m.kind !== 'Deployment');
    await k(['apply', '-n', namespace, '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: rest }));
    await k(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Node',
        metadata: { name: 'gateway-a', labels: { 'naat.dev/gateway': 'true', 'kubernetes.io/os': 'linux' } },
      }),
    );
    await k(
      ['patch', 'node', 'gateway-a', '--subresource=status', '--type=merge', '-p'].concat(
        JSON.stringify({ status: { addresses: [{ type: 'InternalIP', address: '127.0.0.1' }] } }),
      ),
    );

    // The operator as a process with the release's configuration and ServiceAccount.
    const config = JSON.parse(
      rest.find((m) => m.kind === 'ConfigMap' && m.metadata.name === `${release}-operator`)!.data!['config.json']!,
    );
    const [webhook, metrics, healthPort] = (await freePorts(3)) as [number, number, number];
    await writeFile(
      join(dir, 'operator.json'),
      JSON.stringify(runnableHere(config, { webhook, metrics, health: healthPort })),
    );
    const operator = processes.capture('operator', [process.execPath, join(root, 'operator', 'main.ts')], {
      KUBECONFIG: await serviceAccountKubeconfig(
        cluster.kubeconfig,
        namespace,
        `${release}-operator`,
        join(dir, 'operator.kubeconfig'),
      ),
      NAAT_CONFIG: join(dir, 'operator.json'),
      NAAT_NAMESPACE: namespace,
      NAAT_POD_NAME: `${release}-operator-local`,
    });
    await until(
      'the operator ready',
      async () =>
        (await fetch(`http://127.0.0.1:${healthPort}/readyz`).then(
          (r) => r.ok,
          () => false,
        )) || undefined,
    );

    await k(['wait', '--for=condition=Established', '--timeout=30s', `crd/${made}`]);
    await k(['create', 'namespace', apps]);
    await k(['label', 'namespace', apps, 'naat.dev/injection=enabled', `egress=${gateway}`]);
    await k(['create', 'serviceaccount', 'default', '-n', apps]);
    await k(
      ['apply', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'List',
        items: [
          ...gatewayWithUplink(gateway).map((object) =>
            object.kind === 'EgressGateway'
              ? {
                  ...object,
                  spec: {
                    ...object.spec,
                    failover: {
                      addresses: [{ address: failoverAddress, uplink: gateway }],
                      leaseDurationMilliseconds: 600,
                    },
                  },
                }
              : object,
          ),
          {
            apiVersion,
            kind: 'EgressPolicy',
            metadata: { name: 'web', namespace: apps },
            spec: {
              gateway,
              podSelector: {},
              rules: [{ name: 'deny-curl', applications: [{ processName: 'curl' }], action: 'Deny' }],
            },
          },
          {
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name: 'web', namespace: apps },
            spec: { nodeName: 'gateway-a', containers: [{ name: 'app', image: 'app:test' }] },
          },
        ],
      }),
    );
    await until('the gateway compiled and its status written', async () => {
      const object = JSON.parse(await k(['get', 'egressgateway', gateway, '-o', 'json']));
      const policy = JSON.parse(await k(['get', 'egresspolicy', 'web', '-n', apps, '-o', 'json']));
      return object.status?.configHash && policy.status?.conditions ? true : undefined;
    });
    const pod = JSON.parse(await k(['get', 'pod', 'web', '-n', apps, '-o', 'json']));
    expect(pod.spec.initContainers?.map((c: { name: string }) => c.name)).toEqual(['naat-sidecar']);

    // The dataplane agent as the DaemonSet runs it, in a network namespace of its own that reaches
    // the apiserver through a relay, with the gateway's ServiceAccount.
    const run = (argv: string[]) =>
      new Promise<void>((resolve, reject) =>
        spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' }).on('exit', (code) =>
          code === 0 ? resolve() : reject(new Error(`${argv.join(' ')} exited with ${code}`)),
        ),
      );
    await run(['ip', 'netns', 'add', netns]);
    await run(['ip', '-n', netns, 'link', 'set', 'lo', 'up']);
    const relay = join(root, 'test/e2e/programs/relay.ts');
    const socket = join(dir, 'apiserver.sock');
    const { port } = new URL(cluster.server);
    processes.capture('relay', [process.execPath, relay, 'from-unix', socket, '127.0.0.1', port], {});
    processes.capture('relay-ns', inNetns([process.execPath, relay, 'to-unix', '127.0.0.1', port, socket]), {});
    await until('the relays', async () =>
      processes.output('relay').includes('listening') && processes.output('relay-ns').includes('listening')
        ? true
        : undefined,
    );
    // The CA bundle the operator published, where the kubelet would mount it.
    const bundle = await until('the CA bundle', async () => {
      const configMap = JSON.parse(await k(['get', 'configmap', `${release}-ca`, '-n', namespace, '-o', 'json']));
      return configMap.data?.['ca.crt'] as string | undefined;
    });
    await writeFile(join(dir, 'ca.crt'), bundle);
    await mkdir(join(dir, 'tls'));
    // The agent runs as the gateway's ServiceAccount, with a token bound to its pod on its node,
    // which proves that node to the signer.
    await until("the gateway's ServiceAccount", () =>
      k(['get', 'serviceaccount', objectName(gateway), '-n', namespace]).then(() => true),
    );
    const agentKubeconfig = await podBoundKubeconfig(cluster.kubeconfig, {
      namespace,
      account: objectName(gateway),
      pod: 'agent-gateway-a',
      node: 'gateway-a',
      dir,
    });
    const agent = processes.capture(
      'agent',
      inNetns([
        process.execPath,
        join(root, 'dataplane', 'main.ts'),
        'run',
        '--config-map',
        `${namespace}/${objectName(gateway)}`,
        '--node',
        'gateway-a',
        '--state-dir',
        join(dir, 'state'),
        '--report',
        '--report-ms',
        '300',
        '--secure-listen',
        '127.0.0.1:7743',
        '--tls-dir',
        join(dir, 'tls'),
        '--csr',
        join(dir, 'ca.crt'),
      ]),
      { KUBECONFIG: agentKubeconfig },
    );
    await until('the agent listening for sidecars', async () =>
      processes.output('agent').includes('Listening for NAA streams') ? true : undefined,
    );
    // A real sidecar of the pod, with a token bound to it for the naat audience.
    const token = await k(
      ['create', 'token', 'default', '-n', apps, '--audience', 'naat', '--bound-object-kind', 'Pod'].concat([
        '--bound-object-name',
        'web',
        '--bound-object-uid',
        pod.metadata.uid,
      ]),
    );
    await writeFile(join(dir, 'token'), token.trim());
    const sidecar = processes.capture('sidecar', inNetns([process.execPath, join(root, 'sidecar', 'main.ts')]), {
      NAAT_NAA_SERVER: '127.0.0.1:7740',
      NAAT_POD_NAMESPACE: apps,
      NAAT_POD_NAME: 'web',
      NAAT_POD_UID: pod.metadata.uid,
      NAAT_TOKEN_FILE: join(dir, 'token'),
      // As the webhook gives it: the CA its agent's certificate must chain to.
      NAAT_NAA_CA: bundle,
    });
    try {
      await until('the sidecar accepted', async () =>
        processes.output('agent').includes('Accepted NAA stream') ? true : undefined,
      );
      await until('the uplink status reported', async () => {
        const uplink = JSON.parse(await k(['get', 'uplink', gateway, '-o', 'json']));
        return uplink.status?.nodes?.some((n: { node: string }) => n.node === 'gateway-a') ? true : undefined;
      });
      // A ServiceAccount without the flow reader role asks for the flows: reviewed, and refused.
      await until('the secure listener', async () =>
        processes.output('agent').includes('Serving flow data to authorized callers') ? true : undefined,
      );
      const reader = await k(['create', 'token', 'default', '-n', apps, '--audience', 'naat-flows']);
      await writeFile(join(dir, 'reader-header'), `Authorization: Bearer ${reader.trim()}`);
      const refused = await new Promise<string>((resolve) => {
        const argv = inNetns(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--cacert', join(dir, 'ca.crt')]);
        // The certificate names the node: the agent is dialled by that name.
        argv.push('--resolve', 'gateway-a:7743:127.0.0.1', '-H', `@${join(dir, 'reader-header')}`);
        argv.push('https://gateway-a:7743/flows');
        let out = '';
        const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
        child.stdout.on('data', (d) => (out += d));
        child.on('exit', () => resolve(out));
      });
      expect(refused).toBe('403');

      // The agent's failover Lease, with its identity, once the operator granted it: created and
      // renewed, the gateway's Leases listed and watched. (Its uplink has no link here, so it
      // claims no address; a claim is one more renewal.)
      await until('the Role for failover Leases', async () => {
        const role = JSON.parse(await k(['get', 'role', objectName(gateway), '-n', namespace, '-o', 'json']));
        return (role.rules as Rule[]).some((rule) => rule.resources?.includes('leases')) ? true : undefined;
      });
      await until('the failover Lease renewed by the agent', async () => {
        const lease = JSON.parse(
          await k(['get', 'lease', failoverLeaseName(gateway, 'gateway-a'), '-n', namespace, '-o', 'json']),
        );
        return lease.spec.renewTime !== lease.spec.acquireTime ? true : undefined;
      });
    } catch (error) {
      throw new Error(`${(error as Error).message}\nagent:\n${processes.output('agent').slice(-3000)}`, {
        cause: error,
      });
    }
    // Stopped as the kubelet stops it: at SIGTERM it reads its config and its node.
    const stopped = new Promise((resolve) => agent.once('exit', resolve));
    agent.kill('SIGTERM');
    await stopped;
    expect(processes.output('agent')).toContain('the kernel keeps the ruleset');
    for (const child of [sidecar, agent, operator]) await stopProcess(child);

    for (const [component, user] of [
      ['operator', operatorUser],
      ['dataplane', dataplaneUser],
    ] as const) {
      const { used, forbidden } = await requestsOf(user);
      const listed = allowed[component];
      // Everything it asked for was granted ...
      expect({ component, forbidden: sorted(forbidden) }).toEqual({ component, forbidden: [] });
      expect({ component, unlisted: sorted([...used].filter((p) => !(p in listed))) }).toEqual({
        component,
        unlisted: [],
      });
      // ... and everything granted was used, unless the list says why it is needed all the same.
      const unused = Object.entries(listed)
        .filter(([permission, reason]) => reason === null && !used.has(permission))
        .map(([permission]) => permission);
      expect({ component, unused }).toEqual({ component, unused: [] });
      const saidUnused = Object.entries(listed)
        .filter(([permission, reason]) => reason !== null && used.has(permission))
        .map(([permission]) => permission);
      expect({ component, listedAsUnexercisedButUsed: saidUnused }).toEqual({
        component,
        listedAsUnexercisedButUsed: [],
      });
    }
    expect(processes.output('operator')).not.toMatch(/forbidden/i);
    expect(processes.output('agent')).not.toMatch(/forbidden/i);
  }, 90_000);
});

describe('the sidecar-injection webhook', () => {
  const webhook = () => chart.find((m) => m.kind === 'MutatingWebhookConfiguration')!.webhooks![0]!;

  test('fails open, times out quickly and never selects the system namespaces, its own or opted-out pods', () => {
    const { failurePolicy, timeoutSeconds, namespaceSelector, objectSelector } = webhook();
    expect(failurePolicy).toBe('Ignore');
    expect(timeoutSeconds).toBeLessThanOrEqual(10);
    const excluded = namespaceSelector.matchExpressions?.find(
      (e) => e.key === 'kubernetes.io/metadata.name' && e.operator === 'NotIn',
    )?.values;
    expect(excluded).toEqual(expect.arrayContaining(['kube-system', 'kube-public', 'kube-node-lease', namespace]));
    expect(objectSelector?.matchExpressions).toContainEqual({
      key: 'naat.dev/inject',
      operator: 'NotIn',
      values: ['false'],
    });
  });

  test('pointed at an address that never answers, delays only the pods it selects, by at most its timeout', async () => {
    const k = cluster.kubectl;
    const { timeoutSeconds } = webhook();
    // The operator would point the webhook back at itself.
    await processes.stopAll();
    // Accepts every connection and never says a word, not even the TLS handshake.
    const held: Socket[] = [];
    const blackHole: Server = createServer((socket) => held.push(socket));
    await new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve));
    const port = (blackHole.address() as { port: number }).port;
    try {
      await k([
        'patch',
        'mutatingwebhookconfiguration',
        `${release}-sidecar-injector`,
        '--type=json',
        '-p',
        JSON.stringify([
          { op: 'replace', path: '/webhooks/0/clientConfig', value: { url: `https://127.0.0.1:${port}/mutate-pods` } },
        ]),
      ]);
      const plain = 'rbac-plain';
      await k(['create', 'namespace', plain]);
      // The selector matches on labels: even labelled for injection, these stay excluded.
      await k(['label', 'namespace', 'kube-system', namespace, 'naat.dev/injection=enabled', '--overwrite']);
      for (const ns of [plain, 'kube-system', namespace]) {
        await k(['create', 'serviceaccount', 'default', '-n', ns]).catch(() => '');
      }
      const create = async (ns: string, name: string, labels: Record<string, string> = {}) => {
        const started = performance.now();
        await k(
          ['create', '-f', '-'],
          JSON.stringify({
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name, namespace: ns, labels },
            spec: { containers: [{ name: 'app', image: 'app:test' }] },
          }),
        );
        return (performance.now() - started) / 1000;
      };
      const calls = () => held.length;
      const timings: Record<string, number> = {};
      for (const [ns, name, labels] of [
        [plain, 'unselected-namespace', {}],
        ['kube-system', 'system-namespace', {}],
        [namespace, 'release-namespace', {}],
        [apps, 'opted-out', { 'naat.dev/inject': 'false' }],
      ] as const) {
        timings[name] = await create(ns, name, labels);
        expect({ name, seconds: timings[name]! < 2 }).toEqual({ name, seconds: true });
      }
      expect(calls()).toBe(0);
      timings.selected = await create(apps, 'selected');
      expect(calls()).toBeGreaterThan(0);
      expect(timings.selected).toBeGreaterThanOrEqual(timeoutSeconds - 0.5);
      expect(timings.selected).toBeLessThan(timeoutSeconds + 3);
      const pod = JSON.parse(await k(['get', 'pod', 'selected', '-n', apps, '-o', 'json']));
      expect(pod.spec.initContainers).toBeUndefined();
      console.log(
        `pod creation with the webhook black-holed (timeout ${timeoutSeconds}s): ${Object.entries(timings)
          .map(([name, seconds]) => `${name} ${seconds.toFixed(2)}s`)
          .join(', ')}`,
      );
    } finally {
      for (const socket of held) socket.destroy();
      blackHole.close();
    }
  }, 60_000);
});
