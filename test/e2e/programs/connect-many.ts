// Asks a whoami server `count` times, each time from a new source port, at most `concurrency` at
// a time, and prints {"answers": [...], "failures": n, "error": "first failure", "seconds": s} as
// JSON, `seconds` from the first ask to the last answer (without Node's start-up, so that rates
// can be measured with it). Over TCP each ask is a connection; over UDP it is a datagram from a
// new socket; with a source port, every ask is sent from it (one at a time).
// Usage: node connect-many.ts tcp|udp <address> <port> <count> <concurrency> <timeoutMs> [sourcePort]
import { createSocket } from 'node:dgram';
import { connect, isIPv6 } from 'node:net';

const [transport, address = '', ...numbers] = process.argv.slice(2);
const [port = 0, count = 0, concurrency = 1, timeoutMs = 0, sourcePort] = numbers.map(Number);

function tcp(): Promise<string> {
  return new Promise((resolve, reject) => {
    let answer = '';
    const socket = connect({ host: address, port, ...(sourcePort ? { localPort: sourcePort } : {}) });
    socket.setEncoding('utf8');
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error('timed out')));
    socket.on('data', (data) => (answer += data));
    socket.on('end', () => resolve(answer.trim()));
    socket.on('error', reject);
  });
}

function udp(): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createSocket(isIPv6(address) ? 'udp6' : 'udp4');
    const finish = (error: Error | null, answer = '') => {
      clearTimeout(timer);
      socket.close();
      if (error) reject(error);
      else resolve(answer.trim());
    };
    const timer = setTimeout(() => finish(new Error('timed out')), timeoutMs);
    socket.once('message', (message) => finish(null, message.toString()));
    socket.once('error', finish);
    if (sourcePort) socket.bind(sourcePort, () => socket.send('?', port, address));
    else socket.send('?', port, address);
  });
}

const answers: string[] = [];
let failures = 0;
let error: string | undefined;
let started = 0;
const ask = transport === 'udp' ? udp : tcp;
async function worker(): Promise<void> {
  while (started < count) {
    started++;
    try {
      const answer = await ask();
      if (!answer) throw new Error('empty answer');
      answers.push(answer);
    } catch (e) {
      failures++;
      error ??= (e as Error).message;
    }
  }
}
const begin = performance.now();
await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
const seconds = (performance.now() - begin) / 1000;
console.log(JSON.stringify({ answers, failures, error, seconds }));
