// Writes what operator/status.ts computed: the operator's part of the status of naat's objects,
// and the conditions it adds to pods, each with server-side apply under the operator's field
// manager, so that the fields others own (the dataplanes' status.nodes) stay theirs.
import {
  CoreV1Api,
  CustomObjectsApi,
  PatchStrategy,
  setHeaderOptions,
  type KubeConfig,
  type V1PodCondition,
} from '@kubernetes/client-node';
import { nodeAgentFieldManager } from '../contracts/gateway/index.ts';
import { statusCode } from '../common/kube/index.ts';
import { definitionOf, egressGatewayDefinition, group, version, type Condition, type Kind } from '../crds/index.ts';
import { canonical } from './canonical.ts';

/** The field manager of everything the operator applies: objects and status. */
export const fieldManager = 'naat-operator';

/**
 * How many independent writes of one reconcile are in flight at once (pods' and policies' status,
 * a gateway's config slices, the node configs): each waits tens of milliseconds on a busy
 * apiserver, so one at a time the Steered conditions of 3,000 pods took over a minute, and the
 * 32 slices of a 10,000-pod gateway seconds.
 */
export const writesAtOnce = 16;

/**
 * The field manager of a gateway's status.failover, apart from the rest of its status: the
 * failover controller and the gateway controller each apply their own part, and an apply under
 * one manager would remove the fields that manager applied before and left out.
 */
export const failoverFieldManager = `${fieldManager}-failover`;

export class StatusWriter {
  readonly #custom: CustomObjectsApi;
  readonly #core: CoreV1Api;

  constructor(kubeConfig: KubeConfig) {
    this.#custom = kubeConfig.makeApiClient(CustomObjectsApi);
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
  }

  /**
   * Applies the operator's part of an object's status, unless it already says exactly that (a
   * status write changes the object, which would otherwise bring it back here for ever).
   */
  async apply(
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
   * Applies a gateway's status.failover, or removes it (undefined), unless it already says exactly
   * that. A gateway that is gone has nothing to write.
   */
  async applyFailover(
    gateway: { metadata: { name: string }; status?: { failover?: unknown } },
    failover: Record<string, unknown> | undefined,
  ): Promise<void> {
    if (canonical(gateway.status?.failover) === canonical(failover)) return;
    await this.#applyGatewayStatus(gateway.metadata.name, failover ? { failover } : {}, failoverFieldManager);
  }

  /**
   * Removes a node agent's entry from a gateway's status.steering.nodes: applies an empty list
   * under that agent's field manager, as the agent does itself when the gateway leaves its config,
   * so the apiserver drops the entry that manager owned and leaves every other. A gateway that is
   * gone has nothing to remove.
   */
  async removeSteeringReport(gateway: string, node: string): Promise<void> {
    await this.#applyGatewayStatus(gateway, { steering: { nodes: [] } }, nodeAgentFieldManager(node));
  }

  /** Applies part of a gateway's status under `manager`; a gateway that is gone needs none. */
  async #applyGatewayStatus(gateway: string, status: Record<string, unknown>, manager: string): Promise<void> {
    try {
      await this.#custom.patchClusterCustomObjectStatus(
        {
          group,
          version,
          plural: egressGatewayDefinition.plural,
          name: gateway,
          body: {
            apiVersion: `${group}/${version}`,
            kind: egressGatewayDefinition.kind,
            metadata: { name: gateway },
            status,
          },
          fieldManager: manager,
          force: true,
        },
        setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
      );
    } catch (error) {
      if (statusCode(error) !== 404) throw error;
    }
  }

  /**
   * Applies one condition to a pod's status; the caller decides whether it changed. Each condition
   * type needs a field manager of its own: an apply under one manager drops the conditions that
   * manager applied before and left out. A pod deleted since the cache saw it is passed over.
   */
  async applyPodCondition(
    pod: { name: string; namespace: string },
    condition: V1PodCondition,
    manager = fieldManager,
  ): Promise<void> {
    try {
      await this.#core.patchNamespacedPodStatus(
        {
          name: pod.name,
          namespace: pod.namespace,
          body: {
            apiVersion: 'v1',
            kind: 'Pod',
            metadata: { name: pod.name, namespace: pod.namespace },
            status: { conditions: [condition] },
          },
          fieldManager: manager,
          force: true,
        },
        setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
      );
    } catch (error) {
      if (statusCode(error) !== 404) throw error;
    }
  }
}
