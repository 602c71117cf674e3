// Uplink health, the pure part: whether new flows may use an uplink on this node, decided from
// probe rounds (loss and latency against the check's limits, thresholds with hysteresis) and the
// interface's carrier. The monitor (monitor.ts) feeds it; nothing here does I/O.
import type { CompiledUplink } from '../../contracts/gateway/index.ts';

export type HealthCheck = NonNullable<CompiledUplink['healthCheck']>;

/** What the agent knows about one uplink on this node. */
export interface UplinkHealth {
  healthy: boolean;
  /** When `healthy` last changed (or when the agent first saw the uplink). */
  since: Date;
  /** Whether the interface was up at the last look; assumed up until the first look. */
  linkUp: boolean;
  consecutiveFailures: number;
  consecutiveSuccesses: number;
  /** Mean round-trip time of the answered probes of the last round. */
  latencyMs?: number;
  /** Share of unanswered probes in the last round. */
  lossPercent?: number;
}

/** The outcome of probing every target of an uplink once. */
export interface ProbeRound {
  answered: number;
  sent: number;
  /** Mean round-trip time of the answered probes. */
  meanRttMs?: number;
}

/**
 * The state of an uplink the agent has not looked at yet: healthy, with its link assumed up.
 * Unknown uplinks start healthy so that a restarted agent does not move established flows: they
 * carry their uplink in the conntrack mark, and an unhealthy uplink's flows are moved to others
 * (and nothing at all may be left if every uplink started unhealthy). A link that is down is seen
 * at the first look, within milliseconds; an uplink that is up but broken is taken out after
 * failureThreshold rounds, as it would be had the agent kept running. The renderer treats an uplink
 * missing from its health map the same way.
 */
export function initialHealth(now: Date = new Date()): UplinkHealth {
  return { healthy: true, since: now, linkUp: true, consecutiveFailures: 0, consecutiveSuccesses: 0 };
}

/** Share of unanswered probes; a round that sent nothing proves nothing and counts as all lost. */
export function lossPercent(round: ProbeRound): number {
  return round.sent > 0 ? (100 * (round.sent - Math.min(round.answered, round.sent))) / round.sent : 100;
}

/** Whether a round fails the check: too many unanswered probes, or answers too slow on average. */
export function roundFailed(round: ProbeRound, check: HealthCheck): boolean {
  if (lossPercent(round) > check.maxLossPercent) return true;
  const latency = round.answered > 0 ? round.meanRttMs : undefined;
  return check.maxLatencyMs !== undefined && latency !== undefined && latency > check.maxLatencyMs;
}

/**
 * The state after a probe round. A healthy uplink turns unhealthy after failureThreshold
 * consecutive failed rounds, an unhealthy one healthy after successThreshold consecutive good
 * rounds; anything that flaps faster changes nothing. While the link is down every round fails and
 * the uplink stays unhealthy. Without a check there are no rounds: the uplink follows its link.
 */
export function nextHealth(
  state: UplinkHealth,
  round: ProbeRound,
  check: HealthCheck | undefined,
  now: Date = new Date(),
): UplinkHealth {
  if (!check) return withHealthy(state, state.linkUp, now);
  const failed = !state.linkUp || roundFailed(round, check);
  const consecutiveFailures = failed ? state.consecutiveFailures + 1 : 0;
  const consecutiveSuccesses = failed ? 0 : state.consecutiveSuccesses + 1;
  let healthy = state.healthy;
  if (!state.linkUp) healthy = false;
  else if (healthy && consecutiveFailures >= check.failureThreshold) healthy = false;
  else if (!healthy && consecutiveSuccesses >= check.successThreshold) healthy = true;
  const next: UplinkHealth = {
    healthy: state.healthy,
    since: state.since,
    linkUp: state.linkUp,
    consecutiveFailures,
    consecutiveSuccesses,
    lossPercent: lossPercent(round),
  };
  if (round.answered > 0 && round.meanRttMs !== undefined) next.latencyMs = round.meanRttMs;
  return withHealthy(next, healthy, now);
}

/**
 * The state after a look at the interface. A link that goes down is certain: the uplink is
 * unhealthy at once, without waiting for thresholds. A link that comes back up makes an uplink
 * without a check healthy at once; one with a check must first pass successThreshold rounds.
 */
export function linkHealth(
  state: UplinkHealth,
  up: boolean,
  check: HealthCheck | undefined,
  now: Date = new Date(),
): UplinkHealth {
  if (!up) {
    if (!state.linkUp && !state.healthy) return state;
    return withHealthy({ ...state, linkUp: false, consecutiveSuccesses: 0 }, false, now);
  }
  const healthy = check ? state.healthy : true;
  if (state.linkUp && healthy === state.healthy) return state;
  return withHealthy({ ...state, linkUp: true }, healthy, now);
}

function withHealthy(state: UplinkHealth, healthy: boolean, now: Date): UplinkHealth {
  return healthy === state.healthy ? state : { ...state, healthy, since: now };
}
