// Cluster-wide egress, two keys for the whole cluster. `nodes`: the node agents and their per-node
// configs (desiredNodeConfigs and desiredNodeObjects, both pure), the objects of nodes that no
// longer need one removed, the status entries of node agents that are gone removed from the
// gateways. `pods`: the Steered condition of every served pod away from its gateway's nodes, with
// an Event when it changes, so that a pod whose flows cannot be steered is never silently unserved.
// Two keys, so that the configs, which carry flows, never wait behind a pass of pod status writes:
// at an operator's start that pass writes a condition and an Event for every served pod.
import { KubernetesObjectApi, type V1Pod } from '@kubernetes/client-node';
import { createHash } from 'node:crypto';
import { desiredNodeObjects, nodeAgentName, nodeConfigName, type ApiObject } from '../desired.ts';
import { staleReports } from '../steering.ts';
import { steeredCondition, steeredConditionDue, steeredPodConditions, type NewCondition } from '../status.ts';
import type { ReconcileResult } from '../runtime/controller.ts';
import { fieldManager, writesAtOnce } from '../status-writer.ts';
import { eachAtMost } from '../../common/index.ts';
import { ownedObjectWriter, partition, type ObjectWriter } from './objects.ts';
import type { CompiledCluster } from './cluster.ts';
import type { GatewayReconcilerOptions } from './egress-gateway.ts';

/** As a gateway's: the node agents' namespaced objects live in the operator's namespace too. */
export type SteeringReconcilerOptions = Omit<GatewayReconcilerOptions, 'onApplied'>;

/** The field manager of pods' Steered condition, apart from the association mode's (see applyPodCondition). */
export const steeringFieldManager = `${fieldManager}-steering`;

/** The steering controller's keys: every change can move a pod onto or off any node's config. */
export const steeringKeys = { nodes: 'nodes', pods: 'pods' } as const;

export class SteeringReconciler {
  readonly #o: SteeringReconcilerOptions;
  readonly #writer: ObjectWriter;
  /**
   * The node agents' objects while the compile is current: the writes of their ConfigMaps bring
   * this key back, and making a thousand nodes' objects again took a JSON text of each config.
   */
  readonly #desired = new WeakMap<CompiledCluster, ApiObject[]>();

  constructor(options: SteeringReconcilerOptions) {
    this.#o = options;
    const objects = KubernetesObjectApi.makeApiClient(options.kubeConfig);
    this.#writer = ownedObjectWriter(objects, options.caches, options.caches.nodeConfigMaps);
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    if (key === steeringKeys.nodes) return this.#nodes();
    if (key === steeringKeys.pods) return this.#pods();
    throw new Error(`the steering controller has no key ${JSON.stringify(key)}`);
  }

  async #nodes(): Promise<void> {
    const { caches, settings, namespace } = this.#o;
    const cluster = this.#o.cluster();
    let desired = this.#desired.get(cluster);
    if (!desired) this.#desired.set(cluster, (desired = desiredNodeObjects(cluster.nodeConfigs, settings, namespace)));
    const hashes = new Map(cluster.nodeConfigs.map((c) => [nodeConfigName(c.node), c.hash!]));
    const orphans = caches.nodeConfigMaps.list().filter((cm) => !hashes.has(cm.metadata?.name ?? ''));

    // A node's ConfigMap goes before its agent does: the agent learns from its config's deletion
    // that it is to clear the node, and the Role stops naming the ConfigMap only once it is gone.
    const [early, late] = partition(desired, (o) => o.kind === 'ServiceAccount' || o.kind === 'ConfigMap');
    const [configMaps, accounts] = partition(early, (o) => o.kind === 'ConfigMap');
    for (const object of accounts) await this.#writer.apply(object);
    await eachAtMost(configMaps, writesAtOnce, async (config) => {
      await this.#writer.apply(config, hashes.get(config.metadata.name)!);
    });
    for (const orphan of orphans) {
      await this.#writer.delete({
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: orphan.metadata!.name!, namespace },
      });
    }
    for (const object of late) await this.#writer.apply(object);
    if (!desired.length && (orphans.length || caches.daemonSets.get(`${namespace}/${nodeAgentName}`))) {
      await this.#removeNodeAgents();
    }

    // Entries of node agents that are gone stay until someone removes them; they count for nothing.
    const configs = new Map(cluster.nodeConfigs.map((c) => [c.node, c]));
    for (const { gateway } of cluster.gateways.values()) {
      const name = gateway.metadata.name;
      for (const node of staleReports(name, gateway.status?.steering?.nodes ?? [], configs)) {
        await this.#o.status.removeSteeringReport(name, node);
      }
    }
  }

  /** Comes back when the first new pod on a settling node is due its condition (steeredConditionDue). */
  async #pods(): Promise<ReconcileResult> {
    const cache = this.#o.caches.pods;
    const pods = steeredPodConditions([...this.#o.cluster().gateways.values()], (key) =>
      cache.get(key)?.status?.conditions?.find((c) => c.type === steeredCondition),
    );
    const now = this.#now().getTime();
    let next = Infinity;
    await eachAtMost(cache.list(), writesAtOnce, async (pod) => {
      next = Math.min(next, (await this.#podCondition(pod, pods, now)) ?? Infinity);
    });
    return next < Infinity ? { requeueAfterMs: next - now } : undefined;
  }

  /** No node needs an agent: every object of theirs goes, the DaemonSet last, so a failure is retried. */
  async #removeNodeAgents(): Promise<void> {
    const { namespace, settings } = this.#o;
    const rbac = 'rbac.authorization.k8s.io/v1';
    for (const object of [
      { apiVersion: rbac, kind: 'RoleBinding', metadata: { name: nodeAgentName, namespace } },
      { apiVersion: rbac, kind: 'Role', metadata: { name: nodeAgentName, namespace } },
      { apiVersion: rbac, kind: 'ClusterRoleBinding', metadata: { name: settings.steering.clusterRoleName } },
      { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: nodeAgentName, namespace } },
      { apiVersion: 'apps/v1', kind: 'DaemonSet', metadata: { name: nodeAgentName, namespace } },
    ]) {
      await this.#writer.delete(object);
    }
  }

  /**
   * The pod's Steered condition, written when what it says changed. A pod that was away from its
   * gateway's nodes and no longer is keeps the condition, saying so: conditions written by a
   * field manager of their own are not removed once others have touched the pod's conditions.
   */
  async #podCondition(pod: V1Pod, wanted: ReadonlyMap<string, NewCondition>, now: number): Promise<number | undefined> {
    const name = pod.metadata?.name;
    const namespace = pod.metadata?.namespace;
    if (!name || !namespace) return undefined;
    const existing = pod.status?.conditions?.find((c) => c.type === steeredCondition);
    const condition: NewCondition | undefined =
      wanted.get(`${namespace}/${name}`) ??
      (existing && {
        type: steeredCondition,
        status: 'True',
        reason: 'NotNeeded',
        message: "no gateway serves the pod from another node's gateway nodes: nothing to steer",
      });
    if (!condition) return undefined;
    if (
      existing?.status === condition.status &&
      existing.reason === condition.reason &&
      existing.message === condition.message
    ) {
      return undefined;
    }
    const created = pod.metadata?.creationTimestamp;
    const due = steeredConditionDue(condition, existing, created && new Date(created).getTime(), now);
    if (due !== undefined) return due;
    await this.#o.status.applyPodCondition(
      { name, namespace },
      {
        ...condition,
        lastTransitionTime: existing?.status === condition.status ? existing.lastTransitionTime : this.#now(),
      },
      steeringFieldManager,
    );
    const told =
      condition.status === 'False'
        ? { type: 'Warning' as const, reason: 'NotSteered', note: `${condition.reason}: ${condition.message}` }
        : existing?.status === 'False'
          ? { type: 'Normal' as const, reason: 'Steered', note: condition.message }
          : undefined;
    if (!told) return undefined;
    // Named after the change it tells, so the apiserver refuses it a second time: a pass that sees
    // the cache before this write tells the same change again, and the operator keeps no record
    // of what it told each of (up to 50,000) pods.
    const uid = pod.metadata?.uid;
    const change = createHash('sha256')
      .update(
        JSON.stringify([
          uid,
          existing && [existing.status, existing.reason, existing.message, existing.lastTransitionTime],
          condition.status,
          condition.reason,
          condition.message,
        ]),
      )
      .digest('hex')
      .slice(0, 16);
    await this.#o.events.recordOnce(
      'Pod',
      { metadata: { name, namespace, ...(uid ? { uid } : {}) } },
      { name: `${name}.${change}`, action: 'Steer', ...told },
    );
    return undefined;
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }
}
