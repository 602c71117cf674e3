// The agent's report in the Prometheus text format, for /metrics.
import type { AgentReport } from './agent.ts';

export function renderMetrics(report: AgentReport): string {
  const lines: string[] = [];
  const metric = (name: string, help: string, type: 'gauge' | 'counter', samples: Array<[string, number]>) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
  };
  const label = (uplink: string) => `{uplink=${JSON.stringify(uplink)}}`;
  metric(
    'naat_uplink_healthy',
    'Whether the uplink passes its health check on this node.',
    'gauge',
    report.uplinks.map((u) => [label(u.name), u.healthy ? 1 : 0]),
  );
  metric(
    'naat_uplink_latency_ms',
    'Mean probe round-trip time of the last round.',
    'gauge',
    report.uplinks.filter((u) => u.latencyMs !== undefined).map((u) => [label(u.name), u.latencyMs!]),
  );
  metric(
    'naat_uplink_loss_percent',
    'Share of unanswered probes in the last round.',
    'gauge',
    report.uplinks.filter((u) => u.lossPercent !== undefined).map((u) => [label(u.name), u.lossPercent!]),
  );
  metric(
    'naat_uplink_active_flows',
    'Flows leaving through the uplink.',
    'gauge',
    report.uplinks.map((u) => [label(u.name), u.activeFlows]),
  );
  metric(
    'naat_uplink_snat_port_utilisation_percent',
    'Highest share of the SNAT port range in use for one address and destination.',
    'gauge',
    report.uplinks.map((u) => [label(u.name), u.portUtilisationPercent]),
  );
  metric('naat_flows', 'Flows in the flow table.', 'gauge', [['', report.flows]]);
  metric('naat_associations', 'Flows whose application is known.', 'gauge', [['', report.associations]]);
  if (report.lastSync) {
    metric('naat_ruleset_apply_duration_ms', 'Duration of the last kernel sync.', 'gauge', [
      [`{full="${report.lastSync.full}"}`, report.lastSync.durationMs],
    ]);
    metric('naat_ruleset_apply_failed', 'Whether the last kernel sync failed.', 'gauge', [
      ['', report.lastSync.error ? 1 : 0],
    ]);
  }
  return `${lines.join('\n')}\n`;
}
