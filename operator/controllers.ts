// The operator's controllers, wired in one place: the reconciler each runs and the changes that
// enqueue its keys. Change handlers only map a change to keys; no reconciler learns what the
// change was.
import { CoordinationV1Api, type KubeConfig, type KubernetesObject, type V1Pod } from '@kubernetes/client-node';
import type { Caches, WebhookCaches } from './caches.ts';
import { EventRecorder } from './events.ts';
import { AssociationModeReconciler } from './reconcilers/association-mode.ts';
import { nodeAgentName } from './desired.ts';
import { clusterCompiler, compiledFacts } from './reconcilers/cluster.ts';
import { factsChanged, factsDigest } from './facts.ts';
import { GatewayReconciler, gatewayKeys, gatewaysOf } from './reconcilers/egress-gateway.ts';
import { FailoverReconciler } from './reconcilers/failover.ts';
import { SteeringReconciler, steeringKeys } from './reconcilers/steering.ts';
import { UplinkReconciler } from './reconcilers/uplink.ts';
import { AgentSignerReconciler } from './reconcilers/agent-signer.ts';
import { CaBundleReconciler } from './reconcilers/ca-bundle.ts';
import { caPairOf, CertificateReconciler } from './reconcilers/webhook-certificate.ts';
import { Controller, type ControllerOptions, type ReconcileResult } from './runtime/controller.ts';
import type { Logger } from '../common/index.ts';
import { gatewayLabel } from '../contracts/gateway/index.ts';
import type { EgressPolicy } from '../crds/index.ts';
import type { LastFailover } from './failover.ts';
import type { OperatorSettings } from './settings.ts';
import { steeredCondition } from './status.ts';
import { StatusWriter } from './status-writer.ts';

export interface OperatorControllersOptions {
  kubeConfig: KubeConfig;
  caches: Caches;
  webhookCaches: WebhookCaches;
  settings: OperatorSettings;
  /** The operator's namespace, where each gateway's namespaced objects live. */
  namespace: string;
  /** This replica, as the reporting instance of its Events. */
  identity: string;
  log: Logger;
  /** Wraps each reconcile of the named controller, e.g. in a span and a timer. */
  around: (controller: string) => ControllerOptions['around'];
  /** Called for each failover claim told with an Event, e.g. to count it. */
  onFailover?: (gateway: string, failover: LastFailover) => void;
}

/** The controllers by name; none runs until run() is called (by the leader). */
export function operatorControllers(o: OperatorControllersOptions): Record<string, Controller> {
  const { kubeConfig, caches, webhookCaches, settings, namespace, log } = o;
  const status = new StatusWriter(kubeConfig);
  const events = new EventRecorder({ kubeConfig, identity: o.identity, log });
  const controller = (name: string, reconcile: (key: string) => Promise<ReconcileResult>, workers = 1) =>
    new Controller({ name, reconcile, around: o.around(name), log, workers });

  const cluster = clusterCompiler(caches, settings);
  // What the gateway and steering reconcilers both read and write through.
  const shared = { kubeConfig, caches, settings, namespace, status, events, cluster };
  const gateway = new GatewayReconciler({
    ...shared,
    onApplied: (name) => gateways.queue.add(gatewayKeys.status(name)),
  });
  const affected = gatewaysOf(caches);
  // Two workers: a gateway's objects and its status are two keys (egress-gateway.ts).
  const gateways = controller('gateways', (key) => gateway.reconcile(key), 2);
  // Not the status this controller writes itself (a gateway's hash and conditions, each policy's
  // matched pods): each write would compile the whole cluster once more, for nothing.
  gateways.watch(
    caches.gateways,
    onFactsChange(caches.gateways, compiledFacts.gateways, (key) => [key]),
  );
  gateways.watch(caches.policies, policyGateways(caches.policies));
  // Its rollout is the status's; its spec, restored by the objects.
  gateways.watch(caches.daemonSets, (_key, daemonSet) =>
    affected.ofObject(daemonSet).flatMap((name) => [gatewayKeys.objects(name), gatewayKeys.status(name)]),
  );
  // A config slice deleted by another hand is written again; the operator's own writes need nothing.
  gateways.watch(caches.gatewayConfigSlices, (key, slice) => {
    const gateway = slice.metadata?.labels?.[gatewayLabel];
    return gateway && !caches.gatewayConfigSlices.get(key) ? [gateway] : [];
  });
  // Its ServiceAccount, Role and RoleBinding, written only when not stored as written: restored at once.
  for (const cache of [caches.serviceAccounts, caches.roles, caches.roleBindings]) {
    gateways.watch(cache, (_key, object) => affected.ofObject(object));
  }
  // Uplinks, pods, namespaces and nodes can change what any gateway selects: every gateway looks.
  gateways.watch(caches.uplinks, onFactsChange(caches.uplinks, compiledFacts.uplinks, affected.all));
  gateways.watch(caches.pods, onFactsChange(caches.pods, compiledFacts.pods, affected.all));
  gateways.watch(caches.namespaces, onFactsChange(caches.namespaces, compiledFacts.namespaces, affected.all));
  gateways.watch(caches.nodes, onFactsChange(caches.nodes, compiledFacts.nodes, affected.all));

  // Cluster-wide egress: the node agents and their configs, and served pods' Steered condition.
  // What selects pods, places them and places the gateways can move a pod onto or off a node's
  // config; the gateways' status holds the node agents' reports; the ConfigMaps and DaemonSet are
  // its own, to restore. Not policies, nor the status the gateway controller writes: they decide
  // flows, not which pods are steered, and each policy status written would compile the cluster
  // and look at every pod again (1,000 policies, 1,000 times at an operator's start).
  const steeringReconciler = new SteeringReconciler(shared);
  // Two workers: one for each key, so that the pods' conditions do not hold up the configs.
  const steering = controller('steering', (key) => steeringReconciler.reconcile(key), 2);
  const toSteering = () => [steeringKeys.nodes, steeringKeys.pods];
  const toNodes = () => [steeringKeys.nodes];
  steering.watch(caches.gateways, onFactsChange(caches.gateways, compiledFacts.gateways, toSteering));
  steering.watch(caches.uplinks, onFactsChange(caches.uplinks, compiledFacts.uplinks, toSteering));
  steering.watch(caches.pods, steeringOfPods(caches.pods));
  steering.watch(caches.namespaces, onFactsChange(caches.namespaces, compiledFacts.namespaces, toSteering));
  steering.watch(caches.nodes, onFactsChange(caches.nodes, compiledFacts.nodes, toSteering));
  steering.watch(caches.nodeConfigMaps, toNodes);
  for (const cache of [caches.serviceAccounts, caches.roles, caches.roleBindings]) {
    steering.watch(cache, (key) => (key === `${namespace}/${nodeAgentName}` ? toNodes() : []));
  }
  // The node agents' DaemonSet, to restore it: not its status, which moves with each agent pod.
  steering.watch(
    caches.daemonSets,
    onFactsChange(
      caches.daemonSets,
      (daemonSet) => ({ generation: daemonSet.metadata?.generation, labels: daemonSet.metadata?.labels }),
      (key) => (key === `${namespace}/${nodeAgentName}` ? toNodes() : []),
    ),
  );

  // Gateway-node HA: the gateway nodes' failover Leases in the gateway's status.failover and Events.
  const failover = new FailoverReconciler({
    caches,
    leases: kubeConfig.makeApiClient(CoordinationV1Api),
    namespace,
    status,
    events,
    log,
    ...(o.onFailover ? { onClaim: o.onFailover } : {}),
  });
  const failovers = controller('failover', (key) => failover.reconcile(key));
  failovers.watch(caches.gateways);
  failovers.watch(caches.failoverLeases, (_key, lease) => {
    const gateway = lease.metadata?.labels?.[gatewayLabel];
    return gateway ? [gateway] : [];
  });
  failovers.watch(
    caches.nodes,
    // Cordoned nodes are drained; a node relabelled out of a gateway leaves a Lease behind.
    onFactsChange(
      caches.nodes,
      (n) => ({ cordoned: n.spec?.unschedulable === true, labels: n.metadata?.labels }),
      affected.all,
    ),
  );

  const uplink = new UplinkReconciler({ uplinks: caches.uplinks, status, events });
  const uplinks = controller('uplinks', (key) => uplink.reconcile(key));
  uplinks.watch(caches.uplinks);

  // Pods with the sidecar get a condition naming their association mode; the rest are passed over.
  const associationMode = new AssociationModeReconciler({ pods: caches.pods, status });
  const pods = controller('pods', (key) => associationMode.reconcile(key));
  pods.watch(caches.pods);

  const controllers: Record<string, Controller> = { gateways, uplinks, pods, steering, failover: failovers };
  // The webhook's certificate is the operator's own, unless cert-manager keeps it.
  const { caSecretName } = settings.webhook;
  const caSecrets = caSecretName ? webhookCaches.caSecrets : webhookCaches.secrets;
  if (!caSecretName) {
    const certificate = new CertificateReconciler({
      kubeConfig,
      ...webhookCaches,
      settings: settings.webhook,
      namespace,
      log,
    });
    const certificates = controller('webhook-certificate', () => certificate.reconcile());
    certificates.watch(webhookCaches.secrets, () => ['certificate']);
    certificates.watch(webhookCaches.webhooks, () => ['certificate']);
    controllers.certificates = certificates;
  }

  const { caBundles, agentRequests } = webhookCaches;
  const configMapName = settings.dataplane.caConfigMapName;
  if (!caBundles || !agentRequests || !configMapName || !caSecrets) return controllers;
  // The agents' CA: the one the operator keeps in the webhook's Secret, or cert-manager's CA
  // Certificate (its own pair, tls.crt and tls.key). It signs each agent's certificate for its
  // node, and its certificate is published for the agents to trust.
  const caKey = `${namespace}/${caSecretName ?? settings.webhook.secretName}`;
  const ca = () => caPairOf(caSecrets.get(caKey), Boolean(caSecretName));
  const bundle = new CaBundleReconciler({ kubeConfig, configMaps: caBundles, ca, configMapName, namespace, log });
  const caBundle = controller('ca-bundle', () => bundle.reconcile());
  caBundle.watch(caSecrets, () => ['ca-bundle']);
  caBundle.watch(caBundles, () => ['ca-bundle']);
  const signer = new AgentSignerReconciler({
    kubeConfig,
    requests: agentRequests,
    gateways: caches.gateways,
    nodes: caches.nodes,
    ca,
    namespace,
    maxLifetimeSeconds: settings.dataplane.certificateLifetimeSeconds,
    log,
  });
  const agentSigner = new Controller({
    name: 'agent-signer',
    reconcile: (key) => signer.reconcile(key),
    around: o.around('agent-signer'),
    // What it decides on besides the request: the agents' ServiceAccounts (from the gateways) and
    // the requester's node. A request waiting for either is retried with backoff.
    caches: [caches.gateways, caches.nodes],
    log,
  });
  agentSigner.watch(agentRequests);
  return { ...controllers, caBundle, agentSigner };
}

/**
 * The steering keys a pod's change concerns: both when its facts changed, only `pods` when only its
 * Steered condition did (the controller restores it if another hand changed it). The operator's
 * own condition writes, one per served pod at its start, would otherwise each build every node's
 * config objects again: 1,000 of them at 1,000 nodes.
 */
function steeringOfPods(cache: { get(key: string): V1Pod | undefined }): (key: string, pod: V1Pod) => string[] {
  const podChanged = factsChanged(cache, compiledFacts.pods);
  const steeredChanged = factsChanged(cache, (pod: V1Pod) =>
    pod.status?.conditions?.find((c) => c.type === steeredCondition),
  );
  return (key, pod) => {
    // Both, so that each records what it saw.
    const [facts, steered] = [podChanged(key, pod), steeredChanged(key, pod)];
    if (facts) return [steeringKeys.nodes, steeringKeys.pods];
    return steered ? [steeringKeys.pods] : [];
  };
}

/** Passes a change of `cache` on to `then` only when the facts `facts` takes of the object changed. */
function onFactsChange<T extends KubernetesObject>(
  cache: { get(key: string): T | undefined },
  facts: (object: T) => unknown,
  then: (key: string) => string[],
): (key: string, object: T) => string[] {
  const changed = factsChanged(cache, facts);
  return (key, object) => (changed(key, object) ? then(key) : []);
}

/**
 * The gateways a policy's change concerns: the one it names and, when it moved, the one it left,
 * which still holds its rules. Only what the compiler reads of it counts, as in onFactsChange.
 */
function policyGateways(cache: {
  get(key: string): EgressPolicy | undefined;
}): (key: string, policy: EgressPolicy) => string[] {
  const seen = new Map<string, { spec: string; gateway: string }>();
  return (key, policy) => {
    const before = seen.get(key);
    const concerned = [...new Set([before?.gateway ?? policy.spec.gateway, policy.spec.gateway])];
    if (!cache.get(key)) {
      seen.delete(key);
      return concerned;
    }
    const spec = factsDigest(compiledFacts.policies(policy));
    if (before?.spec === spec) return [];
    seen.set(key, { spec, gateway: policy.spec.gateway });
    return concerned;
  };
}
