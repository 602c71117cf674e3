// An EgressGateway: its dataplane objects and compiled config (compileGateway and
// desiredGatewayObjects, both pure), and the status of the gateway and of the EgressPolicies
// that name it (operator/status.ts). Policies are reconciled here because a gateway compiles
// all of its policies together: whether a policy is accepted, programmed or conflicting is known
// only from the compiled whole.
import {
  KubernetesObjectApi,
  PatchStrategy,
  type KubeConfig,
  type KubernetesObject,
  type V1DaemonSet,
} from '@kubernetes/client-node';
import type { EgressPolicy } from '../../crds/index.ts';
import type { Caches } from '../caches.ts';
import type { PolicyFacts } from '../compile.ts';
import { desiredGatewayObjects, labelsOf, objectName, ownedByConfig } from '../desired.ts';
import type { EventRecorder } from '../events.ts';
import { compileCluster } from './cluster.ts';
import { objectKey } from '../../common/kube/index.ts';
import type { OperatorSettings } from '../settings.ts';
import {
  conditions,
  gatewayConditions,
  policyConditions,
  steeringReadyCondition,
  type DataplaneRollout,
} from '../status.ts';
import { fieldManager, type StatusWriter } from '../status-writer.ts';

export interface GatewayReconcilerOptions {
  kubeConfig: KubeConfig;
  caches: Caches;
  settings: OperatorSettings;
  /** The operator's namespace, where each gateway's namespaced objects live. */
  namespace: string;
  status: StatusWriter;
  events: EventRecorder;
  now?: () => Date;
}

/** The gateways an object's change can affect, for the gateway controller's queue. */
export function gatewaysOf(caches: Pick<Caches, 'gateways'>) {
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

export class GatewayReconciler {
  readonly #o: GatewayReconcilerOptions;
  readonly #objects: KubernetesObjectApi;

  constructor(options: GatewayReconcilerOptions) {
    this.#o = options;
    this.#objects = KubernetesObjectApi.makeApiClient(options.kubeConfig);
  }

  /** A deleted gateway needs nothing but its policies' status: its objects are garbage-collected. */
  async reconcile(name: string): Promise<void> {
    const { caches } = this.#o;
    const gateway = caches.gateways.get(name);
    const policies = caches.policies.list().filter((p) => p.spec.gateway === name);
    if (!gateway) {
      for (const policy of policies) await this.#policyStatus(policy, undefined, false, { desired: 0, ready: 0 });
      return;
    }
    // Every gateway, because a node's config (whose hash says whether steering is current there)
    // holds the pods of every gateway that steers from that node.
    const { compiled, steering, nodeConflicts } = compileCluster(caches, this.#o.settings).gateways.get(name)!;
    // The ConfigMap comes before the DaemonSet, which its uid then owns too (ownedByConfig).
    let configUid: string | undefined;
    for (const object of desiredGatewayObjects(gateway, compiled, this.#o.settings, this.#o.namespace)) {
      const applied = await this.#objects.patch(
        (object.kind === 'DaemonSet' && configUid ? ownedByConfig(object, configUid) : object) as KubernetesObject,
        undefined,
        undefined,
        fieldManager,
        true,
        PatchStrategy.ServerSideApply,
      );
      if (object.kind === 'ConfigMap') configUid = applied.metadata?.uid;
    }
    const daemonSet = caches.daemonSets.get(`${this.#o.namespace}/${objectName(name)}`);
    const rollout = {
      desired: daemonSet?.status?.desiredNumberScheduled ?? 0,
      ready: Math.min(daemonSet?.status?.numberReady ?? 0, daemonSet?.status?.updatedNumberScheduled ?? 0),
    };
    const generation = gateway.metadata.generation ?? 0;
    if (gateway.status?.configHash !== compiled.config.hash) {
      await this.#o.events.record(
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
    await this.#o.status.apply('EgressGateway', gateway, {
      desiredNodes: compiled.nodes.length,
      readyNodes: rollout.ready,
      configHash: compiled.config.hash,
      conditions: conditions(gateway.status?.conditions, generation, this.#now(), [
        ...gatewayConditions(compiled, rollout, nodeConflicts),
        steeringReadyCondition(steering),
      ]),
    });
    for (const policy of policies) {
      await this.#policyStatus(policy, compiled.policies.get(objectKey(policy)), true, rollout);
    }
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
      await this.#o.events.record('EgressPolicy', policy, 'Warning', 'Conflicting', 'Compile', conflicting.message);
    } else if (conflicting.status === 'False') {
      this.#o.events.forget('EgressPolicy', policy, 'Conflicting');
    }
    await this.#o.status.apply('EgressPolicy', policy, {
      matchedPods: facts?.matchedPods ?? 0,
      conditions: conditions(policy.status?.conditions, generation, this.#now(), wanted),
    });
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }
}
