// ICMP echo through iputils ping (Node has no raw sockets), bound to the uplink's address.
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { settle, type ProtocolProbe } from './protocol.ts';

/** The RTT of the first echo reply in iputils ping output (`... time=0.620 ms`). */
export function parsePingRtt(output: string): number | undefined {
  const match = /\btime[=<]\s*([\d.]+)\s*ms/.exec(output);
  return match ? Number(match[1]) : undefined;
}

export const icmpProbe: ProtocolProbe = (request, family, options) => {
  // iputils ping takes -W in seconds with a fraction (20221126 here); -W 0 means its default.
  const seconds = Math.max(request.timeoutMs / 1000, 0.001).toFixed(3);
  const args = [`-${family}`, '-n', '-c', '1', '-W', seconds, '-I', request.sourceAddress, request.target];
  return new Promise((resolve) => {
    const started = performance.now();
    const child = spawn(options.ping ?? 'ping', args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const done = settle(request, resolve, () => child.kill('SIGKILL'), 250);
    child.on('error', (error) => done({ ok: false, error: `ping: ${error.message}` }));
    child.on('close', (code) => {
      // Exit status 0 means a reply came; a reply later than the timeout counts as none.
      const rttMs = parsePingRtt(stdout) ?? performance.now() - started;
      if (code === 0 && rttMs <= request.timeoutMs) done({ ok: true, rttMs });
      else done({ ok: false, error: stderr.trim() || `no echo reply within ${request.timeoutMs}ms` });
    });
  });
};
