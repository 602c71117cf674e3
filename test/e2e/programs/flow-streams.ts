// Long-lived flows whose every byte and datagram is checked, for tests that move them between
// gateway nodes.
//
// serve <tcpPort> <udpPort>: echoes each TCP stream and each UDP datagram back, on every address;
// prints a JSON line for each TCP connection opened ({"tcp": "addr:port"}) or closed ({"closed":
// "addr:port", "error": ...}) and for each new UDP source ({"udp": "addr:port"}). Prints
// "listening" once bound.
//
// run <server> <tcpPort> <streams> <udpPort>: opens `streams` TCP streams, each sending 256
// bytes of a pattern of its own every 10 ms (never more than 64 KiB ahead of the echoes) and
// checking the echo byte by byte, and one UDP flow sending a datagram numbered from 0 every
// millisecond. Prints "running" once every stream is open; on each line of stdin ("report")
// prints {"tcp": [{"port", "received", "error"?}], "udp": {"sent", "received", "maxGapMs",
// "gapEndedAt"}}: each stream's local port and echoed bytes, and the longest time between two
// echoed datagrams after the first.
import { createSocket } from 'node:dgram';
import { connect, createServer, isIPv6, type Socket } from 'node:net';
import { createInterface } from 'node:readline';

const [mode, ...args] = process.argv.slice(2);

/** addr:port, or [addr]:port for IPv6; an IPv4 address as the dual-stack sockets give it (::ffff:a.b.c.d) as itself. */
function endpoint(address: string | undefined, port: number | undefined): string {
  const plain = address?.replace(/^::ffff:(?=\d+\.)/, '');
  return plain?.includes(':') ? `[${plain}]:${port}` : `${plain}:${port}`;
}
const print = (value: unknown) => process.stdout.write(`${JSON.stringify(value)}\n`);

function serve(tcpPort: number, udpPort: number): void {
  const tcp = createServer((socket) => {
    const remote = endpoint(socket.remoteAddress, socket.remotePort);
    print({ tcp: remote });
    socket.pipe(socket);
    let error: string | undefined;
    socket.on('error', (e) => (error = e.message));
    socket.on('close', () => print({ closed: remote, error }));
  });
  const udp = createSocket({ type: 'udp6', ipv6Only: false });
  const sources = new Set<string>();
  udp.on('message', (message, remote) => {
    const source = endpoint(remote.address, remote.port);
    if (!sources.has(source)) print({ udp: source });
    sources.add(source);
    udp.send(message, remote.port, remote.address);
  });
  let bound = 0;
  const listening = () => ++bound === 2 && console.log('listening');
  tcp.listen({ port: tcpPort, host: '::' }, listening);
  udp.bind(udpPort, listening);
}

/** Byte `offset` of stream `n`'s pattern: never the same run in two streams or two places. */
const patternByte = (n: number, offset: number) => (offset * 31 + n * 7 + (offset >> 8)) & 0xff;

interface Stream {
  socket: Socket;
  port?: number;
  sent: number;
  received: number;
  error?: string;
}

function openStream(n: number, server: string, port: number): Promise<Stream> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: server, port });
    const stream: Stream = { socket, sent: 0, received: 0 };
    socket.on('data', (data: Buffer) => {
      for (let i = 0; i < data.length; i++) {
        if (stream.error || data[i] === patternByte(n, stream.received + i)) continue;
        stream.error = `byte ${stream.received + i} differs`;
      }
      stream.received += data.length;
    });
    socket.on('error', (error) => (stream.error ??= error.message));
    socket.on('close', () => (stream.error ??= 'closed'));
    socket.once('connect', () => {
      stream.port = socket.localPort;
      resolve(stream);
    });
    socket.once('error', reject);
    const timer = setInterval(() => {
      if (stream.error) return clearInterval(timer);
      if (stream.sent - stream.received > 65_536) return;
      const chunk = Buffer.alloc(256);
      for (let i = 0; i < chunk.length; i++) chunk[i] = patternByte(n, stream.sent + i);
      socket.write(chunk);
      stream.sent += chunk.length;
    }, 10);
  });
}

async function run(server: string, tcpPort: number, count: number, udpPort: number): Promise<void> {
  const streams = await Promise.all(Array.from({ length: count }, (_, n) => openStream(n, server, tcpPort)));
  const udp = createSocket(isIPv6(server) ? 'udp6' : 'udp4');
  const datagrams = { sent: 0, received: 0, maxGapMs: 0, gapEndedAt: 0, last: 0 };
  udp.on('message', () => {
    const now = performance.now();
    if (datagrams.received && now - datagrams.last > datagrams.maxGapMs) {
      datagrams.maxGapMs = now - datagrams.last;
      datagrams.gapEndedAt = datagrams.received;
    }
    datagrams.last = now;
    datagrams.received++;
  });
  udp.connect(udpPort, server, () => {
    setInterval(() => {
      const datagram = Buffer.alloc(8);
      datagram.writeBigUInt64BE(BigInt(datagrams.sent++));
      udp.send(datagram, () => {});
    }, 1);
  });
  console.log('running');
  const input = createInterface({ input: process.stdin });
  input.on('line', () =>
    print({
      tcp: streams.map(({ port, received, error }) => ({ port, received, error })),
      udp: {
        sent: datagrams.sent,
        received: datagrams.received,
        maxGapMs: Math.round(datagrams.maxGapMs),
        gapEndedAt: datagrams.gapEndedAt,
      },
    }),
  );
  input.on('close', () => process.exit(0));
}

if (mode === 'serve') serve(Number(args[0]), Number(args[1]));
else if (mode === 'run') void run(args[0]!, Number(args[1]), Number(args[2]), Number(args[3]));
else {
  console.error('usage: flow-streams.ts serve <tcpPort> <udpPort> | run <server> <tcpPort> <streams> <udpPort>');
  process.exit(2);
}
