import type { AgentReport } from './agent-report.ts';
import { AgentMetrics } from './metrics.ts';
import { newFlowsCounter } from './render.ts';

const report = (overrides: Partial<AgentReport['uplinks'][number]> = {}): AgentReport => ({
  node: 'gw-1',
  lastSync: { at: '2026-12-04T20:00:00.000Z', durationMs: 40, full: true },
  uplinks: [
    {
      name: 'isp1',
      id: 1,
      interface: 'eth1',
      healthy: true,
      since: '2026-12-04T19:00:00.000Z',
      latencyMs: 12.5,
      lossPercent: 25,
      activeFlows: 8,
      portUtilisationPercent: 80,
      ...overrides,
    },
  ],
  flows: 9,
  associations: 3,
  conntrack: { entries: 50, max: 200, dropped: 3, insertFailed: 2 },
});

const lines = (text: string) => text.split('\n').filter((l) => l && !l.startsWith('#'));

describe('the agent metrics', () => {
  it('give the report in base units and ratios from 0 to 1, and the kernel counters as they are', async () => {
    const metrics = new AgentMetrics({ flows: { dropped: 4 }, attributions: { dropped: 5, size: 6 } });
    const text = await metrics.render(report(), new Map([[newFlowsCounter('isp1'), 11]]));
    expect(lines(text)).toEqual(
      expect.arrayContaining([
        'naat_uplink_healthy{uplink="isp1"} 1',
        'naat_uplink_latency_seconds{uplink="isp1"} 0.0125',
        'naat_uplink_loss_ratio{uplink="isp1"} 0.25',
        'naat_uplink_active_flows{uplink="isp1"} 8',
        'naat_uplink_snat_port_utilisation_ratio{uplink="isp1"} 0.8',
        'naat_uplink_new_flows_total{uplink="isp1"} 11',
        'naat_flows 9',
        'naat_associations 3',
        'naat_ruleset_last_apply_duration_seconds{full="true"} 0.04',
        'naat_ruleset_apply_failed 0',
        'naat_conntrack_entries 50',
        'naat_conntrack_utilisation_ratio 0.25',
        'naat_conntrack_dropped_total 3',
        'naat_conntrack_insert_failed_total 2',
        'naat_flow_table_dropped_total 4',
        'naat_attribution_records_dropped_total 5',
        'naat_attribution_records 6',
      ]),
    );
    expect(text).not.toMatch(/_ms\b|_percent\b/);
  });

  it('read the kernel counters afresh at each scrape, and drop the gauges the report no longer has', async () => {
    const metrics = new AgentMetrics({ flows: { dropped: 0 }, attributions: { dropped: 0, size: 0 } });
    await metrics.render(report(), new Map([[newFlowsCounter('isp1'), 11]]));
    const again = await metrics.render(
      report({ latencyMs: undefined, lossPercent: undefined, healthy: false }),
      new Map([[newFlowsCounter('isp1'), 12]]),
    );
    expect(lines(again)).toEqual(
      expect.arrayContaining([
        'naat_uplink_healthy{uplink="isp1"} 0',
        'naat_uplink_new_flows_total{uplink="isp1"} 12',
        'naat_conntrack_dropped_total 3',
      ]),
    );
    expect(again).not.toMatch(/^naat_uplink_(latency_seconds|loss_ratio)\{/m);
    // Without the ruleset's counters the kernel's count is left out rather than reported as 0.
    expect(await metrics.render(report())).not.toMatch(/^naat_uplink_new_flows_total\{/m);
  });
});
