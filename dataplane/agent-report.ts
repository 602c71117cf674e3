// What the agent reports of its node: the /status document, the source of the gauges on /metrics
// and of each Uplink's per-node status. Types only, so that the agent, its metrics and the status
// reporter all import them without importing each other.
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
}
