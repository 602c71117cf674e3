// An HTTP GET from the uplink's address: healthy on a 2xx or 3xx answer in time.
import { request as httpRequest } from 'node:http';
import { performance } from 'node:perf_hooks';
import { settle, type ProtocolProbe } from './protocol.ts';

export const httpProbe: ProtocolProbe = (request, family) =>
  new Promise((resolve) => {
    const started = performance.now();
    const req = httpRequest({
      host: request.target,
      port: request.port ?? 80,
      path: request.path ?? '/',
      method: 'GET',
      localAddress: request.sourceAddress,
      family,
      agent: false,
      headers: { 'user-agent': 'naat-health-check', connection: 'close' },
    });
    const done = settle(request, resolve, () => req.destroy());
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      res.on('error', () => {});
      res.resume();
      if (status >= 200 && status < 400) done({ ok: true, rttMs: performance.now() - started });
      else done({ ok: false, error: `HTTP ${status}` });
    });
    req.on('error', (error) => done({ ok: false, error: error.message }));
    req.end();
  });
