// Reports this node's view of its uplinks into each Uplink's status. `status.nodes` is a list map
// keyed by node, and each node applies its own entry with its own field manager (server-side
// apply), so nodes never overwrite each other and the operator aggregates the entries.
import { CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { apiVersion, group, uplinkDefinition, version } from '../crds/index.ts';
import type { AgentReport } from './agent-report.ts';

export const reportFieldManager = (node: string) => `naat-dataplane-${node}`;

/** The status patch of one uplink from this node's report. */
export function uplinkStatusPatch(report: AgentReport, uplink: AgentReport['uplinks'][number]) {
  return {
    apiVersion,
    kind: uplinkDefinition.kind,
    metadata: { name: uplink.name },
    status: {
      nodes: [
        {
          node: report.node,
          healthy: uplink.healthy,
          since: uplink.since,
          ...(uplink.latencyMs !== undefined ? { latencyMs: Math.round(uplink.latencyMs * 100) / 100 } : {}),
          ...(uplink.lossPercent !== undefined ? { lossPercent: uplink.lossPercent } : {}),
          activeFlows: uplink.activeFlows,
          portUtilisationPercent: Math.round(uplink.portUtilisationPercent * 100) / 100,
        },
      ],
    },
  };
}

export class UplinkStatusReporter {
  readonly #api: CustomObjectsApi;
  readonly #last = new Map<string, string>();

  constructor(kubeConfig: KubeConfig) {
    this.#api = kubeConfig.makeApiClient(CustomObjectsApi);
  }

  /** Applies the entries that changed since the last report; an uplink that is gone is skipped. */
  async report(report: AgentReport): Promise<void> {
    for (const uplink of report.uplinks) {
      const body = uplinkStatusPatch(report, uplink);
      const text = JSON.stringify(body);
      if (this.#last.get(uplink.name) === text) continue;
      if (await applyStatus(this.#api, uplinkDefinition.plural, body, reportFieldManager(report.node)))
        this.#last.set(uplink.name, text);
    }
  }
}

/**
 * Server-side applies `body` (an object of one of naat's cluster-scoped kinds, with only the status
 * fields this manager owns) to its status subresource. Fields the manager applied before and left
 * out now are removed. Resolves false when the object does not exist.
 */
export async function applyStatus(
  api: CustomObjectsApi,
  plural: string,
  body: { metadata: { name: string } },
  fieldManager: string,
): Promise<boolean> {
  try {
    await api.patchClusterCustomObjectStatus(
      { group, version, plural, name: body.metadata.name, body, fieldManager, force: true },
      setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
    );
    return true;
  } catch (error) {
    if ((error as { code?: number }).code === 404) return false;
    throw error;
  }
}
