// Replays recorded client bytes to a server, as someone on the network who captured a session:
// connects, sends them all, and prints, as one JSON line, how many bytes came back before the
// server closed the connection (or 5 s passed).
//
// replay.ts <host> <port> <file>
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';

const [host = '', port = '', file = ''] = process.argv.slice(2);
let received = 0;
const socket = connect({ host, port: Number(port) }, () => socket.write(readFileSync(file)));
const report = (closed: boolean) => {
  console.log(JSON.stringify({ received, closed }));
  process.exit(0);
};
socket.on('data', (chunk: Buffer) => (received += chunk.length));
socket.on('close', () => report(true));
socket.on('error', () => {});
setTimeout(() => report(false), 5_000);
