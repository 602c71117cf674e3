// The operator's configuration file, as the Helm chart writes it (charts/naat/templates/
// configmap.yaml; the chart README lists every field). Read once at start-up and checked, so a
// bad file stops the operator with a message that names the field.
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { logLevels, logLevelVariable } from '../common/index.ts';
import { defaultMarks, isContiguous } from '../contracts/gateway/index.ts';

const Image = { image: Type.String({ minLength: 1 }), pullPolicy: Type.String({ default: 'IfNotPresent' }) };
const Mark = (value: number) => Type.Integer({ minimum: 1, maximum: 0xffffffff, default: value });
const Resources = Type.Record(Type.String(), Type.Record(Type.String(), Type.String()), { default: {} });
/** A Kubernetes SecurityContext or PodSecurityContext, passed through as the chart's values give it. */
const SecurityContext = (value: Record<string, unknown>) =>
  Type.Record(Type.String(), Type.Unknown(), { default: value });

/** The agents' container: nft, ip and conntrack speak netlink as root with these two capabilities only. */
export const agentSecurityContext = {
  runAsUser: 0,
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] },
};

/**
 * The sidecar's container. Reading which process owns a socket (/proc/<pid>/fd of the other
 * containers' processes, whatever their user) needs CAP_DAC_READ_SEARCH to open the folder (mode
 * 0500, owned by the process's user) and CAP_SYS_PTRACE to read its links, which Kubernetes gives
 * only to uid 0.
 */
export const sidecarSecurityContext = {
  runAsUser: 0,
  runAsNonRoot: false,
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  capabilities: { drop: ['ALL'], add: ['DAC_READ_SEARCH', 'SYS_PTRACE'] },
};

export const OperatorSettings = Type.Object({
  logLevel: Type.Union(
    logLevels.map((level) => Type.Literal(level)),
    { default: 'info' },
  ),
  leaderElection: Type.Object({
    enabled: Type.Boolean({ default: true }),
    leaseName: Type.String({ minLength: 1 }),
    leaseDurationSeconds: Type.Integer({ minimum: 1, default: 15 }),
    renewDeadlineSeconds: Type.Integer({ minimum: 1, default: 10 }),
    retryPeriodSeconds: Type.Integer({ minimum: 1, default: 2 }),
  }),
  webhook: Type.Object({
    configurationName: Type.String({ minLength: 1 }),
    serviceName: Type.String({ minLength: 1 }),
    secretName: Type.String({ minLength: 1 }),
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    /**
     * An https URL the apiserver calls instead of the Service, for an operator that runs outside
     * the cluster (the lab); the certificate then names its host.
     */
    url: Type.Optional(Type.String({ pattern: '^https://' })),
    /**
     * Set when cert-manager keeps the webhook's certificate (the chart's webhook.certManager): it
     * writes the serving pair into secretName and the CA into the webhook's caBundle, and the
     * operator only serves that pair. This Secret holds the CA (tls.crt, tls.key of a cert-manager
     * CA Certificate), with which the operator still signs the agents' certificates.
     */
    caSecretName: Type.Optional(Type.String({ minLength: 1 })),
  }),
  metricsPort: Type.Integer({ minimum: 1, maximum: 65535 }),
  healthPort: Type.Integer({ minimum: 1, maximum: 65535 }),
  /**
   * Whether the operator makes or replaces naat's CRDs when it starts (operator/custom-resource-
   * definitions.ts); false where something else, such as a GitOps tool, keeps them.
   */
  crds: Type.Object({ apply: Type.Boolean({ default: true }) }, { default: {} }),
  imagePullSecrets: Type.Array(Type.String(), { default: [] }),
  /** The cluster's service networks; the nodes' pod networks are added from the Node objects. */
  bypass: Type.Array(Type.String(), { default: [] }),
  dataplane: Type.Object({
    ...Image,
    clusterRoleName: Type.String({ minLength: 1 }),
    resources: Resources,
    tolerations: Type.Array(Type.Record(Type.String(), Type.Unknown()), { default: [] }),
    /** A gateway node's egress stops while its agent is evicted or preempted; '' for none. */
    priorityClassName: Type.String({ default: 'system-node-critical' }),
    /** The agents' pod securityContext, none when empty; the init container keeps its own. */
    podSecurityContext: SecurityContext({}),
    /** The agents' container securityContext; without NET_ADMIN and NET_RAW as root they cannot work. */
    securityContext: SecurityContext(agentSecurityContext),
    maxUnavailable: Type.Union([Type.Integer({ minimum: 1 }), Type.String()], { default: 1 }),
    /**
     * Whether the agents' DaemonSets get a privileged init container that writes the node's
     * kernel settings they need (docs/dataplane.md); without it the nodes must have them already.
     */
    setNodeSysctls: Type.Boolean({ default: true }),
    metricsPort: Type.Integer({ minimum: 1, maximum: 65535, default: 9090 }),
    healthPort: Type.Integer({ minimum: 1, maximum: 65535, default: 9091 }),
    /** The secure listener of flow data (docs/security.md), TLS with the agent's own certificate. */
    flowPort: Type.Integer({ minimum: 1, maximum: 65535, default: 9094 }),
    /**
     * Every endpoint, flow data included, on the node's loopback address (127.0.0.1): what the
     * naat CLI reaches through the apiserver's port-forward to an agent's pod (docs/cli.md).
     */
    localPort: Type.Integer({ minimum: 1, maximum: 65535, default: 9095 }),
    /**
     * The ConfigMap the chart made empty for the CA bundle (key ca.crt), which the operator fills
     * and every agent's DaemonSet mounts. With it, each agent asks the operator's signer
     * (naat.dev/agent) for its node's certificate and keeps it in its TLS directory; the gateway
     * agents serve flow data on the secure listener with it. Without it the agents have no
     * certificate and serve no flow data in the cluster.
     */
    caConfigMapName: Type.Optional(Type.String({ minLength: 1 })),
    /**
     * The longest an agent's certificate lasts (seconds); the agent renews it when two thirds have
     * passed, with a new key.
     */
    certificateLifetimeSeconds: Type.Integer({ minimum: 10, default: 7 * 86_400 }),
  }),
  sidecar: Type.Object({ ...Image, resources: Resources, securityContext: SecurityContext(sidecarSecurityContext) }),
  /** Cluster-wide egress: the node agents and the tunnels they steer served pods' flows into. */
  steering: Type.Object({
    /** The UDP port of every gateway's VXLAN tunnel. */
    port: Type.Integer({ minimum: 1, maximum: 65535, default: 7790 }),
    /** The chart's ClusterRole of the node agents (their status reports), bound to their ServiceAccount. */
    clusterRoleName: Type.String({ minLength: 1 }),
    /** The node agents' ports, on the host network beside any gateway agent of the same node. */
    metricsPort: Type.Integer({ minimum: 1, maximum: 65535, default: 9092 }),
    healthPort: Type.Integer({ minimum: 1, maximum: 65535, default: 9093 }),
  }),
  /**
   * The bits of the packet and conntrack marks naat uses: each a contiguous run, none overlapping.
   * The defaults sit in the low byte, clear of kube-proxy (0x4000, 0x8000), Cilium (0x0f00,
   * 0xf000 and the upper 16 bits) and Calico (0xffff0000).
   */
  marks: Type.Object(
    {
      /** The gateway agents' uplink of a flow. */
      uplinks: Mark(defaultMarks.uplinks),
      /** The gateway agents' flows that arrived through a tunnel, whose replies go back into it. */
      tunnel: Mark(defaultMarks.tunnel),
      /** The node agents' gateway node of a steered flow. */
      steering: Mark(defaultMarks.steering),
    },
    { default: {} },
  ),
  /** The chart's otel values: how the dataplanes and sidecars the operator runs export telemetry. */
  otel: Type.Object(
    {
      endpoint: Type.String({ default: '' }),
      protocol: Type.String({ default: 'grpc' }),
      sampler: Type.String({ default: 'parentbased_traceidratio' }),
      samplerArg: Type.String({ default: '1' }),
      resourceAttributes: Type.Record(Type.String(), Type.String(), { default: {} }),
    },
    { default: {} },
  ),
});
export type OperatorSettings = Static<typeof OperatorSettings>;

/** Defaults applied and checked; throws naming every field that is wrong. */
export function parseSettings(input: unknown): OperatorSettings {
  const value = Value.Default(OperatorSettings, Value.Clone(input));
  const errors = [...Value.Errors(OperatorSettings, value)].map((e) => `${e.path || '/'}: ${e.message}`);
  const settings = value as OperatorSettings;
  errors.push(...markProblems(settings.marks));
  if (errors.length) throw new Error(`invalid operator configuration: ${errors.join('; ')}`);
  return settings;
}

const hex = (mask: number) => `0x${mask.toString(16).padStart(8, '0')}`;

/** Each mark a contiguous run of bits, no two sharing a bit: a shared bit would mix two meanings. */
function markProblems(marks: OperatorSettings['marks']): string[] {
  const problems: string[] = [];
  const entries = (['uplinks', 'tunnel', 'steering'] as const).map((name) => [name, marks[name]] as const);
  for (const [name, mask] of entries) {
    if (!isContiguous(mask)) problems.push(`/marks/${name}: ${hex(mask)} is not one contiguous run of bits`);
  }
  entries.forEach(([name, mask], i) => {
    for (const [other, otherMask] of entries.slice(i + 1)) {
      const shared = (mask & otherMask) >>> 0;
      if (shared)
        problems.push(
          `/marks/${name}: ${hex(mask)} overlaps marks.${other} ${hex(otherMask)} in ${hex(shared)}; give each its own bits`,
        );
    }
  });
  return problems;
}

/**
 * The environment every process the operator runs shares: the log level, and OTEL_* as the chart
 * sets the operator's own (the SDK is disabled outright when no endpoint is configured).
 */
export function processEnvironment(
  { logLevel, otel }: Pick<OperatorSettings, 'logLevel' | 'otel'>,
  service: string,
): Array<{ name: string; value: string }> {
  const level = { name: logLevelVariable, value: logLevel };
  if (!otel.endpoint) return [level, { name: 'OTEL_SDK_DISABLED', value: 'true' }];
  const attributes = Object.entries(otel.resourceAttributes)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, value]) => `${key}=${value}`)
    .join(',');
  return [
    level,
    { name: 'OTEL_SERVICE_NAME', value: service },
    { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: otel.endpoint },
    { name: 'OTEL_EXPORTER_OTLP_PROTOCOL', value: otel.protocol },
    { name: 'OTEL_TRACES_SAMPLER', value: otel.sampler },
    { name: 'OTEL_TRACES_SAMPLER_ARG', value: otel.samplerArg },
    ...(attributes ? [{ name: 'OTEL_RESOURCE_ATTRIBUTES', value: attributes }] : []),
  ];
}
