// The operator's entry point. Configured as the Helm chart runs it:
//   NAAT_CONFIG      its configuration file (operator/settings.ts), /etc/naat/operator/config.json
//   NAAT_NAMESPACE   where it creates each gateway's namespaced objects
//   NAAT_POD_NAME    its identity in leader election
// Every replica keeps its caches warm; only the leader reconciles. /healthz, /readyz (caches
// synced) and /metrics (queue depth, reconciles) are served on the configured health and metrics
// ports.
import {
  AppsV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { hostname } from 'node:os';
import { definitionOf, group, version, type Kind } from '../crds/index.ts';
import { gatewaysOf, Reconciler, type Caches } from './reconcile.ts';
import { Controller } from './runtime/controller.ts';
import { apiListerWatcher, Informer } from './runtime/informer.ts';
import { LeaderElector } from './runtime/leader.ts';
import { jsonLogger as log } from './runtime/log.ts';
import { parseSettings } from './settings.ts';

const settings = parseSettings(
  JSON.parse(await readFile(process.env.NAAT_CONFIG ?? '/etc/naat/operator/config.json', 'utf8')),
);
const namespace = process.env.NAAT_NAMESPACE ?? 'naat-system';
const identity = process.env.NAAT_POD_NAME ?? hostname();
const kubeConfig = new KubeConfig();
kubeConfig.loadFromDefault();

const core = kubeConfig.makeApiClient(CoreV1Api);
const apps = kubeConfig.makeApiClient(AppsV1Api);
const custom = kubeConfig.makeApiClient(CustomObjectsApi);

function informer<T extends KubernetesObject>(
  kind: string,
  path: string,
  list: Parameters<typeof apiListerWatcher<T>>[1]['list'],
  labelSelector?: string,
) {
  return new Informer<T>(apiListerWatcher<T>(kubeConfig, { path, list, ...(labelSelector ? { labelSelector } : {}) }), {
    kind,
    log,
  });
}

/** The objects of one of naat's kinds; the caches hold them as the apiserver stored them. */
function naatInformer<T extends KubernetesObject>(kind: Kind) {
  const plural = definitionOf[kind].plural;
  const list = (options: Parameters<typeof custom.listClusterCustomObject>[1]) =>
    (definitionOf[kind].scope === 'Cluster'
      ? custom.listClusterCustomObject({ group, version, plural }, options)
      : custom.listCustomObjectForAllNamespaces({ group, version, resourcePlural: plural }, options)) as Promise<
      KubernetesListObject<T>
    >;
  return informer<T>(kind, `/apis/${group}/${version}/${plural}`, list);
}

const managed = 'app.kubernetes.io/managed-by=naat-operator';
const caches: Caches = {
  gateways: naatInformer('EgressGateway'),
  uplinks: naatInformer('Uplink'),
  policies: naatInformer('EgressPolicy'),
  pods: informer('Pod', '/api/v1/pods', (o) => core.listPodForAllNamespaces({}, o)),
  namespaces: informer('Namespace', '/api/v1/namespaces', (o) => core.listNamespace({}, o)),
  nodes: informer('Node', '/api/v1/nodes', (o) => core.listNode({}, o)),
  daemonSets: informer(
    'DaemonSet',
    `/apis/apps/v1/namespaces/${namespace}/daemonsets`,
    (o) => apps.listNamespacedDaemonSet({ namespace, labelSelector: managed }, o),
    managed,
  ),
};

const reconciler = new Reconciler({ kubeConfig, caches, settings, namespace, identity, log });
const affected = gatewaysOf(caches);
const gateways = new Controller({ name: 'gateways', reconcile: (key) => reconciler.reconcileGateway(key), log });
gateways.watch(caches.gateways);
gateways.watch(caches.policies, (_key, policy) => affected.ofPolicy(policy));
gateways.watch(caches.daemonSets, (_key, daemonSet) => affected.ofDaemonSet(daemonSet));
// Uplinks, pods, namespaces and nodes can change what any gateway selects: every gateway looks.
gateways.watch(caches.uplinks, affected.all);
gateways.watch(caches.pods, affected.all);
gateways.watch(caches.namespaces, affected.all);
gateways.watch(caches.nodes, affected.all);
const uplinks = new Controller({ name: 'uplinks', reconcile: (key) => reconciler.reconcileUplink(key), log });
uplinks.watch(caches.uplinks);

for (const cache of Object.values(caches)) cache.start();

const controllers = { gateways, uplinks };
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

const synced = () => Object.values(caches).every((cache) => cache.hasSynced());
createServer((req, res) => {
  if (req.url === '/healthz') return void res.end('ok\n');
  if (req.url === '/readyz') {
    res.statusCode = synced() ? 200 : 503;
    return void res.end(synced() ? 'ok\n' : 'caches not synced\n');
  }
  res.statusCode = 404;
  res.end('not found\n');
}).listen(settings.healthPort);
createServer((req, res) => {
  if (req.url !== '/metrics') {
    res.statusCode = 404;
    return void res.end('not found\n');
  }
  res.setHeader('content-type', 'text/plain; version=0.0.4');
  const lines = [
    '# HELP naat_operator_queue_depth Keys waiting to be reconciled.',
    '# TYPE naat_operator_queue_depth gauge',
  ];
  for (const [name, controller] of Object.entries(controllers)) {
    lines.push(`naat_operator_queue_depth{controller="${name}"} ${controller.queue.len}`);
  }
  lines.push('# HELP naat_operator_leader Whether this replica leads.', '# TYPE naat_operator_leader gauge');
  lines.push(`naat_operator_leader ${elector ? Number(elector.isLeader) : 1}`);
  res.end(`${lines.join('\n')}\n`);
}).listen(settings.metricsPort);

const stop = async () => {
  await Promise.all(Object.values(controllers).map((c) => c.stop()));
  await elector?.stop();
  await Promise.all(Object.values(caches).map((c) => c.stop()));
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
log.info('Started the naat operator', { namespace, identity, leaderElection: settings.leaderElection.enabled });
