// The health state machine: thresholds with hysteresis, loss and latency limits, and the link.
import {
  initialHealth,
  linkHealth,
  nextHealth,
  type HealthCheck,
  type ProbeRound,
  type UplinkHealth,
} from './health.ts';

const check: HealthCheck = {
  targets: ['192.0.2.1'],
  protocol: 'ICMP',
  intervalMs: 1000,
  timeoutMs: 800,
  failureThreshold: 3,
  successThreshold: 2,
  maxLossPercent: 50,
};
const good: ProbeRound = { answered: 1, sent: 1, meanRttMs: 10 };
const bad: ProbeRound = { answered: 0, sent: 1 };
const t0 = new Date('2025-01-01T00:00:00Z');
const at = (seconds: number) => new Date(t0.getTime() + seconds * 1000);

/** Applies rounds one a second from t0 + 1 s and returns the healthy flag after each. */
function run(state: UplinkHealth, rounds: ProbeRound[], c: HealthCheck = check) {
  const flags: boolean[] = [];
  rounds.forEach((round, i) => {
    state = nextHealth(state, round, c, at(i + 1));
    flags.push(state.healthy);
  });
  return { state, flags };
}

describe('nextHealth', () => {
  test('an uplink starts healthy with its link assumed up', () => {
    expect(initialHealth(t0)).toEqual({
      healthy: true,
      since: t0,
      linkUp: true,
      consecutiveFailures: 0,
      consecutiveSuccesses: 0,
    });
  });

  test('goes unhealthy after failureThreshold failed rounds and back after successThreshold good ones', () => {
    const { state, flags } = run(initialHealth(t0), [bad, bad, bad, bad, good, good, good]);
    expect(flags).toEqual([true, true, false, false, false, true, true]);
    expect(state).toEqual({
      healthy: true,
      since: at(6),
      linkUp: true,
      consecutiveFailures: 0,
      consecutiveSuccesses: 3,
      latencyMs: 10,
      lossPercent: 0,
    });
    const down = run(initialHealth(t0), [bad, bad, bad]).state;
    expect(down).toMatchObject({ healthy: false, since: at(3), consecutiveFailures: 3, lossPercent: 100 });
    expect(down.latencyMs).toBeUndefined();
  });

  test('rounds that flap faster than the thresholds change nothing', () => {
    const flapping = [bad, bad, good, bad, bad, good, bad, good, bad, bad, good];
    const healthy = run(initialHealth(t0), flapping);
    expect(healthy.flags.every(Boolean)).toBe(true);
    expect(healthy.state.since).toBe(t0);

    const unhealthy = run(run(initialHealth(t0), [bad, bad, bad]).state, [good, bad, good, bad, good, bad, good, bad]);
    expect(unhealthy.flags.some(Boolean)).toBe(false);
    expect(unhealthy.state.since).toEqual(at(3));

    const strict = { ...check, failureThreshold: 1, successThreshold: 1 };
    expect(run(initialHealth(t0), [bad, good, bad, good], strict).flags).toEqual([false, true, false, true]);
  });

  test('a round fails when more than maxLossPercent of its probes are lost', () => {
    const fails = (round: ProbeRound, maxLossPercent: number) =>
      nextHealth(initialHealth(t0), round, { ...check, maxLossPercent, failureThreshold: 1 }, at(1));
    expect(fails({ answered: 1, sent: 2, meanRttMs: 5 }, 50)).toMatchObject({ healthy: true, lossPercent: 50 });
    expect(fails({ answered: 1, sent: 3, meanRttMs: 5 }, 50).healthy).toBe(false);
    expect(fails({ answered: 1, sent: 3, meanRttMs: 5 }, 50).lossPercent).toBeCloseTo(66.67, 1);
    expect(fails({ answered: 3, sent: 4, meanRttMs: 5 }, 0).healthy).toBe(false);
    expect(fails({ answered: 4, sent: 4, meanRttMs: 5 }, 0).healthy).toBe(true);
    expect(fails({ answered: 0, sent: 4 }, 100)).toMatchObject({ healthy: true, lossPercent: 100 });
    // A round that could send nothing proves nothing.
    expect(fails({ answered: 0, sent: 0 }, 99)).toMatchObject({ healthy: false, lossPercent: 100 });
  });

  test('a round fails when the mean RTT of its answered probes exceeds maxLatencyMs', () => {
    const limited = { ...check, maxLatencyMs: 100, failureThreshold: 1 };
    const after = (meanRttMs: number | undefined, c: HealthCheck = limited) =>
      nextHealth(initialHealth(t0), { answered: 2, sent: 2, meanRttMs }, c, at(1));
    expect(after(100)).toMatchObject({ healthy: true, latencyMs: 100 });
    expect(after(100.5)).toMatchObject({ healthy: false, latencyMs: 100.5 });
    expect(after(5000, { ...check, failureThreshold: 1 }).healthy).toBe(true);
    // Slow answers count against the uplink like lost ones: three slow rounds take it out.
    const slow: ProbeRound = { answered: 1, sent: 1, meanRttMs: 250 };
    expect(run(initialHealth(t0), [slow, slow, slow, good, good], { ...check, maxLatencyMs: 100 }).flags).toEqual([
      true,
      true,
      false,
      false,
      true,
    ]);
  });
});

describe('linkHealth', () => {
  test('a link that goes down makes the uplink unhealthy at once; back up, it must pass the check again', () => {
    let state = linkHealth(initialHealth(t0), false, check, at(1));
    expect(state).toMatchObject({ healthy: false, linkUp: false, since: at(1) });
    // Probes that are answered anyway (the route fell through to another path) do not count.
    state = run(state, [good, good, good]).state;
    expect(state).toMatchObject({ healthy: false, consecutiveSuccesses: 0, consecutiveFailures: 3 });
    state = linkHealth(state, true, check, at(5));
    expect(state).toMatchObject({ healthy: false, linkUp: true, since: at(1) });
    const back = run(state, [good, good]);
    expect(back.flags).toEqual([false, true]);
  });

  test('an uplink without a health check is healthy exactly while its link is up', () => {
    let state = initialHealth(t0);
    const seen: boolean[] = [];
    for (const [i, up] of [true, false, false, true, true, false].entries()) {
      state = linkHealth(state, up, undefined, at(i));
      seen.push(state.healthy);
    }
    expect(seen).toEqual([true, false, false, true, true, false]);
    expect(state.since).toEqual(at(5));
    // Rounds without a check change nothing but follow the link.
    expect(nextHealth(state, good, undefined, at(9))).toBe(state);
    const up = linkHealth(state, true, undefined, at(10));
    expect(nextHealth(up, bad, undefined, at(11))).toMatchObject({ healthy: true, since: at(10) });
  });

  test('a look that changes nothing returns the same state', () => {
    const state = initialHealth(t0);
    expect(linkHealth(state, true, check, at(1))).toBe(state);
    const down = linkHealth(state, false, check, at(1));
    expect(linkHealth(down, false, check, at(2))).toBe(down);
  });
});
