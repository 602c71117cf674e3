// The operator's configuration and webhook objects as the chart makes them, for tests and
// benchmarks that run the operator as a process beside the test apiserver. The apiserver reaches
// that process's webhook at an https URL on loopback (settings.webhook.url), the way it reaches
// an operator run outside the cluster.
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { readGatewayConfig, type GatewayConfig } from '../../contracts/gateway/index.ts';
import { root } from '../../crds/generate.ts';
import { apiVersion } from '../../crds/index.ts';
import { until } from '../e2e/topology.ts';
import { freePorts, kubectl, serviceAccountKubeconfig } from './cluster.ts';

export interface OperatorPorts {
  metrics: number;
  health: number;
  webhook: number;
}

/**
 * A gateway `id` on the test cluster's gateway nodes (labelled naat.dev/gateway=true) through its
 * Uplink `<id>-isp`, serving the pods of the namespaces labelled egress=<id>, given first: the
 * namespace `apps`, the Uplink and the gateway, to apply in that order.
 */
export function servedGateway(id: string, apps: string): unknown[] {
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: apps, labels: { egress: id } } },
    {
      apiVersion,
      kind: 'Uplink',
      metadata: { name: `${id}-isp` },
      spec: { interface: 'eth1', nextHop: { ipv4: '192.0.2.1' }, snat: { addresses: ['192.0.2.10'] } },
    },
    {
      apiVersion,
      kind: 'EgressGateway',
      metadata: { name: id },
      spec: {
        nodeSelector: { 'naat.dev/gateway': 'true' },
        uplinks: { names: [`${id}-isp`] },
        namespaceSelector: { matchLabels: { egress: id } },
      },
    },
  ];
}

/**
 * A gateway's compiled config as the operator stored it in `namespace` (its index and slices,
 * assembled), read with kubectl; undefined while there is none. Retried while a slice changes
 * between the reads.
 */
export async function storedGatewayConfig(
  kubectl: (args: string[]) => Promise<string>,
  namespace: string,
  gateway: string,
): Promise<GatewayConfig | undefined> {
  const read = async (name: string) => {
    const got = await kubectl(['get', 'configmap', name, '-n', namespace, '-o', 'json', '--ignore-not-found']);
    return got.trim() ? (JSON.parse(got).data as Record<string, string>) : undefined;
  };
  for (let attempt = 1; ; attempt++) {
    try {
      return await readGatewayConfig(gateway, read);
    } catch (error) {
      if (attempt === 5) throw error;
    }
  }
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

export interface ReleaseOperatorOptions {
  kubeconfig: string;
  release: string;
  namespace: string;
  /** Where its configuration and kubeconfig are written. */
  dir: string;
  inCluster?: boolean;
  /** Receives everything it prints. */
  log?: (text: string) => void;
}

export interface ReleaseOperator {
  child: ChildProcess;
  health: number;
  metrics: number;
  /** Polls `check` for a minute; a timeout shows the end of what the operator printed. */
  eventually<T>(what: string, check: () => Promise<T | undefined>): Promise<T>;
  /** Resolves once /readyz answers ok. */
  ready(): Promise<unknown>;
  /** What it printed so far. */
  output(): string;
}

/** The lines of an operator's output that say it was refused something or a reconcile failed. */
export const problemLines = (output: string): string[] =>
  output.split('\n').filter((line) => /forbidden|Reconcile failed/i.test(line));

/**
 * The operator as a Helm release configures it (its ConfigMap), run here as a process
 * authenticated as the release's ServiceAccount, so with exactly the chart's RBAC; the release's
 * own pods run on kwok nodes, which run no processes. Unless `inCluster`, the apiserver reaches
 * its webhook at a loopback URL instead of the Service.
 */
export async function startReleaseOperator(o: ReleaseOperatorOptions): Promise<ReleaseOperator> {
  const config = JSON.parse(
    await kubectl(o.kubeconfig, [
      ...['get', 'configmap', `${o.release}-operator`, '-n', o.namespace],
      ...['-o', 'jsonpath={.data.config\\.json}'],
    ]),
  );
  const [webhook, metrics, health] = (await freePorts(3)) as [number, number, number];
  const configFile = join(o.dir, 'config.json');
  await writeFile(configFile, JSON.stringify(runnableHere(config, { webhook, metrics, health }, o)));
  const kubeconfig = join(o.dir, 'kubeconfig');
  await serviceAccountKubeconfig(o.kubeconfig, o.namespace, `${o.release}-operator`, kubeconfig);
  const child = spawn(process.execPath, [join(root, 'operator', 'main.ts')], {
    env: {
      ...process.env,
      KUBECONFIG: kubeconfig,
      NAAT_CONFIG: configFile,
      NAAT_NAMESPACE: o.namespace,
      NAAT_POD_NAME: `${o.release}-operator-local`,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const print = (d: unknown) => {
    output += String(d);
    o.log?.(String(d));
  };
  child.stdout!.on('data', print);
  child.stderr!.on('data', print);
  const eventually = <T>(what: string, check: () => Promise<T | undefined>) =>
    until(what, check, 60_000).catch((error: Error) => {
      throw new Error(`${error.message}\n${output.slice(-3000)}`);
    });
  const ready = () =>
    eventually(
      'the operator ready',
      async () =>
        (await fetch(`http://127.0.0.1:${health}/readyz`)
          .then((r) => r.ok)
          .catch(() => false)) || undefined,
    );
  return { child, health, metrics, eventually, ready, output: () => output };
}
