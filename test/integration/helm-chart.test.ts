// The chart as `helm lint` and `helm template` see it, with the default values and several other
// sets: what it renders, what its schema rejects, that its README documents every value, and that
// the real apiserver accepts every object it renders.
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { format } from 'prettier';
import { parse, parseAllDocuments } from 'yaml';
import { root } from '../../crds/generate.ts';
import { kubectl } from '../cluster/cluster.ts';
import { customResourceDefinitions, validate, type EgressGateway } from '../../crds/index.ts';
import type { Compiled } from '../../operator/compile.ts';
import { desiredGatewayObjects } from '../../operator/desired.ts';
import { servingNames } from '../../operator/reconcilers/webhook-certificate.ts';
import { agentSecurityContext, parseSettings, sidecarSecurityContext } from '../../operator/settings.ts';
import { buildHelm, helm, valuesTable, type JsonSchema } from '../cluster/helm.ts';

const chart = join(root, 'charts/naat');
const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
// Tests share one apiserver: the release and its namespace are unique to this run.
const release = `naat-tpl${process.pid}`;
const namespace = `naat-helm-tpl${process.pid}`;
const digest = `sha256:${'ab'.repeat(32)}`;

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

let binary: string;
beforeAll(async () => {
  binary = await buildHelm();
}, 600_000);

const setArgs = (values: Record<string, unknown>) =>
  Object.entries(values).flatMap(([key, value]) => ['--set-json', `${key}=${JSON.stringify(value)}`]);

async function render(values: Record<string, unknown> = {}): Promise<Manifest[]> {
  const out = await helm(binary, ['template', release, chart, '--namespace', namespace, ...setArgs(values)]);
  return parseAllDocuments(out)
    .map((document) => document.toJS() as Manifest | null)
    .filter((manifest): manifest is Manifest => manifest !== null);
}

const find = (manifests: Manifest[], kind: string, suffix = '') =>
  manifests.find((m) => m.kind === kind && m.metadata.name.endsWith(suffix))!;

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- rendered Kubernetes objects are walked field by field
type Any = any;
const podSpec = (manifests: Manifest[]): Any => (find(manifests, 'Deployment') as Any).spec.template.spec;
const operatorConfig = (manifests: Manifest[]): Any =>
  JSON.parse((find(manifests, 'ConfigMap', '-operator') as Any).data['config.json']);
const env = (manifests: Manifest[]) =>
  Object.fromEntries(
    (podSpec(manifests).containers[0].env as { name: string; value?: string }[]).map((e) => [e.name, e.value]),
  );

// Non-default value sets used by several tests below.
const valueSets: Record<string, Record<string, unknown>> = {
  'pinned digests, tracing and debug logs': {
    'images.operator.digest': digest,
    'images.dataplane.tag': '0.2.0',
    'images.dataplane.digest': digest,
    'images.sidecar.pullPolicy': 'Always',
    logLevel: 'debug',
    'otel.endpoint': 'http://otel-collector.monitoring:4317',
    'otel.protocol': 'http/protobuf',
    'otel.resourceAttributes': { 'deployment.environment': 'test', team: 'net' },
    imagePullSecrets: [{ name: 'registry' }],
  },
  'one replica without leader election': {
    'operator.replicas': 1,
    'operator.leaderElection.enabled': false,
  },
  // OpenShift's restricted SCC assigns the uid from the namespace's range.
  'no fixed uid, no priority class, other security contexts': {
    'operator.podSecurityContext': { runAsUser: null, runAsGroup: null },
    'operator.securityContext': { readOnlyRootFilesystem: false },
    'dataplane.priorityClassName': '',
    'dataplane.podSecurityContext': { seLinuxOptions: { type: 'spc_t' } },
    'sidecar.securityContext': { seLinuxOptions: { type: 'spc_t' } },
  },
  'placement, names and injection selectors': {
    fullnameOverride: 'egress',
    'operator.nodeSelector': { 'kubernetes.io/os': 'linux' },
    'operator.tolerations': [{ key: 'dedicated', operator: 'Equal', value: 'infra', effect: 'NoSchedule' }],
    'operator.priorityClassName': 'system-cluster-critical',
    'dataplane.tolerations': [{ operator: 'Exists' }],
    // Helm merges maps with the defaults: null removes a default key.
    'sidecarInjection.namespaceSelector': {
      matchLabels: null,
      matchExpressions: [{ key: 'egress', operator: 'In', values: ['app-aware'] }],
    },
    'sidecarInjection.objectSelector': { matchExpressions: null, matchLabels: { 'naat.dev/inject': 'true' } },
    'sidecarInjection.excludedNamespaces': ['kube-system', 'monitoring'],
  },
};

test('helm is the pinned release and renders for the Kubernetes version of the test cluster', async () => {
  const pinned = async (module: string, path: string) =>
    new RegExp(`\\s${module.replaceAll('.', '\\.')} (v\\S+)`).exec(await readFile(join(root, path), 'utf8'))![1]!;
  const helmVersion = await pinned('helm.sh/helm/v3', 'test/cluster/helm/go.mod');
  const [, minor] = (await pinned('k8s.io/kubernetes', 'test/cluster/modules/kubernetes/go.mod')).split('.');
  expect(await helm(binary, ['version', '--template', '{{ .Version }}'])).toBe(helmVersion);
  const probe = await mkdtemp(join(tmpdir(), 'naat-helm-probe-'));
  try {
    await mkdir(join(probe, 'templates'));
    await writeFile(join(probe, 'Chart.yaml'), 'apiVersion: v2\nname: probe\nversion: 0.0.1\n');
    await writeFile(join(probe, 'templates/version.yaml'), 'kubeVersion: {{ .Capabilities.KubeVersion.Version }}\n');
    expect(parse(await helm(binary, ['template', probe]))).toEqual({ kubeVersion: `v1.${minor}.0` });
  } finally {
    await rm(probe, { recursive: true, force: true });
  }
});

describe('helm lint', () => {
  test('passes strictly with the default values', async () => {
    await expect(helm(binary, ['lint', '--strict', chart])).resolves.toContain('0 chart(s) failed');
  });

  test.each(Object.keys(valueSets))('passes strictly with %s', async (name) => {
    await expect(helm(binary, ['lint', '--strict', chart, ...setArgs(valueSets[name]!)])).resolves.toContain(
      '0 chart(s) failed',
    );
  });
});

describe('helm template with the default values', () => {
  let manifests: Manifest[];
  beforeAll(async () => {
    manifests = await render();
  });

  test('renders the operator, its RBAC, Services, webhook and configuration', () => {
    expect(manifests.map((m) => `${m.kind}/${m.metadata.name}`).sort()).toEqual(
      [
        `ClusterRole/${release}-dataplane`,
        `ClusterRole/${release}-flow-reader`,
        `ClusterRole/${release}-node`,
        `ClusterRole/${release}-operator`,
        `ClusterRoleBinding/${release}-operator`,
        `ConfigMap/${release}-ca`,
        `ConfigMap/${release}-dashboard-naat`,
        `ConfigMap/${release}-operator`,
        `Deployment/${release}-operator`,
        `MutatingWebhookConfiguration/${release}-sidecar-injector`,
        `PodDisruptionBudget/${release}-operator`,
        `Role/${release}-cli`,
        `Role/${release}-operator`,
        `RoleBinding/${release}-operator`,
        `Secret/${release}-webhook-tls`,
        `Service/${release}-dataplane-metrics`,
        `Service/${release}-metrics`,
        `Service/${release}-webhook`,
        `ServiceAccount/${release}-operator`,
      ].sort(),
    );
    for (const m of manifests) {
      expect(m.metadata.labels).toMatchObject({ 'app.kubernetes.io/instance': release });
      if (!m.kind.startsWith('Cluster') && m.kind !== 'MutatingWebhookConfiguration') {
        expect(m.metadata.namespace).toBe(namespace);
      }
    }
  });

  test('runs two hardened operator replicas with leader election and probes', () => {
    const deployment = find(manifests, 'Deployment') as Any;
    expect(deployment.spec.replicas).toBe(2);
    const pod = podSpec(manifests);
    expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    const [container] = pod.containers;
    expect(container.image).toBe('ghcr.io/naat-dev/naat-operator:0.1.0');
    expect(container.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      privileged: false,
      capabilities: { drop: ['ALL'] },
    });
    expect(container.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'health' });
    expect(container.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'health' });
    expect(container.resources.requests).toEqual({ cpu: '50m', memory: '384Mi' });
    expect(operatorConfig(manifests).leaderElection).toMatchObject({ enabled: true, leaseName: `${release}-operator` });
    expect(env(manifests)).toMatchObject({ OTEL_SDK_DISABLED: 'true', NAAT_CONFIG: '/etc/naat/operator/config.json' });
  });

  test('gives the operator the configuration the chart README documents', () => {
    const config = operatorConfig(manifests);
    // What the operator reads and checks at start-up.
    expect(() => parseSettings(config)).not.toThrow();
    expect(config.bypass).toEqual(['10.96.0.0/12']);
    expect(Object.keys(config).sort()).toEqual([
      'bypass',
      'crds',
      'dataplane',
      'healthPort',
      'imagePullSecrets',
      'leaderElection',
      'logLevel',
      'marks',
      'metricsPort',
      'otel',
      'sidecar',
      'steering',
      'webhook',
    ]);
    expect(config.webhook).toEqual({
      configurationName: `${release}-sidecar-injector`,
      serviceName: `${release}-webhook`,
      secretName: `${release}-webhook-tls`,
      port: 9443,
    });
    expect(config.dataplane).toMatchObject({
      image: 'ghcr.io/naat-dev/naat-dataplane:0.1.0',
      pullPolicy: 'IfNotPresent',
      clusterRoleName: `${release}-dataplane`,
      caConfigMapName: `${release}-ca`,
      certificateLifetimeSeconds: 7 * 86_400,
      metricsPort: 9090,
      flowPort: 9094,
      localPort: 9095,
    });
    // The chart's defaults are the operator's own: agents at system-node-critical, root with NET_ADMIN and NET_RAW.
    expect(config.dataplane).toMatchObject({
      priorityClassName: 'system-node-critical',
      podSecurityContext: {},
      securityContext: agentSecurityContext,
    });
    expect(config.sidecar.securityContext).toEqual(sidecarSecurityContext);
    expect(Object.keys(env(manifests)).sort()).toEqual([
      'NAAT_CONFIG',
      'NAAT_NAMESPACE',
      'NAAT_POD_NAME',
      'NODE_OPTIONS',
      'OTEL_SDK_DISABLED',
      'OTEL_SERVICE_NAME',
    ]);
    // The operator's heap bound and young generation (operator.heapLimitMiB, operator.semiSpaceMiB).
    expect(env(manifests).NODE_OPTIONS).toBe('--max-old-space-size=512 --max-semi-space-size=16');
  });

  test('sends the webhook only opted-in pods, never blocks them and leaves caBundle to the operator', () => {
    const [webhook] = (find(manifests, 'MutatingWebhookConfiguration') as Any).webhooks;
    expect(webhook).toMatchObject({ failurePolicy: 'Ignore', sideEffects: 'None', timeoutSeconds: 5 });
    expect(webhook.clientConfig).toEqual({
      service: { name: `${release}-webhook`, namespace, path: '/mutate-pods', port: 443 },
    });
    expect(webhook.namespaceSelector.matchLabels).toEqual({ 'naat.dev/injection': 'enabled' });
    expect(webhook.namespaceSelector.matchExpressions).toContainEqual({
      key: 'kubernetes.io/metadata.name',
      operator: 'NotIn',
      values: ['kube-system', 'kube-public', 'kube-node-lease', namespace],
    });
    expect(webhook.rules).toEqual([
      { operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' },
    ]);
    // Flow data: get on the flows of EgressGateways, bound to no one by the chart.
    expect((find(manifests, 'ClusterRole', '-flow-reader') as Any).rules).toEqual([
      { apiGroups: ['naat.dev'], resources: ['egressgateways/flows'], verbs: ['get'] },
    ]);
    expect(manifests.filter((m) => (m as Any).roleRef?.name === `${release}-flow-reader`)).toEqual([]);
    // The CLI's port-forward to the agents' loopback listener, in the release namespace, bound to no one.
    expect((find(manifests, 'Role', '-cli') as Any).rules).toEqual([
      { apiGroups: [''], resources: ['pods', 'configmaps'], verbs: ['get', 'list'] },
      { apiGroups: [''], resources: ['pods/portforward'], verbs: ['get', 'create'] },
    ]);
    expect(manifests.filter((m) => (m as Any).roleRef?.name === `${release}-cli`)).toEqual([]);
    for (const secret of manifests.filter((m) => m.kind === 'Secret')) expect((secret as Any).data).toBeUndefined();
  });

  test('grants no wildcard, no cluster-wide write outside status, Events and bindings', () => {
    const rules = (kind: string): Any[] => (find(manifests, kind, '-operator') as Any).rules;
    for (const rule of [...rules('ClusterRole'), ...rules('Role')]) {
      for (const field of ['apiGroups', 'resources', 'verbs']) expect(rule[field]).not.toContain('*');
    }
    const writes = new Set(['create', 'update', 'patch', 'delete', 'bind', 'escalate']);
    const clusterWrites = rules('ClusterRole')
      .filter((rule) => rule.verbs.some((verb: string) => writes.has(verb)))
      .flatMap((rule) => rule.resources as string[]);
    expect(clusterWrites.sort()).toEqual(
      [
        'uplinks/status',
        'egressgateways/status',
        'egresspolicies/status',
        'egressgateways/finalizers',
        'pods/status',
        'events',
        'mutatingwebhookconfigurations',
        // the signer naat.dev/agent, which approves and signs for itself alone (below)
        'certificatesigningrequests/approval',
        'certificatesigningrequests/status',
        // naat's own, by name (below)
        'customresourcedefinitions',
        'clusterroles',
        'clusterrolebindings',
        // delete, of the node agents' binding only (below)
        'clusterrolebindings',
      ].sort(),
    );
    const named = (resource: string) => rules('ClusterRole').find((rule) => rule.resources.includes(resource));
    expect(named('mutatingwebhookconfigurations').resourceNames).toEqual([`${release}-sidecar-injector`]);
    expect(named('customresourcedefinitions')).toEqual({
      apiGroups: ['apiextensions.k8s.io'],
      resources: ['customresourcedefinitions'],
      resourceNames: customResourceDefinitions().map((crd) => (crd.metadata as { name: string }).name),
      verbs: ['get', 'create', 'patch', 'update'],
    });
    // Approving and signing for naat's signer alone.
    expect(named('signers')).toEqual({
      apiGroups: ['certificates.k8s.io'],
      resources: ['signers'],
      resourceNames: ['naat.dev/agent'],
      verbs: ['approve', 'sign'],
    });
    expect(named('clusterroles')).toMatchObject({
      verbs: ['bind'],
      resourceNames: [`${release}-dataplane`, `${release}-node`],
    });
    // The only delete cluster-wide: the node agents' binding, when no node needs a node agent.
    expect(rules('ClusterRole').filter((rule) => rule.verbs.includes('delete'))).toEqual([
      {
        apiGroups: ['rbac.authorization.k8s.io'],
        resources: ['clusterrolebindings'],
        resourceNames: [`${release}-node`],
        verbs: ['delete'],
      },
    ]);
    // Each agent asks for its node's certificate and reads the request back; none reads a Secret.
    const requests = {
      apiGroups: ['certificates.k8s.io'],
      resources: ['certificatesigningrequests'],
      verbs: ['create', 'get'],
    };
    expect((find(manifests, 'ClusterRole', '-node') as Any).rules).toEqual([
      { apiGroups: ['naat.dev'], resources: ['egressgateways/status'], verbs: ['patch'] },
      requests,
    ]);
    // Secrets: only the webhook's certificate and its CA, and only in the release namespace.
    expect(rules('ClusterRole').flatMap((rule) => rule.resources)).not.toContain('secrets');
    expect(rules('Role').find((rule) => rule.resources.includes('secrets')).resourceNames).toEqual([
      `${release}-webhook-tls`,
    ]);
    expect((find(manifests, 'ClusterRole', '-dataplane') as Any).rules).toEqual([
      { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
      { apiGroups: ['authorization.k8s.io'], resources: ['subjectaccessreviews'], verbs: ['create'] },
      { apiGroups: [''], resources: ['pods', 'nodes'], verbs: ['get'] },
      { apiGroups: ['naat.dev'], resources: ['uplinks/status'], verbs: ['patch'] },
      requests,
    ]);
  });
});

/** The pod template the operator renders for a gateway with the chart's configuration. */
function agentPod(manifests: Manifest[]): Any {
  const gateway = validate('EgressGateway', {
    apiVersion: 'naat.dev/v1alpha1',
    kind: 'EgressGateway',
    metadata: { name: 'egress', uid: 'uid-1' },
    spec: { nodeSelector: { role: 'gateway' }, uplinks: { names: ['isp'] }, namespaceSelector: {} },
  });
  if (!gateway.ok) throw new Error(gateway.errors.join('; '));
  const compiled = {
    config: { gateway: 'egress', timeouts: { icmpSeconds: 30 }, sources: [], pods: [], rules: [] },
  } as unknown as Compiled;
  const objects = desiredGatewayObjects(
    gateway.value as EgressGateway,
    compiled,
    parseSettings(operatorConfig(manifests)),
    namespace,
  );
  return (objects.find((o) => o.kind === 'DaemonSet') as Any).spec.template;
}

const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.entries(selector).every(([key, value]) => labels[key] === value);

describe('metrics and dashboards', () => {
  test("a headless Service selects every gateway agent's pods at their metrics port", async () => {
    const manifests = await render({ 'dataplane.metricsPort': 9190 });
    const service = find(manifests, 'Service', '-dataplane-metrics') as Any;
    expect(service.spec.clusterIP).toBe('None');
    const pod = agentPod(manifests);
    expect(matches(service.spec.selector, pod.metadata.labels)).toBe(true);
    // Only the agents: not the operator's pods.
    expect(matches(service.spec.selector, (find(manifests, 'Deployment') as Any).spec.template.metadata.labels)).toBe(
      false,
    );
    expect(service.spec.ports).toEqual([{ name: 'metrics', port: 9190, targetPort: 'metrics', protocol: 'TCP' }]);
    expect(pod.spec.containers[0].ports).toContainEqual({ name: 'metrics', containerPort: 9190 });
  });

  test('no ServiceMonitor or PodMonitor unless asked for', async () => {
    const kinds = (await render()).map((m) => m.kind);
    expect(kinds).not.toContain('ServiceMonitor');
    expect(kinds).not.toContain('PodMonitor');
  });

  test('ServiceMonitors of the operator and the agents select their metrics Services and ports', async () => {
    const manifests = await render({
      'metrics.serviceMonitor': { enabled: true, interval: '15s', labels: { release: 'prometheus' } },
    });
    const monitors = manifests.filter((m) => m.kind === 'ServiceMonitor') as Any[];
    expect(monitors.map((m) => m.metadata.name).sort()).toEqual([`${release}-dataplane`, `${release}-operator`]);
    for (const [monitor, service] of [
      [find(manifests, 'ServiceMonitor', '-operator'), find(manifests, 'Service', `${release}-metrics`)],
      [find(manifests, 'ServiceMonitor', '-dataplane'), find(manifests, 'Service', '-dataplane-metrics')],
    ] as Any[][]) {
      expect(monitor.apiVersion).toBe('monitoring.coreos.com/v1');
      expect(monitor.metadata.labels).toMatchObject({ release: 'prometheus' });
      expect(monitor.metadata.namespace).toBe(namespace);
      const selected = manifests.filter(
        (m) => m.kind === 'Service' && matches(monitor.spec.selector.matchLabels, m.metadata.labels!),
      );
      expect(selected.map((m) => m.metadata.name)).toContain(service.metadata.name);
      // The other Services it selects (the webhook's) have no port of that name: no target.
      for (const other of selected.filter((m) => m !== service)) {
        expect((other as Any).spec.ports.map((p: Any) => p.name)).not.toContain('metrics');
      }
      expect(monitor.spec.endpoints).toEqual([
        {
          port: 'metrics',
          path: '/metrics',
          interval: '15s',
          relabelings: [{ sourceLabels: ['__meta_kubernetes_pod_node_name'], targetLabel: 'node' }],
        },
      ]);
      expect(service.spec.ports.map((p: Any) => p.name)).toContain('metrics');
    }
  });

  test("PodMonitors select the operator's and the agents' pods by their metrics port", async () => {
    const manifests = await render({ 'metrics.podMonitor.enabled': true });
    const operator = find(manifests, 'PodMonitor', '-operator') as Any;
    const agents = find(manifests, 'PodMonitor', '-dataplane') as Any;
    const operatorPod = (find(manifests, 'Deployment') as Any).spec.template;
    const agentTemplate = agentPod(manifests);
    expect(matches(operator.spec.selector.matchLabels, operatorPod.metadata.labels)).toBe(true);
    expect(matches(operator.spec.selector.matchLabels, agentTemplate.metadata.labels)).toBe(false);
    expect(matches(agents.spec.selector.matchLabels, agentTemplate.metadata.labels)).toBe(true);
    expect(matches(agents.spec.selector.matchLabels, operatorPod.metadata.labels)).toBe(false);
    for (const [monitor, pod] of [
      [operator, operatorPod],
      [agents, agentTemplate],
    ]) {
      expect(monitor.spec.podMetricsEndpoints[0]).toMatchObject({ port: 'metrics', path: '/metrics', interval: '30s' });
      expect(pod.spec.containers[0].ports.map((p: Any) => p.name)).toContain('metrics');
    }
  });

  test("each dashboard of the chart is a ConfigMap for Grafana's sidecar holding its JSON as it is", async () => {
    const files = (await readdir(join(chart, 'dashboards'))).filter((f) => f.endsWith('.json'));
    expect(files.length).toBeGreaterThan(0);
    const manifests = await render();
    for (const file of files) {
      const map = find(manifests, 'ConfigMap', `-dashboard-${file.replace(/\.json$/, '')}`) as Any;
      expect(map.metadata.labels).toMatchObject({ grafana_dashboard: '1' });
      expect(map.data).toEqual({ [file]: await readFile(join(chart, 'dashboards', file), 'utf8') });
    }
    const custom = await render({
      'dashboards.labels': { grafana_dashboard: null, dashboards: 'naat' },
      'dashboards.annotations': { grafana_folder: 'Networking' },
    });
    const map = find(custom, 'ConfigMap', '-dashboard-naat') as Any;
    expect(map.metadata.labels).toMatchObject({ dashboards: 'naat' });
    expect(map.metadata.labels).not.toHaveProperty('grafana_dashboard');
    expect(map.metadata.annotations).toEqual({ grafana_folder: 'Networking' });
    const none = await render({ 'dashboards.enabled': false });
    expect(none.filter((m) => m.metadata.name.includes('-dashboard-'))).toEqual([]);
  });
});

describe('helm template with other values', () => {
  test('pins images by digest, turns tracing on and passes the settings to the operator', async () => {
    const manifests = await render(valueSets['pinned digests, tracing and debug logs']);
    expect(podSpec(manifests).containers[0].image).toBe(`ghcr.io/naat-dev/naat-operator:0.1.0@${digest}`);
    expect(podSpec(manifests).imagePullSecrets).toEqual([{ name: 'registry' }]);
    expect(env(manifests)).toMatchObject({
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://otel-collector.monitoring:4317',
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf',
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=test,team=net',
    });
    expect(env(manifests)).not.toHaveProperty('OTEL_SDK_DISABLED');
    const config = operatorConfig(manifests);
    expect(config).toMatchObject({ logLevel: 'debug', imagePullSecrets: ['registry'] });
    expect(config.dataplane).toMatchObject({ image: `ghcr.io/naat-dev/naat-dataplane:0.2.0@${digest}` });
    expect(config.sidecar).toMatchObject({ image: 'ghcr.io/naat-dev/naat-sidecar:0.1.0', pullPolicy: 'Always' });
    expect(config.otel.endpoint).toBe('http://otel-collector.monitoring:4317');
  });

  test('leaves the CRDs alone, with no permission on them, when something else keeps them', async () => {
    const manifests = await render({ 'crds.apply': false });
    expect(operatorConfig(manifests).crds).toEqual({ apply: false });
    const rules = (find(manifests, 'ClusterRole', '-operator') as Any).rules as Any[];
    expect(rules.flatMap((rule) => rule.resources)).not.toContain('customresourcedefinitions');
  });

  test('lets cert-manager keep the webhook certificate, from a CA the operator still issues the agents from', async () => {
    const manifests = await render({ 'webhook.certManager.enabled': true });
    const config = operatorConfig(manifests);
    expect(config.webhook).toMatchObject({ secretName: `${release}-webhook-tls`, caSecretName: `${release}-ca` });
    expect(() => parseSettings(config)).not.toThrow();
    const named = (kind: string, name: string) =>
      manifests.find((m) => m.kind === kind && m.metadata.name === name) as Any;
    // A self-signed Issuer signs the CA; the CA's Issuer signs the webhook's certificate, for the
    // very names the operator would have used, into the Secret the operator serves from.
    expect(named('Issuer', `${release}-selfsigned`).spec).toEqual({ selfSigned: {} });
    expect(named('Certificate', `${release}-ca`).spec).toMatchObject({
      isCA: true,
      secretName: `${release}-ca`,
      issuerRef: { kind: 'Issuer', name: `${release}-selfsigned` },
    });
    expect(named('Issuer', `${release}-ca`).spec).toEqual({ ca: { secretName: `${release}-ca` } });
    const serving = named('Certificate', `${release}-webhook`).spec;
    expect(serving).toMatchObject({ secretName: `${release}-webhook-tls`, issuerRef: { name: `${release}-ca` } });
    expect(serving.dnsNames).toEqual(servingNames(config.webhook, namespace));
    // cert-manager makes the Secret and injects the CA; the chart makes neither.
    expect(named('Secret', `${release}-webhook-tls`)).toBeUndefined();
    expect(named('ConfigMap', `${release}-ca`)).toBeDefined();
    const webhook = find(manifests, 'MutatingWebhookConfiguration') as Any;
    expect(webhook.metadata.annotations).toEqual({
      'cert-manager.io/inject-ca-from': `${namespace}/${release}-webhook`,
    });
    expect(webhook.webhooks[0].clientConfig.caBundle).toBeUndefined();
    // The operator only reads both Secrets, the webhook's and the CA's.
    const rules = (kind: string): Any[] => (find(manifests, kind, '-operator') as Any).rules;
    expect(rules('Role').filter((rule) => rule.resources.includes('secrets'))).toEqual([
      {
        apiGroups: [''],
        resources: ['secrets'],
        resourceNames: [`${release}-webhook-tls`, `${release}-ca`],
        verbs: ['list', 'watch'],
      },
    ]);
    expect(rules('ClusterRole').find((rule) => rule.resources.includes('mutatingwebhookconfigurations')).verbs).toEqual(
      ['list', 'watch'],
    );
    // Without it: the operator's own certificate, and no cert-manager object.
    const own = await render();
    expect(own.map((m) => m.apiVersion)).not.toContain('cert-manager.io/v1');
    expect(operatorConfig(own).webhook).not.toHaveProperty('caSecretName');
  });

  test('runs a single replica without a Lease or a disruption budget', async () => {
    const manifests = await render(valueSets['one replica without leader election']);
    expect((find(manifests, 'Deployment') as Any).spec.replicas).toBe(1);
    expect(manifests.map((m) => m.kind)).not.toContain('PodDisruptionBudget');
    expect(operatorConfig(manifests).leaderElection.enabled).toBe(false);
  });

  test('leaves the uid to the platform and passes the other security contexts on', async () => {
    const manifests = await render(valueSets['no fixed uid, no priority class, other security contexts']);
    const pod = podSpec(manifests);
    expect(pod.securityContext).toEqual({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
    expect(pod.containers[0].securityContext).toMatchObject({ readOnlyRootFilesystem: false, privileged: false });
    const settings = parseSettings(operatorConfig(manifests));
    expect(settings.dataplane.priorityClassName).toBe('');
    expect(settings.dataplane.podSecurityContext).toEqual({ seLinuxOptions: { type: 'spc_t' } });
    expect(settings.dataplane.securityContext).toEqual(agentSecurityContext);
    expect(settings.sidecar.securityContext).toEqual({ ...sidecarSecurityContext, seLinuxOptions: { type: 'spc_t' } });
  });

  test('places the operator, renames everything and narrows injection', async () => {
    const manifests = await render(valueSets['placement, names and injection selectors']);
    expect(manifests.every((m) => m.metadata.name.startsWith('egress-'))).toBe(true);
    const pod = podSpec(manifests);
    expect(pod.nodeSelector).toEqual({ 'kubernetes.io/os': 'linux' });
    expect(pod.priorityClassName).toBe('system-cluster-critical');
    expect(pod.tolerations).toHaveLength(1);
    expect(operatorConfig(manifests).dataplane.tolerations).toEqual([{ operator: 'Exists' }]);
    const [webhook] = (find(manifests, 'MutatingWebhookConfiguration') as Any).webhooks;
    expect(webhook.namespaceSelector).toEqual({
      matchExpressions: [
        { key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: ['kube-system', 'monitoring', namespace] },
        { key: 'egress', operator: 'In', values: ['app-aware'] },
      ],
    });
    expect(webhook.objectSelector).toEqual({ matchLabels: { 'naat.dev/inject': 'true' } });
  });

  test('rolls the operator pods when their configuration changes, and only then', async () => {
    const checksum = async (values: Record<string, unknown>) =>
      (find(await render(values), 'Deployment') as Any).spec.template.metadata.annotations['checksum/config'];
    const base = await checksum({});
    expect(await checksum({ 'operator.resources': { requests: { cpu: '1' } } })).toBe(base);
    expect(await checksum({ logLevel: 'warn' })).not.toBe(base);
  });
});

describe('invalid values', () => {
  test.each([
    [{ 'operator.replicas': 0 }, '/operator/replicas'],
    [{ 'operator.replicas': 'two' }, '/operator/replicas'],
    [{ logLevel: 'verbose' }, '/logLevel'],
    [{ 'images.sidecar.digest': 'latest' }, '/images/sidecar/digest'],
    [{ 'images.operator.pullPolicy': 'Sometimes' }, '/images/operator/pullPolicy'],
    [{ 'otel.endpoint': 'collector:4317' }, '/otel/endpoint'],
    [{ 'otel.protocol': 'udp' }, '/otel/protocol'],
    [{ 'sidecarInjection.timeoutSeconds': 30 }, '/sidecarInjection/timeoutSeconds'],
    [{ 'sidecarInjection.objectSelector': { matchExpressions: [{ key: 'a', operator: 'Is' }] } }, 'operator'],
    [{ 'operator.resources': { requests: { memory: 'lots' } } }, '/operator/resources/requests/memory'],
    [{ 'operator.ports.health': 70000 }, '/operator/ports/health'],
    [{ operatr: { replicas: 1 } }, "'operatr' not allowed"],
    [{ 'operator.leaderElection.enabled': false }, 'operator.replicas: more than one replica needs'],
    [{ 'operator.leaderElection.renewDeadlineSeconds': 20 }, 'operator.leaderElection.renewDeadlineSeconds'],
    [{ 'operator.ports.metrics': 8081 }, 'operator.ports: webhook, metrics and health must be different'],
    [{ 'dataplane.flowPort': 9091 }, 'dataplane.flowPort: must differ'],
    [{ 'steering.port': 0 }, '/steering/port'],
    [{ 'marks.tunnel': 0 }, '/marks/tunnel'],
    [{ 'metrics.serviceMonitor.interval': 'often' }, '/metrics/serviceMonitor/interval'],
    [
      { 'metrics.serviceMonitor.enabled': true, 'metrics.podMonitor.enabled': true },
      'metrics: enable serviceMonitor or podMonitor, not both',
    ],
  ])('%j is rejected naming %s', async (values, field) => {
    const failure = helm(binary, ['template', release, chart, ...setArgs(values)]);
    await expect(failure).rejects.toThrow(field);
  });
});

test('the chart README documents every value with its type, default and description', async () => {
  const schema = JSON.parse(await readFile(join(chart, 'values.schema.json'), 'utf8')) as JsonSchema;
  const values = parse(await readFile(join(chart, 'values.yaml'), 'utf8')) as Record<string, unknown>;
  const table = await format(valuesTable(schema, values), { parser: 'markdown', proseWrap: 'preserve' });
  const readme = await readFile(join(chart, 'README.md'), 'utf8');
  expect(readme).toContain(table.trim());
});

describe('the rendered objects on the real apiserver', () => {
  const applied: Manifest[] = [];
  beforeAll(async () => {
    await k(['create', 'namespace', namespace]);
  });
  afterAll(async () => {
    for (const m of applied.filter((m) => !m.metadata.namespace)) {
      await k(['delete', m.kind, m.metadata.name, '--ignore-not-found', '--wait=false']);
    }
    await k(['delete', 'namespace', namespace, '--wait=false']);
  });

  test.each([['the default values', {}], ...Object.entries(valueSets)])(
    'are accepted by server-side apply with %s',
    async (_name, values) => {
      const manifests = await render(values);
      applied.push(...manifests);
      const out = await k(
        ['apply', '--server-side', '--field-manager=naat-helm-test', '--force-conflicts', '-f', '-'],
        manifests.map((m) => JSON.stringify(m)).join('\n'),
      );
      expect(out.trim().split('\n')).toHaveLength(manifests.length);
    },
  );
});
