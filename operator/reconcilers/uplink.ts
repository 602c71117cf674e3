// An Uplink's status: the summary of what its gateway nodes reported in status.nodes, with an Event
// when its health or its SNAT port supply changes.
import type { KubernetesObject } from '@kubernetes/client-node';
import type { Uplink } from '../../crds/index.ts';
import type { EventRecorder } from '../events.ts';
import type { Informer } from '../../common/kube/index.ts';
import { conditions, uplinkSummary } from '../status.ts';
import type { StatusWriter } from '../status-writer.ts';

export interface UplinkReconcilerOptions {
  uplinks: Pick<Informer<Uplink & KubernetesObject>, 'get'>;
  status: StatusWriter;
  events: EventRecorder;
  now?: () => Date;
}

export class UplinkReconciler {
  readonly #o: UplinkReconcilerOptions;

  constructor(options: UplinkReconcilerOptions) {
    this.#o = options;
  }

  async reconcile(name: string): Promise<void> {
    const { events } = this.#o;
    const uplink = this.#o.uplinks.get(name);
    if (!uplink) return;
    const summary = uplinkSummary(uplink.status);
    const was = uplink.status?.conditions?.find((c) => c.type === 'Ready')?.status;
    if (was !== undefined && was !== summary.ready.status) {
      const healthy = summary.ready.status === 'True';
      await events.record(
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
      await events.record(
        'Uplink',
        uplink,
        summary.ports.status === 'True' ? 'Normal' : 'Warning',
        summary.ports.reason,
        'Ports',
        summary.ports.message,
      );
    }
    await this.#o.status.apply('Uplink', uplink, {
      healthyNodes: summary.healthyNodes,
      activeFlows: summary.activeFlows,
      conditions: conditions(
        uplink.status?.conditions,
        uplink.metadata.generation ?? 0,
        this.#o.now?.() ?? new Date(),
        [summary.ready, summary.ports],
      ),
    });
  }
}
