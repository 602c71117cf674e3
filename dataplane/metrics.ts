// The agent's metrics, for /metrics: gauges set from its report at each scrape, counters read from
// the kernel and the bounded tables at each scrape, and counters and histograms it adds to as flows
// start and end, associations arrive and rulesets are applied. Names follow Prometheus's
// conventions: base units (seconds, bytes), ratios from 0 to 1, `_total` on counters.
import type { AgentReport } from './agent-report.ts';
import type { ConntrackStats } from './conntrack.ts';
import { newFlowsCounter } from './render.ts';
import { Counter, Gauge, Histogram, LabelLimit, readAtScrape, Registry } from '../common/metrics/index.ts';

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
  /** New flows per uplink, from the kernel's counters at the last render. */
  #newFlows: Array<[{ uplink: string }, number]> = [];
  readonly #registers = [this.registry];

  // From the report.
  readonly uplinkHealthy = new Gauge({
    name: 'naat_uplink_healthy',
    help: 'Whether the uplink passes its health check on this node (without a check: whether its link is up), 1 or 0.',
    labelNames: ['uplink'],
    registers: this.#registers,
  });
  readonly uplinkLatency = new Gauge({
    name: 'naat_uplink_latency_seconds',
    help: "Mean round-trip time of the answered probes of the uplink's last probe round; absent without a health check or when no probe of the round was answered.",
    labelNames: ['uplink'],
    registers: this.#registers,
  });
  readonly uplinkLoss = new Gauge({
    name: 'naat_uplink_loss_ratio',
    help: "Share of the probes of the uplink's last probe round that were not answered, from 0 to 1; absent without a health check.",
    labelNames: ['uplink'],
    registers: this.#registers,
  });
  readonly uplinkActiveFlows = new Gauge({
    name: 'naat_uplink_active_flows',
    help: 'Flows in the flow table that leave through the uplink.',
    labelNames: ['uplink'],
    registers: this.#registers,
  });
  readonly uplinkPortUtilisation = new Gauge({
    name: 'naat_uplink_snat_port_utilisation_ratio',
    help: "The most flows that share one translated address and one destination address and port, as a share of the uplink's SNAT port range, from 0 to 1: at 1 a new flow to that destination finds no port.",
    labelNames: ['uplink'],
    registers: this.#registers,
  });
  readonly flows = new Gauge({
    name: 'naat_flows',
    help: 'Flows in the flow table (conntrack flows leaving through an uplink; bounded, the oldest forgotten first).',
    registers: this.#registers,
  });
  readonly associations = new Gauge({
    name: 'naat_associations',
    help: 'Flows whose application a sidecar reported (associations held).',
    registers: this.#registers,
  });
  readonly lastApplyDuration = new Gauge({
    name: 'naat_ruleset_last_apply_duration_seconds',
    help: 'Duration of the last sync of the kernel (ruleset, routes and settings): of the whole table (full="true") or of what changed only.',
    labelNames: ['full'],
    registers: this.#registers,
  });
  readonly lastApplyFailed = new Gauge({
    name: 'naat_ruleset_apply_failed',
    help: 'Whether the last sync of the kernel failed, 1 or 0.',
    registers: this.#registers,
  });
  readonly conntrackEntries = new Gauge({
    name: 'naat_conntrack_entries',
    help: "Entries in the conntrack table of the agent's network namespace (nf_conntrack_count).",
    registers: this.#registers,
  });
  readonly conntrackUtilisation = new Gauge({
    name: 'naat_conntrack_utilisation_ratio',
    help: "Conntrack entries as a share of nf_conntrack_max (the host's), from 0 to 1: at 1 the kernel drops new flows it cannot make room for.",
    registers: this.#registers,
  });

  // Read from the kernel at each scrape.
  readonly conntrackDropped = new Counter({
    name: 'naat_conntrack_dropped_total',
    help: 'Packets conntrack dropped since the node started (the drop column of /proc/net/stat/nf_conntrack): with the table full and no entry to evict, or when a new flow could not enter the table (naat_conntrack_insert_failed_total), as when it found no free SNAT port.',
    collect: readAtScrape(() => (this.#conntrack ? [[{}, this.#conntrack.dropped]] : [])),
    registers: this.#registers,
  });
  readonly conntrackInsertFailed = new Counter({
    name: 'naat_conntrack_insert_failed_total',
    help: 'New flows that failed to enter the conntrack table since the node started (the insert_failed column of /proc/net/stat/nf_conntrack), among them those that found no free SNAT port.',
    collect: readAtScrape(() => (this.#conntrack ? [[{}, this.#conntrack.insertFailed]] : [])),
    registers: this.#registers,
  });
  readonly newFlows = new Counter({
    name: 'naat_uplink_new_flows_total',
    help: "Flows placed on the uplink, counted by a counter of naat's ruleset in the kernel since the table was made; rate() is new flows per second.",
    labelNames: ['uplink'],
    collect: readAtScrape(() => this.#newFlows),
    registers: this.#registers,
  });

  // Counted as things happen.
  readonly bytes = new Counter({
    name: 'naat_uplink_bytes_total',
    help: "Bytes of the flows through the uplink, sent (pod to destination) or received, added when each flow ends (an open flow's bytes are not in yet); they stay 0 without nf_conntrack_acct.",
    labelNames: ['uplink', 'direction'],
    registers: this.#registers,
  });
  readonly applicationFlows = new Counter({
    name: 'naat_application_flows_total',
    help: `Flows the gateway decided once their application was known (process name; the first ${applicationLabelLimit} distinct names, later ones as "other"), by verdict: Allow (through an uplink) or Deny.`,
    labelNames: ['application', 'verdict'],
    registers: this.#registers,
  });
  readonly applicationDenials = new Counter({
    name: 'naat_application_denials_total',
    help: `Flows denied because of their application (process name; the first ${applicationLabelLimit} distinct names, later ones as "other"): dropped at their first packet, or ended when the association arrived late.`,
    labelNames: ['application'],
    registers: this.#registers,
  });
  readonly associationLatency = new Histogram({
    name: 'naat_association_latency_seconds',
    help: 'From a sidecar observing a socket to its association being applied in the kernel.',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: this.#registers,
  });
  readonly applyDuration = new Histogram({
    name: 'naat_ruleset_apply_duration_seconds',
    help: 'Duration of each nftables transaction of a sync: of the whole table (full="true") or of what changed only.',
    labelNames: ['full'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: this.#registers,
  });
  readonly failoverClaims = new Counter({
    name: 'naat_failover_claims_total',
    help: 'Failover addresses this node claimed, by reason: LeaseExpired (its owner stopped renewing), Released (its owner gave it up), Failback (given back to the preferred node) or Unowned (no owner known).',
    labelNames: ['address', 'reason'],
    registers: this.#registers,
  });
  readonly failoverReleases = new Counter({
    name: 'naat_failover_releases_total',
    help: 'Failover addresses this node gave up, by reason: drain, uplink (its uplink failed), fence (the apiserver out of reach while other gateway nodes reach it), failback, conflict (two owners after a partition) or removed (no longer in the config).',
    labelNames: ['address', 'reason'],
    registers: this.#registers,
  });
  readonly failoverGap = new Histogram({
    name: 'naat_failover_gap_seconds',
    help: "How long a failover address this node claimed had no owner, as this node measured it: from the previous owner's release, or from its Lease's last renewal when it expired; by the claim's reason.",
    labelNames: ['reason'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: this.#registers,
  });
  readonly applyFailures = new Counter({
    name: 'naat_ruleset_apply_failures_total',
    help: 'Syncs of the kernel that failed.',
    registers: this.#registers,
  });

  // Kept by the bounded tables, read at each scrape.
  readonly flowTableDropped = new Counter({
    name: 'naat_flow_table_dropped_total',
    help: 'Flows forgotten by the flow table because it was full (the oldest go first).',
    collect: readAtScrape(() => [[{}, this.#tables.flows.dropped]]),
    registers: this.#registers,
  });
  readonly attributionDropped = new Counter({
    name: 'naat_attribution_records_dropped_total',
    help: 'Attribution records dropped before their age to stay within --attribution-records.',
    collect: readAtScrape(() => [[{}, this.#tables.attributions.dropped]]),
    registers: this.#registers,
  });
  readonly attributionRecords = new Gauge({
    name: 'naat_attribution_records',
    help: 'Attribution records held, of open and ended flows.',
    collect: readAtScrape(() => [[{}, this.#tables.attributions.size]]),
    registers: this.#registers,
  });

  constructor(tables: BoundedTables, applications = applicationLabelLimit) {
    this.#tables = tables;
    this.#applications = new LabelLimit(applications);
  }

  /** The label value of an application: its process name, within the limit. */
  application(processName: string): string {
    return this.#applications.get(processName || 'unknown');
  }

  /**
   * Sets the gauges from the report and renders everything in the text format. `counters` holds
   * the packets of the ruleset's named counters by name; without them the kernel's counts are left out.
   */
  render(report: AgentReport, counters?: ReadonlyMap<string, number>): Promise<string> {
    this.#newFlows = report.uplinks.flatMap((u): Array<[{ uplink: string }, number]> => {
      const count = counters?.get(newFlowsCounter(u.name));
      return count === undefined ? [] : [[{ uplink: u.name }, count]];
    });
    for (const gauge of [
      this.uplinkHealthy,
      this.uplinkLatency,
      this.uplinkLoss,
      this.uplinkActiveFlows,
      this.uplinkPortUtilisation,
      this.lastApplyDuration,
      this.conntrackEntries,
      this.conntrackUtilisation,
    ])
      gauge.reset();
    for (const u of report.uplinks) {
      const uplink = { uplink: u.name };
      this.uplinkHealthy.set(uplink, u.healthy ? 1 : 0);
      if (u.latencyMs !== undefined) this.uplinkLatency.set(uplink, u.latencyMs / 1000);
      if (u.lossPercent !== undefined) this.uplinkLoss.set(uplink, u.lossPercent / 100);
      this.uplinkActiveFlows.set(uplink, u.activeFlows);
      this.uplinkPortUtilisation.set(uplink, u.portUtilisationPercent / 100);
    }
    this.flows.set(report.flows);
    this.associations.set(report.associations);
    if (report.lastSync)
      this.lastApplyDuration.set({ full: String(report.lastSync.full) }, report.lastSync.durationMs / 1000);
    this.lastApplyFailed.set(report.lastSync?.error ? 1 : 0);
    this.#conntrack = report.conntrack;
    if (report.conntrack) {
      const { entries, max } = report.conntrack;
      this.conntrackEntries.set(entries);
      if (max > 0) this.conntrackUtilisation.set(entries / max);
    }
    return this.registry.metrics();
  }
}
