// What the operator runs for one EgressGateway, as plain objects to server-side apply: the
// dataplane's ServiceAccount, its binding to the chart's dataplane ClusterRole, the ConfigMap
// holding the compiled config with a Role that lets the dataplane read that one ConfigMap, and
// the DaemonSet on the gateway's nodes. All are owned by the
// gateway, so deleting it lets the garbage collector remove them.
import type { EgressGateway } from '../crds/index.ts';
import { apiVersion } from '../crds/index.ts';
import type { Compiled } from './compile.ts';
import { otelEnvironment, type OperatorSettings } from './settings.ts';

export const configFile = 'config.json';
const stateDir = '/run/naat';

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
export const objectName = (gateway: string) => `naat-gw-${gateway}`;

export function labelsOf(gateway: string): Record<string, string> {
  return {
    'app.kubernetes.io/name': 'naat-dataplane',
    'app.kubernetes.io/instance': gateway,
    'app.kubernetes.io/managed-by': 'naat-operator',
    'naat.dev/gateway': gateway,
  };
}

export function desiredGatewayObjects(
  gateway: EgressGateway,
  compiled: Compiled,
  settings: OperatorSettings,
  namespace: string,
): ApiObject[] {
  const name = objectName(gateway.metadata.name);
  const labels = labelsOf(gateway.metadata.name);
  const metadata = (namespaced: boolean) => ({
    name,
    ...(namespaced ? { namespace } : {}),
    labels,
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
  return [
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: metadata(true) },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: metadata(false),
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: dp.clusterRoleName },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: metadata(true),
      data: { [configFile]: JSON.stringify(compiled.config) },
    },
    // The dataplane watches its config through the apiserver (a change reaches it in
    // milliseconds, not at the kubelet's next volume sync), and may read nothing else: a get, then
    // a watch by a metadata.name field selector, which the apiserver authorizes by resourceNames.
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'Role',
      metadata: metadata(true),
      rules: [{ apiGroups: [''], resources: ['configmaps'], resourceNames: [name], verbs: ['get', 'watch'] }],
    },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: metadata(true),
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name },
      subjects: [{ kind: 'ServiceAccount', name, namespace }],
    },
    {
      apiVersion: 'apps/v1',
      kind: 'DaemonSet',
      metadata: metadata(true),
      spec: {
        selector: { matchLabels: labels },
        updateStrategy: { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: dp.maxUnavailable } },
        template: {
          metadata: { labels },
          spec: {
            serviceAccountName: name,
            // The dataplane programs the node's own network stack.
            hostNetwork: true,
            dnsPolicy: 'ClusterFirstWithHostNet',
            nodeSelector: { 'kubernetes.io/os': 'linux', ...gateway.spec.nodeSelector },
            tolerations: dp.tolerations,
            ...(dp.priorityClassName ? { priorityClassName: dp.priorityClassName } : {}),
            ...(settings.imagePullSecrets.length
              ? { imagePullSecrets: settings.imagePullSecrets.map((secret) => ({ name: secret })) }
              : {}),
            // Stopping leaves the kernel state in place, so a rolling update does not cut flows.
            terminationGracePeriodSeconds: 30,
            containers: [
              {
                name: 'dataplane',
                image: dp.image,
                imagePullPolicy: dp.pullPolicy,
                args: [
                  'run',
                  '--config-map',
                  `${namespace}/${name}`,
                  '--state-dir',
                  stateDir,
                  '--listen',
                  `0.0.0.0:${dp.healthPort}`,
                  '--metrics-listen',
                  `0.0.0.0:${dp.metricsPort}`,
                  '--report',
                ],
                env: [
                  { name: 'NODE_NAME', valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } } },
                  { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                  ...otelEnvironment(settings.otel, 'naat-dataplane'),
                ],
                ports: [
                  { name: 'health', containerPort: dp.healthPort },
                  { name: 'metrics', containerPort: dp.metricsPort },
                  { name: 'naa', containerPort: gateway.spec.association.port },
                ],
                readinessProbe: { httpGet: { path: '/readyz', port: 'health' }, periodSeconds: 5 },
                livenessProbe: {
                  httpGet: { path: '/healthz', port: 'health' },
                  periodSeconds: 10,
                  failureThreshold: 6,
                },
                resources: dp.resources,
                securityContext: {
                  // nft, ip and conntrack speak netlink as root with these two capabilities only.
                  runAsUser: 0,
                  allowPrivilegeEscalation: false,
                  readOnlyRootFilesystem: true,
                  capabilities: { drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] },
                },
                volumeMounts: [{ name: 'state', mountPath: stateDir }],
              },
            ],
            volumes: [
              // Uplink ids live as long as the node's conntrack table: until the node reboots.
              { name: 'state', hostPath: { path: `${stateDir}/${gateway.metadata.name}`, type: 'DirectoryOrCreate' } },
            ],
          },
        },
      },
    },
  ];
}
