// The operator's reconcilers. Each takes a key, reads the current state from the caches, computes
// what should be (compileGateway, desiredGatewayObjects, the status helpers), applies it with
// server-side apply and writes status; none looks at what kind of event brought the key.
import {
  CoreV1Api,
  CustomObjectsApi,
  EventsV1Api,
  KubernetesObjectApi,
  V1MicroTime,
  PatchStrategy,
  setHeaderOptions,
  type KubeConfig,
  type KubernetesObject,
  type V1DaemonSet,
  type V1Namespace,
  type V1Node,
  type V1Pod,
} from '@kubernetes/client-node';
import {
  definitionOf,
  group,
  version,
  type Condition,
  type EgressGateway,
  type EgressPolicy,
  type Kind,
  type Uplink,
} from '../crds/index.ts';
import { compileGateway, type PodFacts, type PolicyFacts } from './compile.ts';
import { desiredGatewayObjects, labelsOf, objectName } from './desired.ts';
import { injectedAnnotation, modeAnnotation, modeReasonAnnotation } from './inject.ts';
import { errorText, type Logger } from '../common/index.ts';
import { objectKey, type Informer } from '../common/kube/index.ts';
import type { OperatorSettings } from './settings.ts';
import { conditions, gatewayConditions, policyConditions, uplinkSummary, type DataplaneRollout } from './status.ts';

export const fieldManager = 'naat-operator';
/** The pod condition that tells which association mode a pod with the sidecar is in, and why. */
export const associationCondition = 'naat.dev/AssociationMode';

export interface Caches {
  gateways: Informer<EgressGateway & KubernetesObject>;
  uplinks: Informer<Uplink & KubernetesObject>;
  policies: Informer<EgressPolicy & KubernetesObject>;
  pods: Informer<V1Pod>;
  namespaces: Informer<V1Namespace>;
  nodes: Informer<V1Node>;
  daemonSets: Informer<V1DaemonSet>;
}

export interface ReconcilerOptions {
  kubeConfig: KubeConfig;
  caches: Caches;
  settings: OperatorSettings;
  /** The operator's namespace, where each gateway's namespaced objects live. */
  namespace: string;
  /** This replica, as the reporting instance of its Events. */
  identity: string;
  log: Logger;
  now?: () => Date;
}

export function podFacts(pod: V1Pod): PodFacts {
  return {
    namespace: pod.metadata?.namespace ?? '',
    name: pod.metadata?.name ?? '',
    labels: pod.metadata?.labels,
    ips: (pod.status?.podIPs ?? []).map((ip) => ip.ip).filter((ip): ip is string => Boolean(ip)),
    // Native sidecars (init containers that keep running) run alongside the others.
    containers: [
      ...(pod.spec?.initContainers ?? []).filter((c) => c.restartPolicy === 'Always'),
      ...(pod.spec?.containers ?? []),
    ].map((c) => c.name),
    ...(pod.metadata?.annotations?.[modeAnnotation] === 'Strict' ? { strict: true } : {}),
    ...(pod.status?.phase ? { phase: pod.status.phase } : {}),
  };
}

export class Reconciler {
  readonly #o: ReconcilerOptions;
  readonly #objects: KubernetesObjectApi;
  readonly #custom: CustomObjectsApi;
  readonly #events: EventsV1Api;
  readonly #core: CoreV1Api;
  /** The last Event note of each object and reason, so that one change is told once. */
  readonly #told = new Map<string, string>();

  constructor(options: ReconcilerOptions) {
    this.#o = options;
    this.#objects = KubernetesObjectApi.makeApiClient(options.kubeConfig);
    this.#custom = options.kubeConfig.makeApiClient(CustomObjectsApi);
    this.#events = options.kubeConfig.makeApiClient(EventsV1Api);
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
  }

  /**
   * A gateway's dataplane objects and compiled config, and the status of the gateway and of the
   * policies that name it. A deleted gateway needs nothing: its objects are garbage-collected.
   */
  async reconcileGateway(name: string): Promise<void> {
    const { caches } = this.#o;
    const gateway = caches.gateways.get(name);
    const policies = caches.policies.list().filter((p) => p.spec.gateway === name);
    if (!gateway) {
      for (const policy of policies) await this.#policyStatus(policy, undefined, false, { desired: 0, ready: 0 });
      return;
    }
    const compiled = compileGateway({
      gateway,
      uplinks: caches.uplinks.list(),
      policies,
      pods: caches.pods.list().map(podFacts),
      namespaces: new Map(caches.namespaces.list().map((n) => [n.metadata?.name ?? '', n.metadata?.labels])),
      nodes: caches.nodes.list().map((n) => ({ name: n.metadata?.name ?? '', labels: n.metadata?.labels })),
      // Traffic inside the cluster never leaves through an uplink: the service networks from the
      // settings and every node's pod network.
      bypass: [...this.#o.settings.bypass, ...caches.nodes.list().flatMap((n) => n.spec?.podCIDRs ?? [])],
    });
    for (const object of desiredGatewayObjects(gateway, compiled, this.#o.settings, this.#o.namespace)) {
      await this.#objects.patch(
        object as KubernetesObject,
        undefined,
        undefined,
        fieldManager,
        true,
        PatchStrategy.ServerSideApply,
      );
    }
    const daemonSet = caches.daemonSets.get(`${this.#o.namespace}/${objectName(name)}`);
    const rollout = {
      desired: daemonSet?.status?.desiredNumberScheduled ?? 0,
      ready: Math.min(daemonSet?.status?.numberReady ?? 0, daemonSet?.status?.updatedNumberScheduled ?? 0),
    };
    const generation = gateway.metadata.generation ?? 0;
    if (gateway.status?.configHash !== compiled.config.hash) {
      await this.#event(
        'EgressGateway',
        gateway,
        'Normal',
        'ConfigCompiled',
        'Compile',
        [
          `compiled config ${(compiled.config.hash ?? '').slice(0, 19)}`,
          `${compiled.servedPods} pods, ${compiled.config.uplinks.length} uplinks, ${compiled.config.rules.length} rules`,
        ].join(': '),
      );
    }
    await this.#applyStatus('EgressGateway', gateway, {
      desiredNodes: compiled.nodes.length,
      readyNodes: rollout.ready,
      configHash: compiled.config.hash,
      conditions: conditions(gateway.status?.conditions, generation, this.#now(), gatewayConditions(compiled, rollout)),
    });
    for (const policy of policies) {
      await this.#policyStatus(policy, compiled.policies.get(objectKey(policy)), true, rollout);
    }
  }

  /** An Uplink's summary of what its gateway nodes reported. */
  async reconcileUplink(name: string): Promise<void> {
    const uplink = this.#o.caches.uplinks.get(name);
    if (!uplink) return;
    const summary = uplinkSummary(uplink.status);
    const was = uplink.status?.conditions?.find((c) => c.type === 'Ready')?.status;
    if (was !== undefined && was !== summary.ready.status) {
      const healthy = summary.ready.status === 'True';
      await this.#event(
        'Uplink',
        uplink,
        healthy ? 'Normal' : 'Warning',
        summary.ready.reason,
        'Health',
        summary.ready.message,
      );
    }
    const portsWere = uplink.status?.conditions?.find((c) => c.type === 'PortsAvailable')?.reason;
    if (portsWere !== undefined && portsWere !== summary.ports.reason) {
      await this.#event(
        'Uplink',
        uplink,
        summary.ports.status === 'True' ? 'Normal' : 'Warning',
        summary.ports.reason,
        'Ports',
        summary.ports.message,
      );
    }
    await this.#applyStatus('Uplink', uplink, {
      healthyNodes: summary.healthyNodes,
      activeFlows: summary.activeFlows,
      conditions: conditions(uplink.status?.conditions, uplink.metadata.generation ?? 0, this.#now(), [
        summary.ready,
        summary.ports,
      ]),
    });
  }

  /**
   * A pod the webhook gave the sidecar: a status condition that says which association mode it is
   * in and why, where `kubectl describe pod` shows it. Written once, and again only if it changes.
   */
  async reconcilePod(key: string): Promise<void> {
    const pod = this.#o.caches.pods.get(key);
    const annotations = pod?.metadata?.annotations ?? {};
    if (!pod?.metadata?.name || !pod.metadata.namespace || !annotations[injectedAnnotation]) return;
    const mode = annotations[modeAnnotation] === 'Strict' ? 'Strict' : 'Observe';
    const why = annotations[modeReasonAnnotation] ?? `EgressGateway ${annotations[injectedAnnotation]}`;
    const message =
      mode === 'Strict'
        ? `Strict association, chosen by ${why}: the pod's programs stamp their connections for the gateway; ` +
          'programs that cannot preload the stamping library (static binaries) are associated as in Observe mode'
        : `Observe association, chosen by ${why}: the sidecar reports sockets as it sees them`;
    const existing = pod.status?.conditions?.find((c) => c.type === associationCondition);
    if (existing?.status === 'True' && existing.reason === mode && existing.message === message) return;
    await this.#core.patchNamespacedPodStatus(
      {
        name: pod.metadata.name,
        namespace: pod.metadata.namespace,
        body: {
          apiVersion: 'v1',
          kind: 'Pod',
          metadata: { name: pod.metadata.name, namespace: pod.metadata.namespace },
          status: {
            conditions: [
              {
                type: associationCondition,
                status: 'True',
                reason: mode,
                message,
                lastTransitionTime: this.#now(),
              },
            ],
          },
        },
        fieldManager,
        force: true,
      },
      setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
    );
  }

  async #policyStatus(
    policy: EgressPolicy,
    facts: PolicyFacts | undefined,
    gatewayExists: boolean,
    rollout: DataplaneRollout,
  ): Promise<void> {
    const generation = policy.metadata.generation ?? 0;
    const wanted = policyConditions(facts, gatewayExists, rollout);
    const conflicting = wanted.find((c) => c.type === 'Conflicting')!;
    const wasConflicting = policy.status?.conditions?.find((c) => c.type === 'Conflicting')?.status === 'True';
    if (conflicting.status === 'True' && !wasConflicting) {
      await this.#event('EgressPolicy', policy, 'Warning', 'Conflicting', 'Compile', conflicting.message);
    } else if (conflicting.status === 'False') {
      this.#told.delete(`EgressPolicy/${policy.metadata.namespace ?? ''}/${policy.metadata.name}/Conflicting`);
    }
    await this.#applyStatus('EgressPolicy', policy, {
      matchedPods: facts?.matchedPods ?? 0,
      conditions: conditions(policy.status?.conditions, generation, this.#now(), wanted),
    });
  }

  /**
   * Applies the operator's part of an object's status, unless it already says exactly that (a
   * status write changes the object, which would otherwise bring it back here for ever).
   */
  async #applyStatus(
    kind: Kind,
    object: { metadata: { name: string; namespace?: string }; status?: Record<string, unknown> },
    status: Record<string, unknown> & { conditions: Condition[] },
  ): Promise<void> {
    const current = object.status ?? {};
    if (Object.entries(status).every(([field, value]) => canonical(current[field]) === canonical(value))) return;
    const definition = definitionOf[kind];
    const body = {
      apiVersion: `${group}/${version}`,
      kind,
      metadata: {
        name: object.metadata.name,
        ...(object.metadata.namespace ? { namespace: object.metadata.namespace } : {}),
      },
      status,
    };
    const options = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);
    const common = {
      group,
      version,
      plural: definition.plural,
      name: object.metadata.name,
      body,
      fieldManager,
      force: true,
    };
    if (object.metadata.namespace) {
      await this.#custom.patchNamespacedCustomObjectStatus(
        { ...common, namespace: object.metadata.namespace },
        options,
      );
    } else {
      await this.#custom.patchClusterCustomObjectStatus(common, options);
    }
  }

  /**
   * A Kubernetes Event about one of naat's objects, for what a user should notice: a new compiled
   * config, a conflict that appeared, an uplink whose health changed. Events of cluster-scoped
   * objects go to the default namespace, as Kubernetes does.
   */
  async #event(
    kind: Kind,
    object: { metadata: { name: string; namespace?: string; uid?: string } },
    type: 'Normal' | 'Warning',
    reason: string,
    action: string,
    note: string,
  ): Promise<void> {
    // The caches may not show the status this replica just wrote: remember what was told.
    const told = `${kind}/${object.metadata.namespace ?? ''}/${object.metadata.name}/${reason}`;
    if (this.#told.get(told) === note) return;
    this.#told.set(told, note);
    const namespace = object.metadata.namespace ?? 'default';
    const now = this.#now();
    // Named as Kubernetes names its own events: the object's name and a timestamp in hex.
    const name = `${object.metadata.name}.${(now.getTime() * 1000 + Math.floor(Math.random() * 1000)).toString(16)}`;
    await this.#events
      .createNamespacedEvent({
        namespace,
        body: {
          metadata: { name },
          eventTime: new V1MicroTime(now.getTime()),
          type,
          reason,
          action,
          note: note.slice(0, 1024),
          regarding: {
            apiVersion: `${group}/${version}`,
            kind,
            name: object.metadata.name,
            ...(object.metadata.namespace ? { namespace: object.metadata.namespace } : {}),
            ...(object.metadata.uid ? { uid: object.metadata.uid } : {}),
          },
          reportingController: 'naat.dev/operator',
          reportingInstance: this.#o.identity,
        },
      })
      .catch((error: unknown) =>
        // An Event is a courtesy: failing to record one must not fail the reconcile.
        this.#o.log.error('Failed to record an Event', {
          reason,
          object: object.metadata.name,
          error: errorText(error),
        }),
      );
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }
}

/** The gateways an object's change can affect, for the gateway controller's queue. */
export function gatewaysOf(caches: Caches) {
  const all = () => caches.gateways.list().map((g) => g.metadata.name);
  return {
    all,
    ofPolicy: (policy: EgressPolicy) => [policy.spec.gateway],
    ofDaemonSet: (daemonSet: V1DaemonSet) => {
      const gateway = daemonSet.metadata?.labels?.['naat.dev/gateway'];
      return gateway &&
        daemonSet.metadata?.labels?.['app.kubernetes.io/managed-by'] ===
          labelsOf(gateway)['app.kubernetes.io/managed-by']
        ? [gateway]
        : [];
    },
  };
}

/**
 * Passes a change of `cache` on to `then` only when the facts the compiler reads of the object
 * changed (or it went away): pods' status conditions and nodes' heartbeats change nothing a
 * compiled config holds, and with many pods they would keep every gateway recompiling.
 */
export function onFactsChange<T extends KubernetesObject>(
  cache: { get(key: string): T | undefined },
  facts: (object: T) => unknown,
  then: () => string[],
): (key: string, object: T) => string[] {
  const seen = new Map<string, string>();
  return (key, object) => {
    if (!cache.get(key)) {
      seen.delete(key);
      return then();
    }
    const now = canonical(facts(object));
    if (seen.get(key) === now) return [];
    seen.set(key, now);
    return then();
  };
}

/** JSON with object keys sorted: the apiserver hands objects back with their keys reordered. */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => a.localeCompare(b)))
      : v,
  );
}
