// The operator's configuration and webhook objects as the chart makes them, for tests and
// benchmarks that run the operator as a process beside the test apiserver. The apiserver reaches
// that process's webhook at an https URL on loopback (settings.webhook.url), the way it reaches
// an operator run outside the cluster.
import { apiVersion } from '../../crds/index.ts';

export interface OperatorPorts {
  metrics: number;
  health: number;
  webhook: number;
}

/** Settings for operator/main.ts; `name` names the Lease and the webhook's objects. */
export function operatorSettings(name: string, ports: OperatorPorts, extra: Record<string, unknown> = {}) {
  return {
    leaderElection: { enabled: true, leaseName: name },
    webhook: {
      configurationName: name,
      serviceName: `${name}-webhook`,
      secretName: `${name}-webhook`,
      port: ports.webhook,
      url: `https://127.0.0.1:${ports.webhook}/mutate-pods`,
    },
    metricsPort: ports.metrics,
    healthPort: ports.health,
    dataplane: { image: 'naat-dataplane:test', clusterRoleName: 'naat-dataplane' },
    sidecar: { image: 'naat-sidecar:test' },
    steering: { clusterRoleName: `${name}-node` },
    bypass: ['10.96.0.0/16'],
    ...extra,
  };
}

/**
 * The chart's empty webhook Secret in `namespace` and its MutatingWebhookConfiguration, selecting
 * pods of namespaces labelled naat.dev/injection=enabled except `namespace`.
 */
export function webhookObjects(name: string, namespace: string) {
  return [
    { apiVersion: 'v1', kind: 'Secret', metadata: { name: `${name}-webhook`, namespace }, type: 'Opaque' },
    {
      apiVersion: 'admissionregistration.k8s.io/v1',
      kind: 'MutatingWebhookConfiguration',
      metadata: { name },
      webhooks: [
        {
          name: 'sidecar.naat.dev',
          admissionReviewVersions: ['v1'],
          clientConfig: { service: { name: `${name}-webhook`, namespace, path: '/mutate-pods', port: 443 } },
          rules: [
            { operations: ['CREATE'], apiGroups: [''], apiVersions: ['v1'], resources: ['pods'], scope: 'Namespaced' },
          ],
          failurePolicy: 'Ignore',
          timeoutSeconds: 5,
          sideEffects: 'None',
          matchPolicy: 'Equivalent',
          reinvocationPolicy: 'Never',
          namespaceSelector: {
            matchLabels: { 'naat.dev/injection': 'enabled' },
            matchExpressions: [{ key: 'kubernetes.io/metadata.name', operator: 'NotIn', values: [namespace] }],
          },
          objectSelector: { matchExpressions: [{ key: 'naat.dev/inject', operator: 'NotIn', values: ['false'] }] },
        },
      ],
    },
  ];
}

/**
 * The chart's operator configuration (its ConfigMap's config.json) made runnable beside the
 * apiserver: its own ports, and the webhook at a loopback URL unless `inCluster`.
 */
export function runnableHere(config: Record<string, unknown>, ports: OperatorPorts, { inCluster = false } = {}) {
  return {
    ...config,
    metricsPort: ports.metrics,
    healthPort: ports.health,
    webhook: {
      ...(config.webhook as object),
      port: ports.webhook,
      ...(inCluster ? {} : { url: `https://127.0.0.1:${ports.webhook}/mutate-pods` }),
    },
  };
}

/**
 * An Uplink and an EgressGateway, both named `name`, on the nodes labelled naat.dev/gateway=true,
 * serving namespaces labelled egress=<name> and injecting the sidecar into all their pods.
 */
export function gatewayWithUplink(name: string) {
  return [
    {
      apiVersion,
      kind: 'Uplink',
      metadata: { name },
      spec: { interface: 'eth1', nextHop: { ipv4: '192.0.2.1' }, snat: { addresses: ['192.0.2.10'] } },
    },
    {
      apiVersion,
      kind: 'EgressGateway',
      metadata: { name },
      spec: {
        nodeSelector: { 'naat.dev/gateway': 'true' },
        uplinks: { names: [name] },
        namespaceSelector: { matchLabels: { egress: name } },
        association: { sidecar: { podSelector: {} } },
      },
    },
  ];
}
