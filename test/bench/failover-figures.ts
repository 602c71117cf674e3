// The figures of one failover, pure, from what the pods saw (programs/failover-probe.ts and the
// long-lived transfers) and when the harness caused the fault: shared by the failover tests, which
// assert bounds on them, and `npm run bench:failover`, which prints their percentiles.

export interface ProbeOutput {
  /** [startedMs, endedMs, seen]: seen is "address port" as the server saw it, "" on failure. */
  attempts: Array<[number, number, string]>;
  udp: { sent: number; answers: number[]; sources: Record<string, number> };
}

export interface FailoverFigures {
  /**
   * From the fault to the first new connection that succeeded among those started after it, in
   * ms; undefined when none did.
   */
  newConnectionGapMs?: number;
  /** Connections started after the fault that failed before the first success. */
  failedAfterFault: number;
  /** The longest time without a UDP answer across the fault (ms); the stream answers every few ms. */
  udpGapMs: number;
  /** UDP datagrams sent and answered. */
  udpSent: number;
  udpAnswered: number;
  /** Distinct sources the server saw for the UDP stream: one when its translation survived. */
  udpSources: string[];
  /** Sources the server saw for new connections after the fault (address part only). */
  newConnectionSources: string[];
}

export function failoverFigures(probe: ProbeOutput, faultMs: number): FailoverFigures {
  const after = probe.attempts.filter(([started]) => started >= faultMs).sort((a, b) => a[1] - b[1]);
  const firstSuccess = after.find(([, , seen]) => seen !== '');
  const failedAfterFault = firstSuccess
    ? after.filter((a) => a[2] === '' && a[1] < firstSuccess[1]).length
    : after.length;
  return {
    ...(firstSuccess ? { newConnectionGapMs: Math.max(0, firstSuccess[1] - faultMs) } : {}),
    failedAfterFault,
    udpGapMs: longestGapAround(probe.udp.answers, faultMs),
    udpSent: probe.udp.sent,
    udpAnswered: probe.udp.answers.length,
    udpSources: Object.keys(probe.udp.sources).sort(),
    newConnectionSources: [...new Set(after.filter(([, , s]) => s).map(([, , s]) => s.split(' ')[0]!))].sort(),
  };
}

/**
 * The longest interval between consecutive answers that ends after the fault (the gap the fault
 * caused, or the normal spacing when it caused none); an answer-less tail after the fault counts
 * up to the last answer's absence, which shows as Infinity.
 */
function longestGapAround(answers: readonly number[], faultMs: number): number {
  const sorted = [...answers].sort((a, b) => a - b);
  const lastBefore = sorted.filter((t) => t < faultMs).at(-1);
  const after = sorted.filter((t) => t >= faultMs);
  if (!after.length) return Infinity;
  let longest = lastBefore === undefined ? 0 : after[0]! - lastBefore;
  for (let i = 1; i < after.length; i++) longest = Math.max(longest, after[i]! - after[i - 1]!);
  return Math.round(longest * 10) / 10;
}
