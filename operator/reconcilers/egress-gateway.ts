// An EgressGateway, two keys. Its objects: the dataplane objects and compiled config
// (compileGateway and desiredGatewayObjects, both pure). Its status: the gateway's and that of the
// EgressPolicies that name it (operator/status.ts), as the config its objects last received says.
// Policies are reconciled here because a gateway compiles all of its policies together: whether a
// policy is accepted, programmed or conflicting is known only from the compiled whole. Two keys,
// so that the next config never waits behind the status writes of the last (a thousand
// policies' status took seconds on a busy apiserver, while pods came and went).
import { setImmediate } from 'node:timers/promises';
import { KubernetesObjectApi, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import {
  configSliceLabel,
  gatewayLabel,
  sliceConfig,
  type GatewayConfig,
  type SlicedConfig,
} from '../../contracts/gateway/index.ts';
import type { EgressGateway, EgressPolicy } from '../../crds/index.ts';
import type { Caches } from '../caches.ts';
import type { Compiled, PolicyFacts } from '../compile.ts';
import { desiredGatewayObjects, labelsOf, objectName, ownedByConfig, type ApiObject } from '../desired.ts';
import type { EventRecorder } from '../events.ts';
import type { CompiledCluster, CompiledGateway } from './cluster.ts';
import { objectKey } from '../../common/kube/index.ts';
import { ownedObjectWriter, partition, type ObjectWriter } from './objects.ts';
import type { OperatorSettings } from '../settings.ts';
import {
  conditions,
  gatewayConditions,
  policyConditions,
  steeringReadyCondition,
  type DataplaneRollout,
} from '../status.ts';
import { writesAtOnce, type StatusWriter } from '../status-writer.ts';
import { eachAtMost } from '../../common/index.ts';

export interface GatewayReconcilerOptions {
  kubeConfig: KubeConfig;
  caches: Caches;
  settings: OperatorSettings;
  /** The operator's namespace, where each gateway's namespaced objects live. */
  namespace: string;
  status: StatusWriter;
  events: EventRecorder;
  /** Every gateway compiled from the caches as they are now (clusterCompiler). */
  cluster: () => CompiledCluster;
  /** Called once a gateway's objects are written (or found gone), so that its status key follows. */
  onApplied: (gateway: string) => void;
  now?: () => Date;
}

/** The gateway controller's keys for a gateway: its objects, and its status with its policies'. */
export const gatewayKeys = {
  objects: (gateway: string) => gateway,
  status: (gateway: string) => `${statusPrefix}${gateway}`,
};
// A gateway's name is a DNS subdomain, which holds no slash.
const statusPrefix = 'status/';

/** The gateways an object's change can affect, for the gateway controller's queue. */
export function gatewaysOf(caches: Pick<Caches, 'gateways'>) {
  const all = () => caches.gateways.list().map((g) => g.metadata.name);
  return {
    all,
    /** The gateway whose DaemonSet, ServiceAccount, Role or RoleBinding this is, by its labels. */
    ofObject: (object: KubernetesObject) => {
      const gateway = object.metadata?.labels?.[gatewayLabel];
      return gateway &&
        object.metadata?.labels?.['app.kubernetes.io/managed-by'] === labelsOf(gateway)['app.kubernetes.io/managed-by']
        ? [gateway]
        : [];
    },
  };
}

export class GatewayReconciler {
  readonly #o: GatewayReconcilerOptions;
  readonly #writer: ObjectWriter;
  /** What each gateway's objects last received: its status tells that, not a newer compile. */
  readonly #applied = new Map<string, CompiledGateway>();
  /**
   * Each compiled config cut into slices, while the compile is current: its DaemonSet's rollout
   * and another hand's change bring the objects key back without a new compile, and cutting 50,000
   * pods' config into slices the first time took a second.
   */
  readonly #sliced = new WeakMap<GatewayConfig, SlicedConfig>();

  constructor(options: GatewayReconcilerOptions) {
    this.#o = options;
    // Its slices by their cache; not its index, which their label selector leaves out.
    const objects = KubernetesObjectApi.makeApiClient(options.kubeConfig);
    this.#writer = ownedObjectWriter(objects, options.caches, options.caches.gatewayConfigSlices);
  }

  async reconcile(key: string): Promise<void> {
    if (key.startsWith(statusPrefix)) await this.#status(key.slice(statusPrefix.length));
    else await this.#gatewayObjects(key);
  }

  /** A deleted gateway's objects are garbage-collected: nothing to write. */
  async #gatewayObjects(name: string): Promise<void> {
    const gateway = this.#o.caches.gateways.get(name);
    if (gateway) {
      // Every gateway, because a node's config (whose hash says whether steering is current there)
      // holds the pods of every gateway that steers from that node.
      const compiled = this.#o.cluster().gateways.get(name)!;
      // A turn of the event loop between the compile and the cutting into slices, at 50,000 pods
      // each a second the first time (later ones make again only what changed): what waits for it
      // (the leader's renewal above all) gets its turn.
      await setImmediate();
      await this.#applyObjects(gateway, compiled.compiled);
      this.#applied.set(name, compiled);
    }
    this.#o.onApplied(name);
  }

  /** A deleted gateway needs nothing but its policies' status. */
  async #status(name: string): Promise<void> {
    const { caches } = this.#o;
    const gateway = caches.gateways.get(name);
    const policies = caches.policies.list().filter((p) => p.spec.gateway === name);
    if (!gateway) {
      this.#applied.delete(name);
      const none = { desired: 0, ready: 0 };
      await eachAtMost(policies, writesAtOnce, (policy) => this.#policyStatus(policy, undefined, false, none));
      return;
    }
    // Until its objects are written there is nothing to tell; their reconcile brings this key back.
    const applied = this.#applied.get(name);
    if (!applied) return;
    const { compiled, steering, nodeConflicts } = applied;
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
    await eachAtMost(policies, writesAtOnce, (policy) =>
      this.#policyStatus(policy, compiled.policies.get(objectKey(policy)), true, rollout),
    );
  }

  /**
   * The gateway's objects, with its config as an index and slices: the Role first, granting the
   * new slices and those the current index names; the slices whose content changed, then the
   * index; then the slices no index names any more are deleted and the Role stops naming them.
   * An agent so never finds a slice it may not read, nor the index naming one that is not there.
   * The index comes before the DaemonSet, which its uid then owns too (ownedByConfig). Only what
   * is not stored as written goes out (ObjectWriter): under pod churn, the slices and the index.
   */
  async #applyObjects(gateway: EgressGateway, compiled: Compiled): Promise<void> {
    const { caches, settings, namespace } = this.#o;
    const name = objectName(gateway.metadata.name);
    let sliced = this.#sliced.get(compiled.config);
    if (!sliced) this.#sliced.set(compiled.config, (sliced = sliceConfig(compiled.config)));
    const existing = caches.gatewayConfigSlices
      .list()
      .filter((cm) => cm.metadata?.labels?.[gatewayLabel] === gateway.metadata.name);
    const stale = existing.map((cm) => cm.metadata!.name!).filter((slice) => !sliced.slices.has(slice));
    const objects = desiredGatewayObjects(gateway, compiled, settings, namespace, sliced, stale);
    const hashes = new Map(sliced.index.slices.map((s) => [s.name, s.hash]));
    const isSlice = (o: ApiObject) =>
      o.metadata.labels?.[configSliceLabel] !== undefined && hashes.has(o.metadata.name);
    // The ClusterRoleBinding binds the chart's ClusterRole, which is there before any gateway:
    // it goes beside the slices, and before the DaemonSet whose agents it lets in.
    const [bindings, others] = partition(objects, (o) => o.kind === 'ClusterRoleBinding');
    const [slices, rest] = partition(others, isSlice);
    const index = rest.findIndex((o) => o.kind === 'ConfigMap' && o.metadata.name === name);
    for (const object of rest.slice(0, index)) await this.#writer.apply(object);
    // The slices depend on none but the Role before them; the index, which names them, follows.
    await eachAtMost([...bindings, ...slices], writesAtOnce, async (object) => {
      await this.#writer.apply(object, hashes.get(object.metadata.name));
    });
    let configUid: string | undefined;
    for (const object of rest.slice(index)) {
      const applied = await this.#writer.apply(
        object.kind === 'DaemonSet' && configUid ? ownedByConfig(object, configUid) : object,
      );
      if (object.kind === 'ConfigMap' && object.metadata.name === name) configUid = applied?.metadata?.uid;
    }
    if (!stale.length) return;
    for (const slice of stale) {
      await this.#writer.delete({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: slice, namespace } });
    }
    const role = desiredGatewayObjects(gateway, compiled, settings, namespace, sliced).find((o) => o.kind === 'Role')!;
    await this.#writer.apply(role);
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
