// The operator's entry point. Configured as the Helm chart runs it:
//   NAAT_CONFIG      its configuration file (operator/settings.ts), /etc/naat/operator/config.json
//   NAAT_NAMESPACE   where it creates each gateway's namespaced objects
//   NAAT_POD_NAME    its identity in leader election
// Every replica keeps its caches warm and serves the sidecar-injection webhook; only the leader
// runs the controllers (operator/controllers.ts). Each first puts naat's CRDs of its version in
// place (operator/custom-resource-definitions.ts). /healthz, /readyz (caches synced, certificate
// loaded) and /metrics (reconcile durations and results, queue depth, leadership, webhook reviews,
// failovers: operator/metrics.ts; the process, runtime and build metrics: docs/metrics.md) are
// served on the configured health and metrics ports.
import { CoreV1Api } from '@kubernetes/client-node';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { hostname } from 'node:os';
import { jsonLogger as log, parseCommandLine, setLogLevel, startTelemetry } from '../common/index.ts';
import { pooledKubeConfig } from '../common/kube/index.ts';
import { processMetrics, sendMetrics } from '../common/metrics/index.ts';
import { operatorCaches } from './caches.ts';
import { operatorControllers } from './controllers.ts';
import { applyDefinitions } from './custom-resource-definitions.ts';
import { OperatorMetrics } from './metrics.ts';
import { caPairOf, tlsPairOf } from './reconcilers/webhook-certificate.ts';
import { LeaderElector } from './runtime/leader.ts';
import { reconcileSpan } from './runtime/tracing.ts';
import { parseSettings } from './settings.ts';
import { WebhookServer } from './webhook.ts';

parseCommandLine(
  `usage: npm run operator   (compiled: node operator/main.js); it takes no arguments, only these variables:
  NAAT_CONFIG      its configuration file (default /etc/naat/operator/config.json)
  NAAT_NAMESPACE   where it creates each gateway's namespaced objects (default naat-system)
  NAAT_POD_NAME    its identity in leader election (default: the host name)
  KUBECONFIG       the cluster, when not run in one; OTEL_* turn on OpenTelemetry
Its log level is logLevel in its configuration file; the agents and sidecars it starts get it too.`,
  { options: {} },
);
const settings = parseSettings(
  JSON.parse(await readFile(process.env.NAAT_CONFIG ?? '/etc/naat/operator/config.json', 'utf8')),
);
setLogLevel(settings.logLevel);
const namespace = process.env.NAAT_NAMESPACE ?? 'naat-system';
const identity = process.env.NAAT_POD_NAME ?? hostname();
const tracing = await startTelemetry('naat-operator', {
  'k8s.namespace.name': namespace,
  'k8s.pod.name': identity,
});
const kubeConfig = pooledKubeConfig();
const core = kubeConfig.makeApiClient(CoreV1Api);
// Before any informer, so that the caches watch the CRDs of this version.
if (settings.crds.apply) {
  await applyDefinitions(kubeConfig, log).catch((error: Error) => {
    log.error('Failed to apply the CustomResourceDefinitions; exiting', { error: error.message });
    process.exit(1);
  });
}
const { caches, webhookCaches } = operatorCaches(
  kubeConfig,
  namespace,
  settings.webhook,
  log,
  settings.dataplane.caConfigMapName,
);

// Read at each scrape; the controllers, the webhook and the elector are made below.
const metrics = new OperatorMetrics({
  queueDepths: () => Object.entries(controllers).map(([name, controller]) => [name, controller.queue.len] as const),
  isLeader: () => (elector ? elector.isLeader : true),
  webhookReviews: () => webhook.counts,
  failovers: () =>
    caches.gateways
      .list()
      .flatMap((g) => (g.spec.failover && g.status?.failover ? [[g.metadata.name, g.status.failover] as const] : [])),
});
processMetrics(metrics.registry, 'operator');
const controllers = operatorControllers({
  kubeConfig,
  caches,
  webhookCaches,
  settings,
  namespace,
  identity,
  log,
  around: (name) => metrics.timed(name, reconcileSpan(name)),
  onFailover: (gateway, failover) => metrics.failoverClaimed(gateway, failover),
});

/** The CA that issues the agents' certificates, which sidecars verify their agent with. */
const { caSecretName } = settings.webhook;
const caSecrets = caSecretName ? webhookCaches.caSecrets : webhookCaches.secrets;
const agentsCa = () =>
  caPairOf(caSecrets?.get(`${namespace}/${caSecretName ?? settings.webhook.secretName}`), Boolean(caSecretName));

const webhook = new WebhookServer({
  port: settings.webhook.port,
  context: async (podNamespace) => {
    if (!caches.gateways.hasSynced() || !caches.namespaces.hasSynced()) throw new Error('caches not synced yet');
    // A namespace made just before its first pod may not have reached the cache yet.
    const ns = caches.namespaces.get(podNamespace) ?? (await core.readNamespace({ name: podNamespace }));
    const caCertificate = agentsCa()?.cert;
    if (!caCertificate) throw new Error("the operator's CA is not there yet");
    return {
      caCertificate,
      namespaceLabels: ns.metadata?.labels,
      gateways: caches.gateways.list(),
      sidecar: settings.sidecar,
      otel: settings.otel,
      logLevel: settings.logLevel,
    };
  },
  log,
});
webhookCaches.secrets.onChange((_key, secret) => {
  const serving = tlsPairOf(secret);
  if (serving) webhook.setCertificate(serving);
});
await webhook.listen();

const allCaches = [...Object.values(caches), ...Object.values(webhookCaches).filter((c) => c !== undefined)];
for (const cache of allCaches) cache.start();

/** Set by SIGTERM or SIGINT: the controllers stop, then the Lease is released. */
let stopping = false;
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
      // One told to stop has stopped its controllers already, and goes on to release the Lease.
      onStoppedLeading: () => {
        if (stopping) return;
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
  sendMetrics(res, metrics.registry.metrics());
}).listen(settings.metricsPort);

const stop = async () => {
  stopping = true;
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
