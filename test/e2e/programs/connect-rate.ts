// Opens `count` TCP connections to a whoami server, at most `concurrency` at a time, each read to
// its end, and prints {"ok": n, "failures": n, "seconds": s, "seen": [...], "error": "..."}: the
// rate measured from the first connect to the last answer (without Node's start-up), and the
// source addresses the server saw.
// Usage: node connect-rate.ts <address> <port> <count> <concurrency> <timeoutMs>
import { connect } from 'node:net';

const [address = '', ...numbers] = process.argv.slice(2);
const [port = 0, count = 0, concurrency = 1, timeoutMs = 0] = numbers.map(Number);

function once(): Promise<string> {
  return new Promise((resolve, reject) => {
    let answer = '';
    const socket = connect({ host: address, port });
    socket.setEncoding('utf8');
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error('timed out')));
    socket.on('data', (data) => (answer += data));
    socket.on('end', () => {
      socket.destroy();
      resolve(answer);
    });
    socket.on('error', reject);
  });
}

const seen = new Set<string>();
let ok = 0;
let failures = 0;
let error: string | undefined;
let started = 0;
async function worker(): Promise<void> {
  while (started < count) {
    started++;
    try {
      const answer = await once();
      if (!answer) throw new Error('empty answer');
      seen.add(answer.split(' ')[0]!);
      ok++;
    } catch (e) {
      failures++;
      error ??= (e as Error).message;
    }
  }
}
const begin = performance.now();
await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
const seconds = (performance.now() - begin) / 1000;
console.log(JSON.stringify({ ok, failures, seconds, seen: [...seen].sort(), error }));
