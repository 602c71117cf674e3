// The sidecar-injection webhook as the apiserver calls it: the operator (`node operator/main.ts`)
// issues its certificate into the webhook Secret and the CA into the MutatingWebhookConfiguration,
// and the real apiserver then has it inject the NAA sidecar into the pods a gateway selects
// (and into nothing else), admits pods unchanged while the operator is down, and a restarted
// operator keeps the certificate it made. Pod Security restricted admits a node-driven strict pod
// as the webhook patches it.
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { request } from 'node:https';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiVersion } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { sidecarContainerName } from '../../operator/compile.ts';
import { freePorts, kubectl } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { operatorSettings, webhookObjects } from '../cluster/operator.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../cluster/otlp.ts';
import { until } from '../e2e/topology.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const id = `wh${process.pid}`;
const system = `naat-${id}`;
const injected = `inj-${id}`;
const plain = `plain-${id}`;
let dir: string;
let operator: ChildProcess | undefined;
let output = '';
let otlp: OtlpReceiver;
let ports: { metrics: number; health: number; webhook: number };

const apply = (object: unknown) =>
  k(['apply', '--server-side', '--field-manager=test', '-f', '-'], JSON.stringify(object));

async function startOperator(): Promise<void> {
  const file = join(dir, 'operator.json');
  await writeFile(file, JSON.stringify(operatorSettings(id, ports)));
  operator = spawn(process.execPath, [join(root, 'operator', 'main.ts')], {
    env: {
      ...process.env,
      NAAT_CONFIG: file,
      NAAT_NAMESPACE: system,
      NAAT_POD_NAME: 'operator-a',
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_LOGS_EXPORTER: 'none',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  operator.stdout!.on('data', (d) => (output += d));
  operator.stderr!.on('data', (d) => (output += d));
  await eventually(
    'the operator ready with its certificate',
    async () =>
      (await fetch(`http://127.0.0.1:${ports.health}/readyz`)
        .then((r) => r.ok)
        .catch(() => false)) || undefined,
  );
}

async function stopOperator(): Promise<void> {
  const child = operator!;
  operator = undefined;
  await new Promise((resolve) => {
    child.once('exit', resolve);
    child.kill('SIGTERM');
  });
}

/** `until`, with the operator's last output in the error. */
const eventually = <T>(what: string, check: () => Promise<T | undefined>) =>
  until(what, check).catch((error: Error) => {
    throw new Error(`${error.message}\n${output.slice(-3000)}`);
  });

/** Creates a pod as a user would and returns it as the apiserver stored it. */
async function createPod(namespace: string, name: string, labels: Record<string, string>) {
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels },
    spec: { nodeName: 'gateway-a', containers: [{ name: 'app', image: 'app:test' }] },
  };
  await k(['create', '-f', '-'], JSON.stringify(pod));
  return JSON.parse(await k(['get', 'pod', name, '-n', namespace, '-o', 'json'])) as {
    metadata: { annotations?: Record<string, string> };
    spec: {
      shareProcessNamespace?: boolean;
      initContainers?: Array<{ name: string; restartPolicy?: string; env?: Array<{ name: string; value?: string }> }>;
      containers: Array<{ name: string }>;
      volumes?: Array<{ name: string; projected?: unknown }>;
    };
  };
}

const secret = async () =>
  JSON.parse(await k(['get', 'secret', `${id}-webhook`, '-n', system, '-o', 'json'])) as {
    metadata: { resourceVersion: string };
    data?: Record<string, string>;
  };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-webhook-'));
  otlp = await startOtlpReceiver();
  const [metrics, health, webhook] = await freePorts(3);
  ports = { metrics: metrics!, health: health!, webhook: webhook! };
  await installCrds(process.env.KUBECONFIG!);
  await k(['create', 'namespace', system]);
  for (const object of webhookObjects(id, system)) await apply(object);
  for (const [name, labels] of [
    [injected, { 'naat.dev/injection': 'enabled', egress: id }],
    [plain, { egress: id }],
  ] as const) {
    await apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name, labels } });
  }
  await apply({
    apiVersion,
    kind: 'EgressGateway',
    metadata: { name: id },
    spec: {
      nodeSelector: { 'naat.dev/gateway': 'true' },
      uplinks: { names: [`${id}-isp`] },
      namespaceSelector: { matchLabels: { egress: id } },
      association: { port: 7745, sidecar: { podSelector: { matchLabels: { naa: 'on' } } } },
    },
  });
  await startOperator();
}, 120_000);

afterAll(async () => {
  if (operator) await stopOperator();
  await k(['delete', 'mutatingwebhookconfiguration', id, '--ignore-not-found']);
  await k(['delete', 'egressgateway', id, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'namespace', injected, plain, system, '--wait=false']);
  await rm(dir, { recursive: true, force: true });
  await otlp.close();
});

test('the operator issues the certificate and points the webhook configuration at it', async () => {
  const data = (await secret()).data!;
  const ca = new X509Certificate(Buffer.from(data['ca.crt']!, 'base64'));
  const serving = new X509Certificate(Buffer.from(data['tls.crt']!, 'base64'));
  expect(ca.ca).toBe(true);
  expect(serving.verify(ca.publicKey)).toBe(true);
  expect(serving.checkIP('127.0.0.1')).toBe('127.0.0.1');
  const configuration = JSON.parse(await k(['get', 'mutatingwebhookconfiguration', id, '-o', 'json']));
  expect(configuration.webhooks[0].clientConfig).toEqual({
    url: `https://127.0.0.1:${ports.webhook}/mutate-pods`,
    caBundle: data['ca.crt'],
  });
});

test('the apiserver has the webhook inject the sidecar into selected pods only', async () => {
  const selected = await createPod(injected, 'web-1', { naa: 'on' });
  expect(selected.spec.shareProcessNamespace).toBe(true);
  expect(selected.metadata.annotations?.['naat.dev/sidecar-gateway']).toBe(id);
  expect(selected.spec.containers.map((c) => c.name)).toEqual(['app']);
  const sidecar = selected.spec.initContainers?.find((c) => c.name === sidecarContainerName);
  expect(sidecar?.restartPolicy).toBe('Always');
  expect(sidecar?.env?.find((e) => e.name === 'NAAT_NAA_PORT')?.value).toBe('7745');
  expect(selected.spec.volumes?.some((v) => v.name === 'naat-token' && v.projected)).toBe(true);
  // The operator says in the pod's status which association mode it is in, and why.
  const condition = await eventually('the association mode condition', async () => {
    const pod = JSON.parse(await k(['get', 'pod', 'web-1', '-n', injected, '-o', 'json']));
    return (pod.status?.conditions as Array<{ type: string; reason: string; message: string }> | undefined)?.find(
      (c) => c.type === 'naat.dev/AssociationMode',
    );
  });
  expect(condition).toMatchObject({
    reason: 'Observe',
    message: `Observe association, chosen by EgressGateway ${id} association.mode: the sidecar reports sockets as it sees them`,
  });

  // Not picked by the gateway's sidecar selector; opted out; in a namespace without injection.
  for (const [namespace, name, labels] of [
    [injected, 'web-2', { naa: 'off' }],
    [injected, 'web-3', { naa: 'on', 'naat.dev/inject': 'false' }],
    [plain, 'web-4', { naa: 'on' }],
  ] as const) {
    const untouched = await createPod(namespace, name, labels);
    expect({ name, init: untouched.spec.initContainers, share: untouched.spec.shareProcessNamespace }).toEqual({
      name,
      init: undefined,
      share: undefined,
    });
  }
  const metrics = await fetch(`http://127.0.0.1:${ports.metrics}/metrics`).then((r) => r.text());
  expect(metrics).toContain('naat_operator_webhook_reviews_total{result="injected"} 1');
  // web-3 and web-4 never reach the webhook: the apiserver's selectors leave them out.
  expect(metrics).toContain('naat_operator_webhook_reviews_total{result="skipped"} 1');
});

test('malformed reviews are refused with a status that says why, and the webhook keeps serving', async () => {
  const ca = Buffer.from((await secret()).data!['ca.crt']!, 'base64');
  const post = (path: string, body: string) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: ports.webhook,
          path,
          method: 'POST',
          ca,
          headers: { 'content-type': 'application/json' },
        },
        (res) => {
          let text = '';
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode!, text }));
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  expect(await post('/mutate-pods', '{"kind":')).toMatchObject({
    status: 400,
    text: expect.stringMatching(/^bad request: /),
  });
  expect(await post('/mutate-pods', '{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}')).toEqual({
    status: 400,
    text: 'bad request: expected an admission.k8s.io/v1 AdmissionReview with request.uid\n',
  });
  expect((await post('/elsewhere', '{}')).status).toBe(404);
  const pod = await createPod(injected, 'web-7', { naa: 'on' });
  expect(pod.spec.initContainers?.map((c) => c.name)).toEqual([sidecarContainerName]);
});

test('with the operator down, pods are admitted without the sidecar; a restart keeps the certificate', async () => {
  const before = await secret();
  await stopOperator();
  const started = Date.now();
  const admitted = await createPod(injected, 'web-5', { naa: 'on' });
  expect(admitted.spec.initContainers).toBeUndefined();
  // Connection refused fails at once; the timeout (5 s) bounds any other failure.
  expect(Date.now() - started).toBeLessThan(5_000);

  await startOperator();
  const selected = await createPod(injected, 'web-6', { naa: 'on' });
  expect(selected.spec.initContainers?.map((c) => c.name)).toEqual([sidecarContainerName]);
  expect((await secret()).metadata.resourceVersion).toBe(before.metadata.resourceVersion);
  expect(output.match(/Issued the webhook certificate/g)).toHaveLength(1);
});

test('each reconcile is a span exported over OTLP, with the operator as its resource', async () => {
  const spans = await eventually('reconcile spans', async () => {
    const names = new Set(otlp.spans.map((s) => s.name));
    return names.has('reconcile gateways') && names.has('reconcile webhook-certificate') ? otlp.spans : undefined;
  });
  const gateway = spans.find((s) => s.name === 'reconcile gateways' && s.attributes['naat.key'] === id);
  expect(gateway?.attributes['naat.controller']).toBe('gateways');
  expect(gateway?.resource).toMatchObject({
    'service.name': 'naat-operator',
    'k8s.namespace.name': system,
    'k8s.pod.name': 'operator-a',
  });
  // The gateway names an Uplink that does not exist: the reconcile still succeeds (status says so).
  expect(gateway?.status?.code ?? 0).not.toBe(2);
  const certificate = spans.find((s) => s.name === 'reconcile webhook-certificate');
  expect(Number(certificate?.attributes['naat.requeue_after_ms'])).toBeGreaterThan(0);
});

test('Pod Security restricted admits a node-driven strict pod as the webhook patches it', async () => {
  const namespace = `restricted-${id}`;
  await apply({
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: {
      name: namespace,
      labels: { 'naat.dev/injection': 'enabled', egress: id, 'pod-security.kubernetes.io/enforce': 'restricted' },
    },
  });
  const pod = {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: 'web',
      namespace,
      labels: { naa: 'on' },
      annotations: { 'naat.dev/association-driver': 'Node', 'naat.dev/association-mode': 'Strict' },
    },
    spec: {
      nodeName: 'worker-a',
      securityContext: { runAsNonRoot: true, runAsUser: 2000, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        {
          name: 'app',
          image: 'app:test',
          securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
        },
      ],
    },
  };
  try {
    await k(['create', '-f', '-'], JSON.stringify(pod));
    const admitted = JSON.parse(await k(['get', 'pod', 'web', '-n', namespace, '-o', 'json'])) as {
      metadata: { annotations: Record<string, string> };
      spec: {
        initContainers?: Array<{ name: string }>;
        containers: Array<{ env?: Array<{ name: string; value?: string }> }>;
        volumes?: Array<{ name: string; emptyDir?: unknown }>;
      };
    };
    expect(admitted.metadata.annotations['naat.dev/association-mode']).toBe('Strict');
    expect(admitted.spec.initContainers?.map((c) => c.name)).toEqual(['naat-stamp-init']);
    expect(admitted.spec.containers[0]!.env).toContainEqual({
      name: 'LD_PRELOAD',
      value: '/var/run/naat/libnaat_stamp.so',
    });
    expect(admitted.spec.volumes?.find((v) => v.name === 'naat-run')?.emptyDir).toEqual({ medium: 'Memory' });
    // The level is enforced here: a pod that does not meet it is refused.
    const loose = { ...pod, metadata: { name: 'loose', namespace }, spec: { ...pod.spec, securityContext: {} } };
    await expect(k(['create', '-f', '-'], JSON.stringify(loose))).rejects.toThrow(/violates PodSecurity "restricted/);
  } finally {
    await k(['delete', 'namespace', namespace, '--wait=false']);
  }
});
