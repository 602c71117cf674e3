// What the operator runs for one EgressGateway, as plain objects to server-side apply: the
// dataplane's ServiceAccount, its binding to the chart's dataplane ClusterRole, the ConfigMaps
// holding the compiled config (an index and its slices, contracts/gateway/slices.ts) with a Role
// that lets the dataplane read those ConfigMaps only, and the DaemonSet on the gateway's nodes.
// All are owned by the gateway, so deleting it lets the garbage collector remove them; the
// DaemonSet is owned by the index ConfigMap too (ownedByConfig), so that its agents are stopped
// only once their config is gone.
import {
  agentConfigKey as configFile,
  configIndexKey,
  configSliceKey,
  configSliceLabel,
  failoverLeaseName,
  type GatewayConfig,
  gatewayLabels as labelsOf,
  gatewayObjectName as objectName,
  type NodeConfig,
  sliceConfig,
  type SlicedConfig,
} from '../contracts/gateway/index.ts';
import type { EgressGateway } from '../crds/index.ts';
import { apiVersion } from '../crds/index.ts';
import type { Compiled } from './compile.ts';
import { processEnvironment, type OperatorSettings } from './settings.ts';

const stateDir = '/run/naat';
/** The agent's key and certificate, and a copy of the CA bundle: in memory, the agent's alone. */
const tlsDir = '/etc/naat/tls';
/** The CA ConfigMap, as the kubelet mounts it. */
const caDir = '/etc/naat/ca';

/**
 * The records of each gateway agent's attribution log (its --attribution-records; the agent's own
 * default, given explicitly because the heap bound below is matched to it).
 */
export const agentAttributionRecords = 100_000;

/**
 * The gateway agent's V8 heap bound (MiB), matched to its attribution log of `records` records.
 * Without one V8 sizes its heap from the node's memory and lets garbage pile up far past what the
 * agent holds: at its goal (10,000 pods, 1,000 rules, 100,000 flows, the log full: `npm run
 * bench:dataplane`, figure memory.agent-goal) its heap grew to 470 MiB and its RSS to 675 MiB,
 * past the chart's limit of 512 MiB, with 115 MiB live. The live heap (heap snapshots of the
 * compiled agent) is 31 MiB at that scale without flows, and about 900 bytes more per record,
 * each with its flow in the flow table (every open flow has a record, so a full log of open flows
 * is the most the two hold together). The bound is twice that: the flow table is listed afresh
 * every 10 s (a second table of every flow while the new one is built), and a config change holds
 * the old compiled config and the new one at once.
 */
export const agentHeapMiB = (records: number): number => Math.ceil(2 * (32 + (records * 900) / 2 ** 20));

/** The gateway agent's NODE_OPTIONS: its heap bound, for the log of agentAttributionRecords records. */
export const agentNodeOptions = `--max-old-space-size=${agentHeapMiB(agentAttributionRecords)}`;

export interface ApiObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name: string;
    namespace?: string;
    labels?: Record<string, string>;
    ownerReferences?: unknown[];
  };
  [field: string]: unknown;
}

/** Names of a gateway's objects: one per gateway, in the operator's namespace where namespaced. */
export {
  agentConfigKey as configFile,
  gatewayLabels as labelsOf,
  gatewayObjectName as objectName,
} from '../contracts/gateway/index.ts';

/**
 * The gateway's objects, in the order to apply them: the Role before the config, so that the
 * agents may read each slice before the index names it (`readable` names slices the Role is to
 * grant besides the index's: those the index that is being replaced still names); the slices
 * before the index that names them; the DaemonSet last.
 */
export function desiredGatewayObjects(
  gateway: EgressGateway,
  compiled: Compiled,
  settings: OperatorSettings,
  namespace: string,
  sliced: SlicedConfig = sliceConfig(compiled.config),
  readable: readonly string[] = [],
): ApiObject[] {
  const name = objectName(gateway.metadata.name);
  const labels = labelsOf(gateway.metadata.name);
  const metadata = (namespaced: boolean, object = name, extraLabels: Record<string, string> = {}) => ({
    name: object,
    ...(namespaced ? { namespace } : {}),
    labels: { ...labels, ...extraLabels },
    ownerReferences: [
      {
        apiVersion,
        kind: 'EgressGateway',
        name: gateway.metadata.name,
        uid: (gateway.metadata as { uid?: string }).uid,
        controller: true,
        blockOwnerDeletion: true,
      },
    ],
  });
  const dp = settings.dataplane;
  // Flow data only on the secure listener, with the agent's own certificate (docs/security.md).
  const secure = dp.caConfigMapName;
  // Node-driven pods on the gateway's nodes: their node's gateway agent drives them.
  const associating = compiled.config.pods.some((p) => p.association);
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: metadata(true) },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: metadata(false),
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: dp.clusterRoleName },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
    // The dataplane watches its config through the apiserver (a change reaches it in
    // milliseconds, not at the kubelet's next volume sync), and may read nothing else: a get, then
    // a watch by a metadata.name field selector, which the apiserver authorizes by resourceNames.
    // Not list: that would show it every ConfigMap of the namespace, other gateways' configs too.
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: metadata(true),
      rules: [
        {
          apiGroups: [''],
          resources: ['configmaps'],
          resourceNames: [name, ...new Set([...sliced.slices.keys(), ...readable])],
          verbs: ['get', 'watch'],
        },
        ...failoverLeaseRules(gateway.metadata.name, compiled.config.failover),
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: metadata(true),
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
    ...[...sliced.slices].map(([slice, text], n) => ({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: metadata(true, slice, { [configSliceLabel]: String(n) }),
      data: { [configSliceKey]: text },
    })),
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: metadata(true),
      data: { [configIndexKey]: JSON.stringify(sliced.index) },
    },
    agentDaemonSet(settings, {
      metadata: metadata(true),
      labels,
      serviceAccountName: name,
      placement: {
        nodeSelector: { 'kubernetes.io/os': 'linux', ...gateway.spec.nodeSelector },
        // Nodes where another gateway's agent holds its ports (operator/host-ports.ts). The
        // apiserver takes one value per metadata.name requirement: one requirement per node,
        // which a term ANDs.
        ...(compiled.excludedNodes?.length
          ? {
              affinity: {
                nodeAffinity: {
                  requiredDuringSchedulingIgnoredDuringExecution: {
                    nodeSelectorTerms: [
                      {
                        matchFields: compiled.excludedNodes.map((node) => ({
                          key: 'metadata.name',
                          operator: 'NotIn',
                          values: [node],
                        })),
                      },
                    ],
                  },
                },
              },
            }
          : {}),
      },
      // The compiled ICMP timeout: a change rolls the agents, whose init container writes it.
      sysctls: ['sysctls', '--icmp-seconds', String(compiled.config.timeouts.icmpSeconds)],
      container: {
        name: 'dataplane',
        service: 'naat-dataplane',
        args: [
          'run',
          '--config-map',
          `${namespace}/${name}`,
          '--state-dir',
          stateDir,
          // Every address of both families: node agents ask /steering at a gateway node's
          // InternalIP, which in an IPv6-only cluster is an IPv6 address.
          '--listen',
          `:${dp.healthPort}`,
          '--metrics-listen',
          `:${dp.metricsPort}`,
          ...(secure ? ['--secure-listen', `:${dp.flowPort}`] : []),
          // Only the node itself reaches it, and the kubelet's port-forward for those who may
          // create pods/portforward in this namespace (the naat CLI, docs/cli.md).
          '--local-listen',
          `127.0.0.1:${dp.localPort}`,
          '--report',
          '--attribution-records',
          String(agentAttributionRecords),
          ...(associating ? ['--associate-pods'] : []),
        ],
        env: [{ name: 'NODE_OPTIONS', value: agentNodeOptions }],
        ports: [
          { name: 'health', containerPort: dp.healthPort },
          { name: 'metrics', containerPort: dp.metricsPort },
          ...(secure ? [{ name: 'flows', containerPort: dp.flowPort }] : []),
          { name: 'naa', containerPort: gateway.spec.association.port },
        ],
        volumeMounts: [{ name: 'state', mountPath: stateDir }],
      },
      volumes: [
        // Uplink ids live as long as the node's conntrack table: until the node reboots.
        { name: 'state', hostPath: { path: `${stateDir}/${gateway.metadata.name}`, type: 'DirectoryOrCreate' } },
      ],
      ...(associating ? nodeDriverPod : {}),
    }),
  ];
}

/**
 * The gateway's DaemonSet, owned by its ConfigMap (of that uid) as well as by the gateway. The
 * garbage collector deletes an object once none of its owners exist, so when the gateway goes, the
 * ConfigMap goes first and the DaemonSet (and so its pods) after it: each agent finds its config
 * gone when it is stopped, and takes its rules out of the kernel, while a rollout or an upgrade,
 * which keeps the ConfigMap, keeps them. A ConfigMap deleted by hand does not take the DaemonSet
 * with it (the gateway still owns it) and is made again, with the new uid, at the next reconcile.
 * Without blockOwnerDeletion, which would need update on configmaps/finalizers and only matters to
 * a foreground deletion of the ConfigMap.
 */
export function ownedByConfig(daemonSet: ApiObject, configUid: string): ApiObject {
  const owner = { apiVersion: 'v1', kind: 'ConfigMap', name: daemonSet.metadata.name, uid: configUid };
  return {
    ...daemonSet,
    metadata: { ...daemonSet.metadata, ownerReferences: [...(daemonSet.metadata.ownerReferences ?? []), owner] },
  };
}

/**
 * With failover addresses, each gateway agent holds its node's failover Lease: it creates it
 * (create cannot be limited by name: RBAC knows the name only once the object exists), renews
 * (patches) only the Leases of the gateway's nodes, and lists and watches the Leases of the
 * namespace (by label, which RBAC cannot limit) to see the others'. Without a node with an
 * address, no patch rule: RBAC reads an empty resourceNames as every name.
 */
function failoverLeaseRules(gateway: string, failover: GatewayConfig['failover']) {
  if (!failover) return [];
  const names = failover.nodes.map((n) => failoverLeaseName(gateway, n.node));
  const group = { apiGroups: ['coordination.k8s.io'], resources: ['leases'] };
  return [
    { ...group, verbs: ['create'] },
    ...(names.length ? [{ ...group, resourceNames: names, verbs: ['patch'] }] : []),
    { ...group, verbs: ['list', 'watch'] },
  ];
}

/** The node agents' cluster-wide objects: DaemonSet, ServiceAccount, Role, bindings. */
export const nodeAgentName = 'naat-node';
/** The ConfigMap holding one node's NodeConfig. */
export const nodeConfigName = (node: string) => `${nodeAgentName}-${node}`;

export const nodeAgentLabels: Record<string, string> = {
  'app.kubernetes.io/name': nodeAgentName,
  'app.kubernetes.io/component': 'node-agent',
  'app.kubernetes.io/managed-by': 'naat-operator',
};

/**
 * The node agents of cluster-wide egress, for the nodes that have a NodeConfig: one DaemonSet
 * scheduled on exactly those nodes, one ConfigMap per node, and the ServiceAccount, Role and
 * bindings that let each agent read only these ConfigMaps and report into EgressGateway status.
 * Empty when no node needs one: nodes without served pods away from their gateways run nothing.
 * None is owned by a gateway (a node's config serves every gateway): the reconciler removes them.
 */
export function desiredNodeObjects(
  configs: readonly NodeConfig[],
  settings: OperatorSettings,
  namespace: string,
): ApiObject[] {
  if (!configs.length) return [];
  const nodes = configs.map((c) => c.node);
  const metadata = (name: string, namespaced = true) => ({
    name,
    ...(namespaced ? { namespace } : {}),
    labels: nodeAgentLabels,
  });
  const subjects = [{ kind: 'ServiceAccount', name: nodeAgentName, namespace }];
  const { steering } = settings;
  const associating = configs.some((c) => c.gateways.some((g) => g.pods.some((p) => p.association)));
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: metadata(nodeAgentName) },
    // Each agent reads its own node's config: get, then a watch by a metadata.name field selector,
    // both authorized by resourceNames. The names change with the nodes, so the Role is the operator's.
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: metadata(nodeAgentName),
      rules: [
        {
          apiGroups: [''],
          resources: ['configmaps'],
          resourceNames: nodes.map(nodeConfigName),
          verbs: ['get', 'watch'],
        },
      ],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: metadata(nodeAgentName),
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: nodeAgentName },
      subjects,
    },
    // The chart's ClusterRole: patch egressgateways/status, where each agent applies its own entry.
    // Named after it: cluster-scoped, one per installation, and a name the chart's RBAC can list.
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: metadata(steering.clusterRoleName, false),
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: steering.clusterRoleName },
      subjects,
    },
    ...configs.map((config) => ({
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: metadata(nodeConfigName(config.node)),
      data: { [configFile]: JSON.stringify(config) },
    })),
    agentDaemonSet(settings, {
      metadata: metadata(nodeAgentName),
      labels: nodeAgentLabels,
      serviceAccountName: nodeAgentName,
      placement: {
        nodeSelector: { 'kubernetes.io/os': 'linux' },
        // Exactly the nodes with a NodeConfig, by name: nodes join and leave with their served pods.
        // The apiserver takes one value per metadata.name requirement: one term per node, which
        // the scheduler ORs (as the DaemonSet controller pins each of its pods).
        affinity: {
          nodeAffinity: {
            requiredDuringSchedulingIgnoredDuringExecution: {
              nodeSelectorTerms: nodes.map((node) => ({
                matchFields: [{ key: 'metadata.name', operator: 'In', values: [node] }],
              })),
            },
          },
        },
      },
      sysctls: ['sysctls'],
      container: {
        name: 'node-agent',
        service: 'naat-node',
        // Its /status stays on loopback: the node agent has no port to offer the network. It
        // reports whether steering is ready into the gateways' status, which SteeringReady and
        // the pods' naat.dev/Steered condition are made from.
        args: [
          'node',
          '--config-map',
          `${namespace}/${nodeConfigName('$(NODE_NAME)')}`,
          '--report',
          ...(associating ? ['--associate-pods'] : []),
        ],
        ...(associating ? { volumeMounts: [{ name: 'stamps', mountPath: nodeStampDir }] } : {}),
      },
      ...(associating
        ? {
            ...nodeDriverPod,
            volumes: [{ name: 'stamps', hostPath: { path: nodeStampDir, type: 'DirectoryOrCreate' } }],
          }
        : {}),
    }),
  ];
}

/**
 * What an agent needs only while it drives association for a pod of its node (the Node driver,
 * docs/naa.md), a node agent or a gateway agent: the host's processes (hostPID) and which sockets
 * each holds (reading any user's /proc/<pid>/fd: CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, as the root
 * sidecar has in a pod). No pod's token and no right in the apiserver: the pods are in its config;
 * a node agent's streams are proven to the gateways by its node's agent certificate, and a gateway
 * agent's by being opened within itself.
 */
/**
 * Where the node agent keeps the stamps of the strict pods it drives (docs/naa.md): a host folder
 * (in memory, under /run), so that a restarted node agent gives the same numbers that the pods'
 * running programs cached. Its default state folder, of which this is part, is the container's own.
 */
const nodeStampDir = '/run/naat-node/stamps';

const nodeDriverPod: Pick<AgentPod, 'hostPID' | 'capabilities'> = {
  hostPID: true,
  capabilities: ['DAC_READ_SEARCH', 'SYS_PTRACE'],
};

interface AgentPod {
  metadata: ApiObject['metadata'];
  labels: Record<string, string>;
  serviceAccountName: string;
  /** nodeSelector, affinity: where the agents run. */
  placement: Record<string, unknown>;
  /** The init container's args: the `sysctls` command with the settings of this agent's role. */
  sysctls: string[];
  container: {
    name: string;
    /** Its OpenTelemetry service name. */
    service: string;
    args: string[];
    /** Variables of its own, after those every agent gets. */
    env?: Array<{ name: string; value: string }>;
    /** `health`, when there is one, serves /healthz and /readyz, which the kubelet probes. */
    ports?: Array<{ name: string; containerPort: number }>;
    volumeMounts?: unknown[];
  };
  volumes?: unknown[];
  /** Runs in the host's process namespace. */
  hostPID?: boolean;
  /** Capabilities added to the container's securityContext. */
  capabilities?: string[];
}

/** A DaemonSet of the dataplane program in either role, a gateway's agent or a node agent. */
function agentDaemonSet(settings: OperatorSettings, o: AgentPod): ApiObject {
  const dp = settings.dataplane;
  // Each agent asks for its own node's certificate (a CertificateSigningRequest to naat.dev/agent,
  // with its pod's token) and keeps it, with the CA bundle, in memory (docs/security.md).
  const identity = dp.caConfigMapName;
  const volumeMounts = [
    ...(o.container.volumeMounts ?? []),
    ...(identity
      ? [
          { name: 'tls', mountPath: tlsDir },
          { name: 'ca', mountPath: caDir, readOnly: true },
        ]
      : []),
  ];
  const volumes = [
    ...(o.volumes ?? []),
    ...(identity
      ? [
          { name: 'tls', emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } },
          { name: 'ca', configMap: { name: identity } },
        ]
      : []),
  ];
  return {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: o.metadata,
    spec: {
      selector: { matchLabels: o.labels },
      updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: dp.maxUnavailable } },
      template: {
        metadata: { labels: o.labels },
        spec: {
          serviceAccountName: o.serviceAccountName,
          // The agents program the node's own network stack.
          hostNetwork: true,
          ...(o.hostPID ? { hostPID: true } : {}),
          dnsPolicy: 'ClusterFirstWithHostNet',
          ...o.placement,
          tolerations: dp.tolerations,
          ...(dp.priorityClassName ? { priorityClassName: dp.priorityClassName } : {}),
          ...(Object.keys(dp.podSecurityContext).length ? { securityContext: dp.podSecurityContext } : {}),
          ...(settings.imagePullSecrets.length
            ? { imagePullSecrets: settings.imagePullSecrets.map((secret) => ({ name: secret })) }
            : {}),
          // Stopping leaves the kernel state in place, so a rolling update does not cut flows.
          terminationGracePeriodSeconds: 30,
          ...(dp.setNodeSysctls
            ? {
                initContainers: [
                  {
                    name: 'sysctls',
                    image: dp.image,
                    imagePullPolicy: dp.pullPolicy,
                    args: o.sysctls,
                    resources: dp.resources,
                    // The runtime mounts /proc/sys writable only in a privileged container; this
                    // one writes the few settings of dataplane/sysctls.ts and exits, so that the
                    // agent beside it keeps NET_ADMIN and NET_RAW only (docs/security.md).
                    securityContext: { privileged: true, runAsUser: 0, readOnlyRootFilesystem: true },
                  },
                ],
              }
            : {}),
          containers: [
            {
              name: o.container.name,
              image: dp.image,
              imagePullPolicy: dp.pullPolicy,
              args: [...o.container.args, ...(identity ? ['--tls-dir', tlsDir, '--csr', `${caDir}/ca.crt`] : [])],
              env: [
                { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
                { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                ...processEnvironment(settings, o.container.service),
                ...(o.container.env ?? []),
              ],
              ...(o.container.ports ? { ports: o.container.ports } : {}),
              ...(o.container.ports?.some((p) => p.name === 'health')
                ? {
                    readinessProbe: { httpGet: { path: '/readyz', port: 'health' }, periodSeconds: 5 },
                    livenessProbe: {
                      httpGet: { path: '/healthz', port: 'health' },
                      periodSeconds: 10,
                      failureThreshold: 6,
                    },
                  }
                : {}),
              resources: dp.resources,
              securityContext: o.capabilities
                ? withCapabilities(dp.securityContext, o.capabilities)
                : dp.securityContext,
              ...(volumeMounts.length ? { volumeMounts } : {}),
            },
          ],
          ...(volumes.length ? { volumes } : {}),
        },
      },
    },
  };
}

/** `context` with `added` capabilities besides its own. */
function withCapabilities(context: Record<string, unknown>, added: string[]): Record<string, unknown> {
  const capabilities = (context.capabilities ?? {}) as { add?: string[] };
  return { ...context, capabilities: { ...capabilities, add: [...(capabilities.add ?? []), ...added] } };
}
