// The node agent's word on each gateway it steers to, in the EgressGateway's status:
// `status.steering.nodes` is a list map keyed by node, and each node agent server-side applies its
// own entry with its own field manager, so nodes never overwrite each other (nor the operator, which
// aggregates the entries). When a gateway leaves the node config, the node applies an empty list:
// the apiserver removes the entry it owned and leaves the others.
import { CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { apiVersion, egressGatewayDefinition } from '../../crds/index.ts';
import { nodeAgentFieldManager, type NodeConfig } from '../../contracts/gateway/index.ts';
import { applyStatus } from '../report.ts';
import type { NodeAgentReport } from './node-agent.ts';

/** What the node agent knows of its steering to one gateway. */
export interface SteeringState {
  gateway: string;
  ready: boolean;
  /** CamelCase, such as Applied or ApplyFailed. */
  reason?: string;
  message?: string;
  /** Hash of the node config applied. */
  hash?: string;
}

/**
 * The node agent's word on each gateway of its config: ready once the config is applied without
 * a problem for the gateway and at least one of its nodes takes flows; else why not, since the
 * gateway's served pods on this node are then not served (their new flows are dropped).
 */
export function steeringStates(config: NodeConfig, report: NodeAgentReport): SteeringState[] {
  return config.gateways.map(({ gateway }) => {
    const hash = report.appliedHash ? { hash: report.appliedHash } : {};
    const problem = report.problems[gateway];
    if (report.lastSync?.error) {
      return { gateway, ready: false, reason: 'ApplyFailed', message: report.lastSync.error, ...hash };
    }
    if (!report.lastSync || report.appliedHash !== config.hash) {
      return { gateway, ready: false, reason: 'Applying', message: 'the node config is not applied yet', ...hash };
    }
    if (problem) return { gateway, ready: false, reason: 'ApplyFailed', message: problem, ...hash };
    if (!report.peers.some((p) => p.gateway === gateway && p.up)) {
      return {
        gateway,
        ready: false,
        reason: 'NoGatewayNode',
        message: 'none of the gateway nodes takes flows',
        ...hash,
      };
    }
    return { gateway, ready: true, reason: 'Applied', ...hash };
  });
}

/** One node's entry, as status.steering.nodes holds it. */
export interface SteeringNodeEntry extends Omit<SteeringState, 'gateway'> {
  node: string;
  /** When ready last changed, RFC 3339. */
  since: string;
}

/** The apply body of `node`'s entry in `gateway`'s status; without an entry, the one that removes it. */
export function steeringStatusPatch(gateway: string, entry: SteeringNodeEntry | undefined) {
  return {
    apiVersion,
    kind: egressGatewayDefinition.kind,
    metadata: { name: gateway },
    status: { steering: { nodes: entry ? [entry] : [] } },
  };
}

/**
 * The entries for `states`, keeping `since` from `previous` while ready stays the same. Messages are
 * cut to what the schema allows, so that a long error never makes the apply fail.
 */
export function steeringEntries(
  node: string,
  states: readonly SteeringState[],
  previous: ReadonlyMap<string, SteeringNodeEntry>,
  now: Date,
): Map<string, SteeringNodeEntry> {
  const entries = new Map<string, SteeringNodeEntry>();
  for (const { gateway, ...state } of states) {
    const before = previous.get(gateway);
    const since = before && before.ready === state.ready ? before.since : now.toISOString();
    const message = state.message === undefined ? {} : { message: state.message.slice(0, 1024) };
    entries.set(gateway, { node, ...state, ...message, since });
  }
  return entries;
}

export class SteeringStatusReporter {
  readonly #api: CustomObjectsApi;
  readonly #node: string;
  readonly #now: () => Date;
  /** The entries in the apiserver, by gateway, as this reporter last applied them. */
  #applied = new Map<string, SteeringNodeEntry>();
  /** The entries of the last report, applied or not, for `since`. */
  #last = new Map<string, SteeringNodeEntry>();

  constructor(kubeConfig: KubeConfig, node: string, now: () => Date = () => new Date()) {
    this.#api = kubeConfig.makeApiClient(CustomObjectsApi);
    this.#node = node;
    this.#now = now;
  }

  /**
   * Applies this node's entry for every gateway in `states` that changed since the last report, and
   * removes its entry from the gateways reported before and missing now. A gateway that does not
   * exist is skipped (and tried again next time). The first failure rejects; what was applied
   * before it stays recorded, so the next report retries only the rest.
   */
  async report(states: readonly SteeringState[]): Promise<void> {
    const entries = steeringEntries(this.#node, states, this.#last, this.#now());
    this.#last = entries;
    const manager = nodeAgentFieldManager(this.#node);
    for (const [gateway, entry] of entries) {
      if (JSON.stringify(this.#applied.get(gateway)) === JSON.stringify(entry)) continue;
      const applied = await applyStatus(
        this.#api,
        egressGatewayDefinition.plural,
        steeringStatusPatch(gateway, entry),
        manager,
      );
      if (applied) this.#applied.set(gateway, entry);
      else this.#applied.delete(gateway);
    }
    for (const gateway of [...this.#applied.keys()]) {
      if (entries.has(gateway)) continue;
      await applyStatus(this.#api, egressGatewayDefinition.plural, steeringStatusPatch(gateway, undefined), manager);
      this.#applied.delete(gateway);
    }
  }
}
