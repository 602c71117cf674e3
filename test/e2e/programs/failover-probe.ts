// What a pod sees of a failover: new TCP connections opened one after another and a UDP stream
// numbered every few milliseconds, both to a whoami server (programs/whoami.ts), which answers
// with the address and port it saw.
//
// Usage: node failover-probe.ts <address> <port> <connectEveryMs> <datagramEveryMs> <connectTimeoutMs>
// Runs until stdin ends, then prints one JSON line: every connection attempt as
// [startedMs, endedMs, seen] (seen: "address port" the server saw, or "" when it failed), and the
// UDP stream as the times its answers arrived and the sources the server saw. Times are
// milliseconds on the machine's clock (performance.timeOrigin + performance.now()), which every
// namespace shares, so a harness can put them beside the moment it caused a fault.
import { createSocket } from 'node:dgram';
import { connect, isIPv6 } from 'node:net';

const [address = '', ...numbers] = process.argv.slice(2);
const [port = 0, connectEveryMs = 10, datagramEveryMs = 1, connectTimeoutMs = 1000] = numbers.map(Number);
const now = () => performance.timeOrigin + performance.now();

const attempts: Array<[number, number, string]> = [];
let open = 0;
function attempt(): void {
  const started = now();
  let seen = '';
  open++;
  const socket = connect({ host: address, port });
  socket.setEncoding('utf8');
  socket.setTimeout(connectTimeoutMs, () => socket.destroy());
  socket.on('data', (data: string) => (seen += data));
  socket.on('error', () => (seen = ''));
  socket.on('close', () => {
    open--;
    attempts.push([Math.round(started * 10) / 10, Math.round(now() * 10) / 10, seen.trim()]);
  });
}

const udp = createSocket(isIPv6(address) ? 'udp6' : 'udp4');
let sent = 0;
const answers: number[] = [];
const sources = new Map<string, number>();
udp.on('message', (message) => {
  answers.push(Math.round(now() * 10) / 10);
  const seen = message.toString().trim();
  sources.set(seen, (sources.get(seen) ?? 0) + 1);
});
udp.on('error', () => {});

const connecting = setInterval(attempt, connectEveryMs);
const sending = setInterval(() => udp.send(String(sent++), port, address), datagramEveryMs);

process.stdin.resume();
process.stdin.on('end', async () => {
  clearInterval(connecting);
  clearInterval(sending);
  // The last answers and attempts settle.
  while (open > 0) await new Promise((resolve) => setTimeout(resolve, 20));
  await new Promise((resolve) => setTimeout(resolve, 200));
  udp.close();
  // Written whole before the process ends: a pipe takes a long line in several writes.
  const result = JSON.stringify({ attempts, udp: { sent, answers, sources: Object.fromEntries(sources) } });
  process.stdout.write(`${result}\n`, () => process.exit(0));
});
console.log('probing');
