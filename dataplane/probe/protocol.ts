// A probe of one target through one uplink: the one interface every protocol (icmp.ts, tcp.ts,
// http.ts) implements, and the bound on its time that they share.
import type { HealthCheck } from './health.ts';

export interface ProbeRequest {
  protocol: HealthCheck['protocol'];
  target: string;
  /** TCP and HTTP; HTTP uses 80 when it is omitted. */
  port?: number;
  /** HTTP request path; / when omitted. */
  path?: string;
  /** Bound as the probe's source, so the uplink's policy-routing rule sends it out the uplink. */
  sourceAddress: string;
  timeoutMs: number;
  /** Aborting ends the probe at once with ok false. */
  signal?: AbortSignal;
}

export interface ProbeResult {
  ok: boolean;
  rttMs?: number;
  error?: string;
}

export interface Prober {
  probe(request: ProbeRequest): Promise<ProbeResult>;
}

/** One protocol's probe: `request` is checked (addresses of one family, not aborted) before it runs. */
export type ProtocolProbe = (request: ProbeRequest, family: 4 | 6, options: ProbeOptions) => Promise<ProbeResult>;

/** How this host probes. */
export interface ProbeOptions {
  /** The ping program ICMP probes run. */
  ping?: string;
}

/**
 * Bounds a probe by its timeout (plus `graceMs` for a program that enforces it itself) and its
 * abort signal; the first result wins and `cleanup` releases the socket or process.
 */
export function settle(
  request: Pick<ProbeRequest, 'timeoutMs' | 'signal'>,
  resolve: (result: ProbeResult) => void,
  cleanup: () => void,
  graceMs = 0,
): (result: ProbeResult) => void {
  let settled = false;
  const onAbort = () => done({ ok: false, error: 'aborted' });
  const timer = setTimeout(
    () => done({ ok: false, error: `no answer within ${request.timeoutMs}ms` }),
    request.timeoutMs + graceMs,
  );
  request.signal?.addEventListener('abort', onAbort, { once: true });
  function done(result: ProbeResult) {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    request.signal?.removeEventListener('abort', onAbort);
    cleanup();
    resolve(result);
  }
  return done;
}
