// Answers every TCP connection and every UDP datagram with the address and port it came from,
// "<address> <port>\n", and closes the connection: what a NAT made of the client's source.
// Usage: node whoami.ts <port> <address>...; prints "listening" once bound to every address.
import { createSocket } from 'node:dgram';
import { createServer, isIPv6 } from 'node:net';

const [port, ...addresses] = process.argv.slice(2);

function tcp(address: string): Promise<void> {
  const server = createServer((socket) => {
    // A client that gave up resets the connection; that is the client's failure to count.
    socket.on('error', () => {});
    socket.end(`${socket.remoteAddress} ${socket.remotePort}\n`);
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: address, port: Number(port), backlog: 4096 }, resolve);
  });
}

function udp(address: string): Promise<void> {
  const socket = createSocket(isIPv6(address) ? 'udp6' : 'udp4');
  socket.on('message', (_, peer) => socket.send(`${peer.address} ${peer.port}\n`, peer.port, peer.address));
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(Number(port), address, resolve);
  });
}

await Promise.all(addresses.flatMap((address) => [tcp(address), udp(address)]));
console.log('listening');
