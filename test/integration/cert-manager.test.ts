// The chart with webhook.certManager.enabled, against the real apiserver, with what cert-manager
// would write done by hand (the test cluster has no cert-manager): the CA Certificate's Secret,
// the webhook's serving Secret and the injected caBundle. The operator, with exactly the chart's
// RBAC for that mode, serves cert-manager's pair, leaves the webhook and its Secret alone,
// publishes cert-manager's CA for the agents, and signs an agent's certificate with it.
import type { ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { root } from '../../crds/generate.ts';
import { objectName } from '../../operator/desired.ts';
import { lifetime, makeCa, makeServing } from '../../operator/certificates.ts';
import { servingNames } from '../../operator/reconcilers/webhook-certificate.ts';
import { parseSettings } from '../../operator/settings.ts';
import { askForCertificate, podBoundKubeconfig } from '../cluster/agent-identity.ts';
import { kubectl } from '../cluster/cluster.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { gatewayWithUplink, problemLines, startReleaseOperator } from '../cluster/operator.ts';

const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
// Tests share one apiserver: the release, its namespace and the gateway are unique to this run.
const release = `naat-cm${process.pid}`;
const namespace = `naat-cert-manager${process.pid}`;
const gateway = `cm-${process.pid}`;

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
  data?: Record<string, string>;
}

let dir: string;
let operator: ChildProcess | undefined;
let cleanup: Manifest[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-cert-manager-'));
}, 60_000);

afterAll(async () => {
  operator?.kill('SIGTERM');
  await k(['delete', 'egressgateway', gateway, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', gateway, '--ignore-not-found', '--wait=false']);
  for (const m of cleanup.filter((m) => !m.metadata.namespace)) {
    await k(['delete', m.kind, m.metadata.name, '--ignore-not-found', '--wait=false']);
  }
  await k(['delete', 'namespace', namespace, '--ignore-not-found', '--wait=false']);
  await rm(dir, { recursive: true, force: true });
});

const base64 = (text: string) => Buffer.from(text).toString('base64');
const tlsSecret = (name: string, ca: string, pair: { cert: string; key: string }) => ({
  apiVersion: 'v1',
  kind: 'Secret',
  type: 'kubernetes.io/tls',
  metadata: { name, namespace },
  data: { 'ca.crt': base64(ca), 'tls.crt': base64(pair.cert), 'tls.key': base64(pair.key) },
});

test("the operator serves cert-manager's certificate and signs the agents' with its CA", async () => {
  const rendered = await helm(await buildHelm(), [
    ...['template', release, join(root, 'charts/naat'), '--namespace', namespace],
    ...['--set', 'webhook.certManager.enabled=true'],
  ]);
  const manifests = parseAllDocuments(rendered)
    .map((document) => document.toJS() as Manifest | null)
    .filter((m): m is Manifest => m !== null);
  // The chart as the apiserver gets it, but cert-manager's objects and the Deployment (the
  // operator runs here as a process).
  const applied = manifests.filter((m) => m.apiVersion !== 'cert-manager.io/v1' && m.kind !== 'Deployment');
  cleanup = applied;
  await k(['create', 'namespace', namespace]);
  await k(['apply', '-n', namespace, '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: applied }));

  // What cert-manager would write: its CA Certificate's Secret (the CA as its own pair), the
  // webhook's serving pair for the Certificate's names, and the CA into the webhook's caBundle.
  const config = parseSettings(
    JSON.parse(
      manifests.find((m) => m.kind === 'ConfigMap' && m.metadata.name === `${release}-operator`)!.data!['config.json']!,
    ),
  );
  const now = new Date();
  const ca = makeCa(`${release}-ca`, lifetime(now, 86_400_000 * 365));
  const serving = makeServing(ca, servingNames(config.webhook, namespace), lifetime(now, 86_400_000 * 90));
  await k(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'List',
      items: [tlsSecret(`${release}-ca`, ca.cert, ca), tlsSecret(`${release}-webhook-tls`, ca.cert, serving)],
    }),
  );
  const webhookName = `${release}-sidecar-injector`;
  await k([
    ...['patch', 'mutatingwebhookconfiguration', webhookName, '--type=json'],
    ...['-p', JSON.stringify([{ op: 'add', path: '/webhooks/0/clientConfig/caBundle', value: base64(ca.cert) }])],
  ]);
  const webhookBefore = JSON.parse(await k(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json']));

  const started = await startReleaseOperator({ kubeconfig, release, namespace, dir });
  operator = started.child;
  const { eventually } = started;
  await started.ready();
  // The operator puts naat's CRDs in place as it starts.
  await k(['wait', '--for=condition=Established', 'crd/uplinks.naat.dev', 'crd/egressgateways.naat.dev']);
  await k(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: gatewayWithUplink(gateway) }));
  const bundle = await eventually('the CA bundle', async () => {
    const configMap = JSON.parse(await k(['get', 'configmap', `${release}-ca`, '-n', namespace, '-o', 'json']));
    return configMap.data?.['ca.crt'] as string | undefined;
  });
  expect(bundle).toBe(ca.cert);
  const account = objectName(gateway);
  await eventually("the gateway's ServiceAccount", () =>
    k(['get', 'serviceaccount', account, '-n', namespace]).then(() => true),
  );
  const agentKubeconfig = await podBoundKubeconfig(kubeconfig, {
    namespace,
    account,
    pod: 'agent',
    node: 'gateway-a',
    dir,
  });
  const issued = await askForCertificate(agentKubeconfig, 'gateway-a');
  if (!('certificate' in issued)) throw new Error(`the agent's request was refused: ${issued.refused}`);
  const agent = new X509Certificate(issued.certificate);
  expect(agent.verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
  expect(agent.checkHost('gateway-a')).toBe('gateway-a');

  // cert-manager's objects are left as they were.
  const webhookSecret = JSON.parse(await k(['get', 'secret', `${release}-webhook-tls`, '-n', namespace, '-o', 'json']));
  expect(Buffer.from(webhookSecret.data['tls.crt'], 'base64').toString()).toBe(serving.cert);
  const webhookAfter = JSON.parse(await k(['get', 'mutatingwebhookconfiguration', webhookName, '-o', 'json']));
  expect(webhookAfter.webhooks).toEqual(webhookBefore.webhooks);
  expect(problemLines(started.output())).toEqual([]);
}, 180_000);
