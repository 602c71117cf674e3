// A TCP connect from the uplink's address: healthy when the handshake completes in time.
import { connect } from 'node:net';
import { performance } from 'node:perf_hooks';
import { settle, type ProtocolProbe } from './protocol.ts';

export const tcpProbe: ProtocolProbe = (request, family) =>
  new Promise((resolve) => {
    const started = performance.now();
    const socket = connect({
      host: request.target,
      port: request.port ?? 0,
      localAddress: request.sourceAddress,
      family,
    });
    const done = settle(request, resolve, () => socket.destroy());
    socket.on('connect', () => done({ ok: true, rttMs: performance.now() - started }));
    socket.on('error', (error) => done({ ok: false, error: error.message }));
  });
