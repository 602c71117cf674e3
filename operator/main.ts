// The operator's entry point. Configured as the Helm chart runs it:
//   NAAT_CONFIG      its configuration file (operator/settings.ts), /etc/naat/operator/config.json
//   NAAT_NAMESPACE   where it creates each gateway's namespaced objects
//   NAAT_POD_NAME    its identity in leader election
// Every replica keeps its caches warm and serves the sidecar-injection webhook; only the leader
// reconciles (gateways, uplinks, and the webhook's certificate). /healthz, /readyz (caches
// synced, certificate loaded) and /metrics (reconcile durations and results, queue depth,
// leadership, webhook reviews; operator/metrics.ts) are served on the configured health and
// metrics ports.
import {
  AdmissionregistrationV1Api,
  AppsV1Api,
  type ConfigurationOptions,
  CoreV1Api,
  CustomObjectsApi,
  type KubernetesListObject,
  type KubernetesObject,
  type V1MutatingWebhookConfiguration,
  type V1Secret,
} from '@kubernetes/client-node';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { hostname } from 'node:os';
import { definitionOf, group, version, type Kind } from '../crds/index.ts';
import { jsonLogger as log, metricsContentType, startTelemetry } from '../common/index.ts';
import { apiListerWatcher, Informer, pooledKubeConfig, type ListPage } from '../common/kube/index.ts';
import { OperatorMetrics } from './metrics.ts';
import { gatewaysOf, onFactsChange, podFacts, Reconciler, type Caches } from './reconcile.ts';
import { Controller } from './runtime/controller.ts';
import { LeaderElector } from './runtime/leader.ts';
import { reconcileSpan } from './runtime/tracing.ts';
import { parseSettings } from './settings.ts';
import { CertificateReconciler, pairsOf } from './webhook-certificate.ts';
import { WebhookServer } from './webhook.ts';

const settings = parseSettings(
  JSON.parse(await readFile(process.env.NAAT_CONFIG ?? '/etc/naat/operator/config.json', 'utf8')),
);
const namespace = process.env.NAAT_NAMESPACE ?? 'naat-system';
const identity = process.env.NAAT_POD_NAME ?? hostname();
const tracing = await startTelemetry('naat-operator', {
  'k8s.namespace.name': namespace,
  'k8s.pod.name': identity,
});
const kubeConfig = pooledKubeConfig();

const core = kubeConfig.makeApiClient(CoreV1Api);
const apps = kubeConfig.makeApiClient(AppsV1Api);
const admission = kubeConfig.makeApiClient(AdmissionregistrationV1Api);
const custom = kubeConfig.makeApiClient(CustomObjectsApi);

type Selectors = { labelSelector?: string; fieldSelector?: string };

/** A cache of one collection; `list` gets the selectors and the page among its parameters. */
function informer<T extends KubernetesObject>(
  kind: string,
  path: string,
  list: (params: Selectors & ListPage, options: ConfigurationOptions) => Promise<KubernetesListObject<T>>,
  selectors: Selectors = {},
) {
  return new Informer<T>(
    apiListerWatcher<T>(kubeConfig, {
      path,
      list: (page, options) => list({ ...selectors, ...page }, options),
      ...selectors,
    }),
    { kind, log },
  );
}

/** The objects of one of naat's kinds; the caches hold them as the apiserver stored them. */
function naatInformer<T extends KubernetesObject>(kind: Kind) {
  const plural = definitionOf[kind].plural;
  const list = (page: ListPage, options: ConfigurationOptions) =>
    (definitionOf[kind].scope === 'Cluster'
      ? custom.listClusterCustomObject({ group, version, plural, ...page }, options)
      : custom.listCustomObjectForAllNamespaces(
          { group, version, resourcePlural: plural, ...page },
          options,
        )) as Promise<KubernetesListObject<T>>;
  return informer<T>(kind, `/apis/${group}/${version}/${plural}`, list);
}

const managed = 'app.kubernetes.io/managed-by=naat-operator';
const caches: Caches = {
  gateways: naatInformer('EgressGateway'),
  uplinks: naatInformer('Uplink'),
  policies: naatInformer('EgressPolicy'),
  pods: informer('Pod', '/api/v1/pods', (p, o) => core.listPodForAllNamespaces(p, o)),
  namespaces: informer('Namespace', '/api/v1/namespaces', (p, o) => core.listNamespace(p, o)),
  nodes: informer('Node', '/api/v1/nodes', (p, o) => core.listNode(p, o)),
  daemonSets: informer(
    'DaemonSet',
    `/apis/apps/v1/namespaces/${namespace}/daemonsets`,
    (p, o) => apps.listNamespacedDaemonSet({ namespace, ...p }, o),
    { labelSelector: managed },
  ),
};

// The webhook's own objects, watched by name: the only ones its RBAC lets it read.
const byName = (name: string) => ({ fieldSelector: `metadata.name=${name}` });
const webhookCaches = {
  secrets: informer<V1Secret>(
    'Secret',
    `/api/v1/namespaces/${namespace}/secrets`,
    (p, o) => core.listNamespacedSecret({ namespace, ...p }, o),
    byName(settings.webhook.secretName),
  ),
  webhooks: informer<V1MutatingWebhookConfiguration>(
    'MutatingWebhookConfiguration',
    '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations',
    (p, o) => admission.listMutatingWebhookConfiguration(p, o),
    byName(settings.webhook.configurationName),
  ),
};

// Read at each scrape; the controllers, the webhook and the elector are made below.
const metrics = new OperatorMetrics({
  queueDepths: () => Object.entries(controllers).map(([name, controller]) => [name, controller.queue.len] as const),
  isLeader: () => (elector ? elector.isLeader : true),
  webhookReviews: () => webhook.counts,
});
const reconciler = new Reconciler({ kubeConfig, caches, settings, namespace, identity, log });
const affected = gatewaysOf(caches);
const gateways = new Controller({
  name: 'gateways',
  reconcile: (key) => reconciler.reconcileGateway(key),
  around: metrics.timed('gateways', reconcileSpan('gateways')),
  log,
});
gateways.watch(caches.gateways);
gateways.watch(caches.policies, (_key, policy) => affected.ofPolicy(policy));
gateways.watch(caches.daemonSets, (_key, daemonSet) => affected.ofDaemonSet(daemonSet));
// Uplinks, pods, namespaces and nodes can change what any gateway selects: every gateway looks.
gateways.watch(caches.uplinks, affected.all);
gateways.watch(caches.pods, onFactsChange(caches.pods, podFacts, affected.all));
gateways.watch(
  caches.namespaces,
  onFactsChange(caches.namespaces, (n) => n.metadata?.labels, affected.all),
);
gateways.watch(
  caches.nodes,
  onFactsChange(caches.nodes, (n) => ({ labels: n.metadata?.labels, podCIDRs: n.spec?.podCIDRs }), affected.all),
);
const uplinks = new Controller({
  name: 'uplinks',
  reconcile: (key) => reconciler.reconcileUplink(key),
  around: metrics.timed('uplinks', reconcileSpan('uplinks')),
  log,
});
uplinks.watch(caches.uplinks);
// Pods with the sidecar get a condition naming their association mode; the rest are passed over.
const pods = new Controller({
  name: 'pods',
  reconcile: (key) => reconciler.reconcilePod(key),
  around: metrics.timed('pods', reconcileSpan('pods')),
  log,
});
pods.watch(caches.pods);

const certificate = new CertificateReconciler({
  kubeConfig,
  ...webhookCaches,
  settings: settings.webhook,
  namespace,
  log,
});
const certificates = new Controller({
  name: 'webhook-certificate',
  reconcile: () => certificate.reconcile(),
  around: metrics.timed('webhook-certificate', reconcileSpan('webhook-certificate')),
  log,
});
certificates.watch(webhookCaches.secrets, () => ['certificate']);
certificates.watch(webhookCaches.webhooks, () => ['certificate']);

const webhook = new WebhookServer({
  port: settings.webhook.port,
  context: async (podNamespace) => {
    if (!caches.gateways.hasSynced() || !caches.namespaces.hasSynced()) throw new Error('caches not synced yet');
    // A namespace made just before its first pod may not have reached the cache yet.
    const ns = caches.namespaces.get(podNamespace) ?? (await core.readNamespace({ name: podNamespace }));
    return {
      namespaceLabels: ns.metadata?.labels,
      gateways: caches.gateways.list(),
      sidecar: settings.sidecar,
      otel: settings.otel,
    };
  },
  log,
});
webhookCaches.secrets.onChange((_key, secret) => {
  const pairs = pairsOf(secret);
  if (pairs) webhook.setCertificate(pairs.serving);
});
await webhook.listen();

const allCaches = [...Object.values(caches), ...Object.values(webhookCaches)];
for (const cache of allCaches) cache.start();

const controllers: Record<string, Controller> = { gateways, uplinks, pods, certificates };
const elector = settings.leaderElection.enabled
  ? new LeaderElector({
      kubeConfig,
      namespace,
      name: settings.leaderElection.leaseName,
      identity,
      leaseDurationSeconds: settings.leaderElection.leaseDurationSeconds,
      renewDeadlineMs: settings.leaderElection.renewDeadlineSeconds * 1000,
      retryPeriodMs: settings.leaderElection.retryPeriodSeconds * 1000,
      onStartedLeading: () => {
        log.info('Started leading', { identity });
        for (const controller of Object.values(controllers)) void controller.run();
      },
      // A replica that lost its Lease may be acting on an old view: it stops and starts afresh.
      onStoppedLeading: () => {
        log.error('Lost the Lease; exiting so that a fresh replica takes over', { identity });
        process.exit(1);
      },
      log,
    })
  : undefined;
if (elector) elector.start();
else for (const controller of Object.values(controllers)) void controller.run();

const synced = () => allCaches.every((cache) => cache.hasSynced());
createServer((req, res) => {
  if (req.url === '/healthz') return void res.end('ok\n');
  if (req.url === '/readyz') {
    // Not ready until it can answer the apiserver, so that a rollout keeps the old replicas' webhook.
    const waiting = !synced() ? 'caches not synced' : !webhook.hasCertificate ? 'no webhook certificate yet' : '';
    res.statusCode = waiting ? 503 : 200;
    return void res.end(`${waiting || 'ok'}\n`);
  }
  res.statusCode = 404;
  res.end('not found\n');
}).listen(settings.healthPort);
createServer((req, res) => {
  if (req.url !== '/metrics') {
    res.statusCode = 404;
    return void res.end('not found\n');
  }
  res.setHeader('content-type', metricsContentType);
  res.end(metrics.registry.render());
}).listen(settings.metricsPort);

const stop = async () => {
  await Promise.all(Object.values(controllers).map((c) => c.stop()));
  await elector?.stop();
  await webhook.close();
  await tracing.shutdown();
  await Promise.all(allCaches.map((c) => c.stop()));
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
log.info('Started the naat operator', { namespace, identity, leaderElection: settings.leaderElection.enabled });
