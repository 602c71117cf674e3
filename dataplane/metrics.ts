// The agent's metrics, for /metrics: gauges set from its report at each scrape, and counters and
// histograms it adds to as flows start and end, associations arrive and rulesets are applied.
import type { AgentReport } from './agent-report.ts';
import type { ConntrackStats } from './conntrack.ts';
import { Counter, Gauge, Histogram, LabelLimit, Registry } from '../common/index.ts';

/** How many distinct applications get a label value of their own; the rest count as `other`. */
export const applicationLabelLimit = 100;

/** The agent's bounded tables, which count what they drop themselves (FlowTable, AttributionStore). */
export interface BoundedTables {
  flows: { readonly dropped: number };
  attributions: { readonly dropped: number; readonly size: number };
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly #applications: LabelLimit;
  readonly #tables: BoundedTables;
  /** The kernel's conntrack counters as the last report read them. */
  #conntrack: ConntrackStats | undefined;

  // From the report.
  readonly uplinkHealthy = this.registry.add(
    new Gauge({
      name: 'naat_uplink_healthy',
      help: 'Whether the uplink passes its health check on this node.',
      labelNames: ['uplink'],
    }),
  );
  readonly uplinkLatency = this.registry.add(
    new Gauge({
      name: 'naat_uplink_latency_ms',
      help: 'Mean probe round-trip time of the last round.',
      labelNames: ['uplink'],
    }),
  );
  readonly uplinkLoss = this.registry.add(
    new Gauge({
      name: 'naat_uplink_loss_percent',
      help: 'Share of unanswered probes in the last round.',
      labelNames: ['uplink'],
    }),
  );
  readonly uplinkActiveFlows = this.registry.add(
    new Gauge({ name: 'naat_uplink_active_flows', help: 'Flows leaving through the uplink.', labelNames: ['uplink'] }),
  );
  readonly uplinkPortUtilisation = this.registry.add(
    new Gauge({
      name: 'naat_uplink_snat_port_utilisation_percent',
      help: 'Highest share of the SNAT port range in use for one address and destination.',
      labelNames: ['uplink'],
    }),
  );
  readonly flows = this.registry.add(new Gauge({ name: 'naat_flows', help: 'Flows in the flow table.' }));
  readonly associations = this.registry.add(
    new Gauge({ name: 'naat_associations', help: 'Flows whose application is known.' }),
  );
  readonly lastApplyDuration = this.registry.add(
    new Gauge({
      name: 'naat_ruleset_apply_duration_ms',
      help: 'Duration of the last kernel sync.',
      labelNames: ['full'],
    }),
  );
  readonly lastApplyFailed = this.registry.add(
    new Gauge({ name: 'naat_ruleset_apply_failed', help: 'Whether the last kernel sync failed.' }),
  );

  readonly conntrackEntries = this.registry.add(
    new Gauge({
      name: 'naat_conntrack_entries',
      help: 'Entries in the conntrack table of the node (nf_conntrack_count).',
    }),
  );
  readonly conntrackUtilisation = this.registry.add(
    new Gauge({
      name: 'naat_conntrack_utilisation_ratio',
      help: 'Conntrack entries as a share of nf_conntrack_max: past 1 the kernel drops new flows it cannot make room for.',
    }),
  );
  readonly conntrackDropped = this.registry.add(
    new Counter({
      name: 'naat_conntrack_dropped_total',
      help: 'Packets the kernel dropped because the conntrack table was full (since the node started).',
      collect: () => (this.#conntrack ? [[{}, this.#conntrack.dropped]] : []),
    }),
  );
  readonly conntrackInsertFailed = this.registry.add(
    new Counter({
      name: 'naat_conntrack_insert_failed_total',
      help: 'Flows that failed to enter the conntrack table (since the node started), among them new flows that found no free SNAT port.',
      collect: () => (this.#conntrack ? [[{}, this.#conntrack.insertFailed]] : []),
    }),
  );

  // Counted as things happen.
  readonly newFlows = this.registry.add(
    new Counter({
      name: 'naat_uplink_new_flows_total',
      help: 'Flows that started through the uplink (conntrack NEW events); rate() is new flows per second.',
      labelNames: ['uplink'],
    }),
  );
  readonly bytes = this.registry.add(
    new Counter({
      name: 'naat_uplink_bytes_total',
      help: 'Bytes of the flows through the uplink, sent (pod to destination) or received, counted when each flow ends (open flows are not counted yet); needs nf_conntrack_acct.',
      labelNames: ['uplink', 'direction'],
    }),
  );
  readonly applicationFlows = this.registry.add(
    new Counter({
      name: 'naat_application_flows_total',
      help: `Flows the gateway decided once their application was known (process name; the first ${applicationLabelLimit} distinct names, later ones as "other"), by verdict.`,
      labelNames: ['application', 'verdict'],
    }),
  );
  readonly applicationDenials = this.registry.add(
    new Counter({
      name: 'naat_application_denials_total',
      help: `Flows denied because of their application (process name; the first ${applicationLabelLimit} distinct names, later ones as "other"): dropped at their first packet, or ended when the association arrived late.`,
      labelNames: ['application'],
    }),
  );
  readonly associationLatency = this.registry.add(
    new Histogram({
      name: 'naat_association_latency_seconds',
      help: 'From the sidecar observing a socket to its association being applied in the kernel.',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    }),
  );
  readonly applyDuration = this.registry.add(
    new Histogram({
      name: 'naat_ruleset_apply_duration_seconds',
      help: 'Duration of each nftables transaction of a sync: the whole table (full="true") or only association elements.',
      labelNames: ['full'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    }),
  );
  readonly applyFailures = this.registry.add(
    new Counter({ name: 'naat_ruleset_apply_failures_total', help: 'Kernel syncs that failed.' }),
  );
  // Kept by the bounded tables.
  readonly flowTableDropped = this.registry.add(
    new Counter({
      name: 'naat_flow_table_dropped_total',
      help: 'Flows forgotten by the flow table because it was full (the oldest go first).',
      collect: () => [[{}, this.#tables.flows.dropped]],
    }),
  );
  readonly attributionDropped = this.registry.add(
    new Counter({
      name: 'naat_attribution_records_dropped_total',
      help: 'Attribution records dropped before their age to stay within --attribution-records.',
      collect: () => [[{}, this.#tables.attributions.dropped]],
    }),
  );
  readonly attributionRecords = this.registry.add(
    new Gauge({
      name: 'naat_attribution_records',
      help: 'Attribution records held, open and ended.',
      collect: () => [[{}, this.#tables.attributions.size]],
    }),
  );

  constructor(tables: BoundedTables, applications = applicationLabelLimit) {
    this.#tables = tables;
    this.#applications = new LabelLimit(applications);
  }

  /** The label value of an application: its process name, within the limit. */
  application(processName: string): string {
    return this.#applications.get(processName || 'unknown');
  }

  /** Sets the gauges from the report and renders everything. */
  render(report: AgentReport): string {
    for (const gauge of [
      this.uplinkHealthy,
      this.uplinkLatency,
      this.uplinkLoss,
      this.uplinkActiveFlows,
      this.uplinkPortUtilisation,
      this.lastApplyDuration,
    ])
      gauge.clear();
    for (const u of report.uplinks) {
      const uplink = { uplink: u.name };
      this.uplinkHealthy.set(uplink, u.healthy ? 1 : 0);
      if (u.latencyMs !== undefined) this.uplinkLatency.set(uplink, u.latencyMs);
      if (u.lossPercent !== undefined) this.uplinkLoss.set(uplink, u.lossPercent);
      this.uplinkActiveFlows.set(uplink, u.activeFlows);
      this.uplinkPortUtilisation.set(uplink, u.portUtilisationPercent);
    }
    this.flows.set({}, report.flows);
    this.associations.set({}, report.associations);
    if (report.lastSync) this.lastApplyDuration.set({ full: String(report.lastSync.full) }, report.lastSync.durationMs);
    this.lastApplyFailed.set({}, report.lastSync?.error ? 1 : 0);
    this.conntrackEntries.clear();
    this.conntrackUtilisation.clear();
    this.#conntrack = report.conntrack;
    if (report.conntrack) {
      const { entries, max } = report.conntrack;
      this.conntrackEntries.set({}, entries);
      if (max > 0) this.conntrackUtilisation.set({}, entries / max);
    }
    return this.registry.render();
  }
}
