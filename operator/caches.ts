// What the operator watches: one Informer per collection, listed in pages and then watched. The
// selectors matter beyond saving memory: the operator's RBAC lets it read the webhook's own
// objects only by name.
import {
  AdmissionregistrationV1Api,
  AppsV1Api,
  CertificatesV1Api,
  type ConfigurationOptions,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type V1CertificateSigningRequest,
  type V1ConfigMap,
  type V1DaemonSet,
  type V1Lease,
  type V1MutatingWebhookConfiguration,
  type V1Namespace,
  type V1Node,
  type V1ContainerStatus,
  type V1Pod,
  type V1Role,
  type V1RoleBinding,
  type V1Secret,
  type V1ServiceAccount,
  RbacAuthorizationV1Api,
} from '@kubernetes/client-node';
import {
  definitionOf,
  group,
  version,
  type EgressGateway,
  type EgressPolicy,
  type Kind,
  type Uplink,
} from '../crds/index.ts';
import { apiListerWatcher, Informer, type ListPage } from '../common/kube/index.ts';
import { agentSignerName } from '../contracts/index.ts';
import { configSliceLabel, failoverNodeLabel } from '../contracts/gateway/index.ts';
import type { Logger } from '../common/index.ts';
import { nodeAgentName } from './desired.ts';
import { podConditionPrefix } from './status.ts';
import type { OperatorSettings } from './settings.ts';

/** What the reconcilers of gateways, uplinks and pods read. */
export interface Caches {
  gateways: Informer<EgressGateway & KubernetesObject>;
  uplinks: Informer<Uplink & KubernetesObject>;
  policies: Informer<EgressPolicy & KubernetesObject>;
  pods: Informer<V1Pod>;
  namespaces: Informer<V1Namespace>;
  nodes: Informer<V1Node>;
  /** Only the DaemonSets the operator made, in its namespace. */
  daemonSets: Informer<V1DaemonSet>;
  /** Only the node agents' ConfigMaps (one per node), in its namespace: those to remove are found here. */
  nodeConfigMaps: Informer<V1ConfigMap>;
  /** Only the gateways' config slices, in its namespace: unchanged ones are not written again, stale ones removed. */
  gatewayConfigSlices: Informer<V1ConfigMap>;
  /** Only the gateway nodes' failover Leases (by their label), in its namespace. */
  failoverLeases: Informer<V1Lease>;
  /**
   * Only the ServiceAccounts, Roles and RoleBindings the operator made (the gateways' and the node
   * agents'), in its namespace: those stored as written are not written again, and a change by
   * another hand is undone at once.
   */
  serviceAccounts: Informer<V1ServiceAccount>;
  roles: Informer<V1Role>;
  roleBindings: Informer<V1RoleBinding>;
}

/**
 * The certificates' objects: the webhook's own, watched by name (the only ones its RBAC lets it
 * read), and the agents' requests to naat's signer with the CA bundle they trust.
 */
export interface WebhookCaches {
  secrets: Informer<V1Secret>;
  webhooks: Informer<V1MutatingWebhookConfiguration>;
  /** The CA cert-manager keeps, when it issues the webhook's certificate (webhook.caSecretName). */
  caSecrets?: Informer<V1Secret>;
  /** The CA bundle's ConfigMap, when the settings name one (dataplane.caConfigMapName). */
  caBundles?: Informer<V1ConfigMap>;
  /** The CertificateSigningRequests to naat.dev/agent (by a spec.signerName field selector), with caBundles. */
  agentRequests?: Informer<V1CertificateSigningRequest>;
}

type Selectors = { labelSelector?: string; fieldSelector?: string };

/**
 * Lists one page of one of naat's kinds, as the typed lists of built-in kinds are: the custom
 * objects API hands on the list as the apiserver sent it, whose metadata names the next page
 * `continue` where the typed lists (and so the informer) name it `_continue`. Read as it came,
 * every list ended after its first page: a cluster's first 500 EgressPolicies only.
 */
export function naatListPage<T extends KubernetesObject>(custom: CustomObjectsApi, kind: Kind) {
  const plural = definitionOf[kind].plural;
  return async (page: ListPage, options: ConfigurationOptions): Promise<KubernetesListObject<T>> => {
    const list = (await (definitionOf[kind].scope === 'Cluster'
      ? custom.listClusterCustomObject({ group, version, plural, ...page }, options)
      : custom.listCustomObjectForAllNamespaces({ group, version, resourcePlural: plural, ...page }, options))) as {
      items: T[];
      metadata?: { resourceVersion?: string; continue?: string };
    };
    const { resourceVersion, continue: next } = list.metadata ?? {};
    return {
      items: list.items,
      metadata: { ...(resourceVersion ? { resourceVersion } : {}), ...(next ? { _continue: next } : {}) },
    };
  };
}

export function operatorCaches(
  kubeConfig: KubeConfig,
  namespace: string,
  webhook: OperatorSettings['webhook'],
  log: Logger,
  caConfigMapName?: string,
): { caches: Caches; webhookCaches: WebhookCaches } {
  const core = kubeConfig.makeApiClient(CoreV1Api);
  const apps = kubeConfig.makeApiClient(AppsV1Api);
  const admission = kubeConfig.makeApiClient(AdmissionregistrationV1Api);
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const certificates = kubeConfig.makeApiClient(CertificatesV1Api);
  const coordination = kubeConfig.makeApiClient(CoordinationV1Api);
  const rbac = kubeConfig.makeApiClient(RbacAuthorizationV1Api);

  /** A cache of one collection; `list` gets the selectors and the page among its parameters. */
  function informer<T extends KubernetesObject>(
    kind: string,
    path: string,
    list: (params: Selectors & ListPage, options: ConfigurationOptions) => Promise<KubernetesListObject<T>>,
    selectors: Selectors = {},
    trim: (object: T) => T = withoutManagedFields,
  ) {
    return new Informer<T>(
      apiListerWatcher<T>(kubeConfig, {
        path,
        list: (page, options) => list({ ...selectors, ...page }, options),
        trim,
        ...selectors,
      }),
      { kind, log, trim },
    );
  }

  /** The objects of one of naat's kinds; the caches hold them as the apiserver stored them. */
  function naatInformer<T extends KubernetesObject>(kind: Kind) {
    return informer<T>(kind, `/apis/${group}/${version}/${definitionOf[kind].plural}`, naatListPage<T>(custom, kind));
  }

  const managed = 'app.kubernetes.io/managed-by=naat-operator';
  const byName = (name: string) => ({ fieldSelector: `metadata.name=${name}` });
  const secret = (name: string) =>
    informer<V1Secret>(
      'Secret',
      `/api/v1/namespaces/${namespace}/secrets`,
      (p, o) => core.listNamespacedSecret({ namespace, ...p }, o),
      byName(name),
    );
  return {
    caches: {
      gateways: naatInformer('EgressGateway'),
      uplinks: naatInformer('Uplink'),
      policies: naatInformer('EgressPolicy'),
      pods: informer('Pod', '/api/v1/pods', (p, o) => core.listPodForAllNamespaces(p, o), {}, podProjection),
      namespaces: informer('Namespace', '/api/v1/namespaces', (p, o) => core.listNamespace(p, o)),
      nodes: informer('Node', '/api/v1/nodes', (p, o) => core.listNode(p, o), {}, nodeProjection),
      daemonSets: informer(
        'DaemonSet',
        `/apis/apps/v1/namespaces/${namespace}/daemonsets`,
        (p, o) => apps.listNamespacedDaemonSet({ namespace, ...p }, o),
        { labelSelector: managed },
      ),
      nodeConfigMaps: informer(
        'ConfigMap',
        `/api/v1/namespaces/${namespace}/configmaps`,
        (p, o) => core.listNamespacedConfigMap({ namespace, ...p }, o),
        { labelSelector: `${managed},app.kubernetes.io/name=${nodeAgentName}` },
      ),
      gatewayConfigSlices: informer(
        'ConfigMap',
        `/api/v1/namespaces/${namespace}/configmaps`,
        (p, o) => core.listNamespacedConfigMap({ namespace, ...p }, o),
        { labelSelector: `${managed},${configSliceLabel}` },
      ),
      failoverLeases: informer(
        'Lease',
        `/apis/coordination.k8s.io/v1/namespaces/${namespace}/leases`,
        (p, o) => coordination.listNamespacedLease({ namespace, ...p }, o),
        { labelSelector: failoverNodeLabel },
      ),
      serviceAccounts: informer(
        'ServiceAccount',
        `/api/v1/namespaces/${namespace}/serviceaccounts`,
        (p, o) => core.listNamespacedServiceAccount({ namespace, ...p }, o),
        { labelSelector: managed },
      ),
      roles: informer(
        'Role',
        `/apis/rbac.authorization.k8s.io/v1/namespaces/${namespace}/roles`,
        (p, o) => rbac.listNamespacedRole({ namespace, ...p }, o),
        { labelSelector: managed },
      ),
      roleBindings: informer(
        'RoleBinding',
        `/apis/rbac.authorization.k8s.io/v1/namespaces/${namespace}/rolebindings`,
        (p, o) => rbac.listNamespacedRoleBinding({ namespace, ...p }, o),
        { labelSelector: managed },
      ),
    },
    webhookCaches: {
      secrets: secret(webhook.secretName),
      webhooks: informer<V1MutatingWebhookConfiguration>(
        'MutatingWebhookConfiguration',
        '/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations',
        (p, o) => admission.listMutatingWebhookConfiguration(p, o),
        byName(webhook.configurationName),
      ),
      ...(webhook.caSecretName ? { caSecrets: secret(webhook.caSecretName) } : {}),
      ...(caConfigMapName
        ? {
            caBundles: informer<V1ConfigMap>(
              'ConfigMap',
              `/api/v1/namespaces/${namespace}/configmaps`,
              (p, o) => core.listNamespacedConfigMap({ namespace, ...p }, o),
              byName(caConfigMapName),
            ),
            agentRequests: informer<V1CertificateSigningRequest>(
              'CertificateSigningRequest',
              '/apis/certificates.k8s.io/v1/certificatesigningrequests',
              (p, o) => certificates.listCertificateSigningRequest(p, o),
              { fieldSelector: `spec.signerName=${agentSignerName}` },
            ),
          }
        : {}),
    },
  };
}

/**
 * The object without metadata.managedFields, which no reconciler reads: they are a large share of
 * a pod's or a node's object as stored, and the operator caches every pod and node of the cluster.
 */
function withoutManagedFields<T extends KubernetesObject>(object: T): T {
  if (!object.metadata?.managedFields) return object;
  const metadata = { ...object.metadata };
  delete metadata.managedFields;
  return { ...object, metadata };
}

/**
 * What the reconcilers read of a pod (its facts for the compiler, naat's annotations and
 * conditions on it, its creation time, its containers' runtime ids): the operator caches every
 * pod of the cluster, and the rest of a pod (its containers' specs, volumes, most of its status,
 * other tools' annotations) is most of its size. What many pods repeat (their namespace and node, their labels'
 * values, a condition's reason and message) is kept once for all of them.
 */
export function podProjection(pod: V1Pod): V1Pod {
  const { metadata, spec, status } = pod;
  const containerIds = (list: V1ContainerStatus[] | undefined) =>
    list?.map(({ name, containerID }) => ({ name: shared(name), containerID }) as V1ContainerStatus);
  return {
    metadata: metadata && {
      name: metadata.name,
      namespace: shared(metadata.namespace),
      uid: metadata.uid,
      resourceVersion: metadata.resourceVersion,
      creationTimestamp: metadata.creationTimestamp,
      labels: metadata.labels && sharedValues(metadata.labels),
      annotations: metadata.annotations && sharedValues(naatAnnotations(metadata.annotations)),
    },
    spec: spec && {
      nodeName: shared(spec.nodeName),
      containers: spec.containers.map(({ name }) => ({ name: shared(name) })),
      initContainers: spec.initContainers?.map(({ name, restartPolicy }) => ({
        name: shared(name),
        restartPolicy: shared(restartPolicy),
      })),
    },
    status: status && {
      phase: shared(status.phase),
      podIPs: status.podIPs,
      conditions: status.conditions
        ?.filter((c) => c.type.startsWith(podConditionPrefix))
        .map((c) => ({
          ...c,
          type: shared(c.type)!,
          status: shared(c.status)!,
          reason: shared(c.reason),
          message: shared(c.message),
        })),
      containerStatuses: containerIds(status.containerStatuses),
      initContainerStatuses: containerIds(status.initContainerStatuses),
    },
  };
}

/**
 * Each pod's JSON parses into strings of its own. Past `sharedLimit` distinct strings the table
 * starts afresh: values no two pods share (a label unique to each pod) cost at most that many
 * entries more, and a value no pod holds any longer is let go at the latest then.
 */
const sharedStrings = new Map<string, string>();
const sharedLimit = 50_000;
function shared<T extends string | undefined>(text: T): T {
  if (text === undefined) return text;
  const known = sharedStrings.get(text);
  if (known !== undefined) return known as T;
  if (sharedStrings.size >= sharedLimit) sharedStrings.clear();
  sharedStrings.set(text, text);
  return text;
}

function sharedValues(record: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(record).map(([key, value]) => [key, shared(value)]));
}

/** The annotations of naat's group (the webhook's, the association driver's): the only ones read. */
function naatAnnotations(annotations: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(annotations).filter(([key]) => key.startsWith(`${group}/`)));
}

/**
 * What the reconcilers read of a node (its labels, addresses, pod networks and cordon): a node's
 * status also lists its images and much else, at every node of the cluster.
 */
export function nodeProjection(node: V1Node): V1Node {
  const { metadata, spec, status } = node;
  return {
    metadata: metadata && {
      name: metadata.name,
      uid: metadata.uid,
      resourceVersion: metadata.resourceVersion,
      labels: metadata.labels,
    },
    spec: spec && { unschedulable: spec.unschedulable, podCIDRs: spec.podCIDRs },
    status: status && { addresses: status.addresses },
  };
}
