// An HTTP GET from the uplink's address: healthy on a 2xx or 3xx answer in time.
import { request as httpRequest } from 'node:http';
import { performance } from 'node:perf_hooks';
import { settle, type ProbeResult, type ProtocolProbe } from './protocol.ts';

export interface HttpCheck {
  host: string;
  port: number;
  path: string;
  family: 4 | 6;
  /** Bound as the request's source; the kernel picks one when omitted. */
  localAddress?: string;
  timeoutMs: number;
  signal?: AbortSignal;
  /** Which answers pass. */
  passes: (status: number) => boolean;
}

/** One GET on a fresh connection, bounded by its timeout and signal; the answer's body is discarded. */
export function httpCheck(check: HttpCheck): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const started = performance.now();
    const req = httpRequest({
      host: check.host,
      port: check.port,
      path: check.path,
      method: 'GET',
      ...(check.localAddress ? { localAddress: check.localAddress } : {}),
      family: check.family,
      agent: false,
      headers: { 'user-agent': 'naat-health-check', connection: 'close' },
    });
    const done = settle(check, resolve, () => req.destroy());
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      res.on('error', () => {});
      res.resume();
      if (check.passes(status)) done({ ok: true, rttMs: performance.now() - started });
      else done({ ok: false, error: `HTTP ${status}` });
    });
    req.on('error', (error) => done({ ok: false, error: error.message }));
    req.end();
  });
}

export const httpProbe: ProtocolProbe = (request, family) =>
  httpCheck({
    host: request.target,
    port: request.port ?? 80,
    path: request.path ?? '/',
    family,
    localAddress: request.sourceAddress,
    timeoutMs: request.timeoutMs,
    ...(request.signal ? { signal: request.signal } : {}),
    passes: (status) => status >= 200 && status < 400,
  });
