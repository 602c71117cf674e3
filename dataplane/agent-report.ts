// Each node's view of its uplinks and of the kernel state the agent keeps: /status, the metrics'
// gauges and the Uplink status all read it.
import type { CompiledUplink } from '../contracts/gateway/index.ts';
import type { ConntrackStats } from './conntrack.ts';

export interface UplinkReport {
  name: string;
  id: number;
  interface: string;
  healthy: boolean;
  since: string;
  latencyMs?: number;
  lossPercent?: number;
  activeFlows: number;
  portUtilisationPercent: number;
}

export interface AgentReport {
  node: string;
  gateway?: string;
  /** Hash of the config the kernel holds now; absent before the first successful sync. */
  appliedHash?: string;
  lastSync?: { at: string; durationMs: number; full: boolean; error?: string };
  uplinks: UplinkReport[];
  flows: number;
  associations: number;
  /** The node's conntrack table: how full, and what the kernel dropped for want of room or ports. */
  conntrack?: ConntrackStats;
  /** The failover addresses this node holds now (claimed and announced), sorted; absent without failover. */
  failoverAddresses?: string[];
}

export interface UplinkHealthState {
  healthy: boolean;
  since: Date;
  latencyMs?: number;
  lossPercent?: number;
}

/** The state an agent's report is made of. */
export interface ReportInput extends Omit<AgentReport, 'uplinks'> {
  uplinks: readonly CompiledUplink[];
  ids: ReadonlyMap<string, number>;
  health: ReadonlyMap<string, UplinkHealthState>;
  /** Active flows per uplink id. */
  active: ReadonlyMap<number, number>;
  /** Per uplink id, the most flows that share one translated address and destination. */
  busiest: ReadonlyMap<number, number>;
}

/** The report; an uplink without a health state counts as healthy since the epoch. */
export function renderReport(input: ReportInput): AgentReport {
  const { node, gateway, appliedHash, lastSync, uplinks, ids, health, active, busiest, conntrack } = input;
  return {
    node,
    ...(gateway !== undefined ? { gateway } : {}),
    ...(appliedHash ? { appliedHash } : {}),
    ...(lastSync ? { lastSync } : {}),
    uplinks: uplinks.map((u) => {
      const id = ids.get(u.name) ?? 0;
      const state = health.get(u.name);
      const range = u.snat.ports.max - u.snat.ports.min + 1;
      return {
        name: u.name,
        id,
        interface: u.interface,
        healthy: state?.healthy ?? true,
        since: (state?.since ?? new Date(0)).toISOString(),
        ...(state?.latencyMs !== undefined ? { latencyMs: state.latencyMs } : {}),
        ...(state?.lossPercent !== undefined ? { lossPercent: state.lossPercent } : {}),
        activeFlows: active.get(id) ?? 0,
        portUtilisationPercent: Math.min(100, (100 * (busiest.get(id) ?? 0)) / range),
      };
    }),
    flows: input.flows,
    associations: input.associations,
    ...(conntrack ? { conntrack } : {}),
    ...(input.failoverAddresses ? { failoverAddresses: input.failoverAddresses } : {}),
  };
}
