// A slow, steady download, for tests that disturb the gateway while a connection is open.
//
// serve <port> <address>...: for each connection, reads "<seconds> <bytesPerSecond>\n", sends
// seconds × bytesPerSecond bytes in ten slices a second, and closes. Prints "listening" once bound.
//
// fetch <address> <port> <seconds> <bytesPerSecond> <idleTimeoutMs>: asks for such a download,
// prints "receiving" at the first byte, and at the end {"bytes": n, "error": "..."} as JSON; the
// connection counts as stalled after idleTimeoutMs without a byte.
import { connect, createServer, type Socket } from 'node:net';

const [mode, ...args] = process.argv.slice(2);

function send(socket: Socket, request: string): void {
  const [seconds = 0, bytesPerSecond = 0] = request.trim().split(' ').map(Number);
  const total = seconds * bytesPerSecond;
  const slices = seconds * 10;
  let sent = 0;
  let slice = 0;
  const timer = setInterval(() => {
    if (slice++ < slices) {
      // Rounded so that the slices add up to exactly the total.
      const size = Math.floor((total * slice) / slices) - sent;
      socket.write(Buffer.alloc(size, 'x'));
      sent += size;
    } else {
      clearInterval(timer);
      socket.end();
    }
  }, 100);
  socket.on('close', () => clearInterval(timer));
}

async function serve(port: number, addresses: string[]): Promise<void> {
  await Promise.all(
    addresses.map((address) => {
      const server = createServer((socket) => {
        socket.on('error', () => {});
        socket.setEncoding('utf8');
        let request = '';
        socket.on('data', (data) => {
          request += data;
          if (request.includes('\n')) {
            socket.removeAllListeners('data');
            send(socket, request);
          }
        });
      });
      return new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host: address, port }, resolve);
      });
    }),
  );
  console.log('listening');
}

function fetch(address: string, port: number, seconds: number, bytesPerSecond: number, idleTimeoutMs: number): void {
  let bytes = 0;
  let error: string | undefined;
  const socket = connect({ host: address, port }, () => socket.write(`${seconds} ${bytesPerSecond}\n`));
  socket.setTimeout(idleTimeoutMs, () => socket.destroy(new Error(`stalled for ${idleTimeoutMs} ms`)));
  socket.on('data', (data) => {
    if (bytes === 0) console.log('receiving');
    bytes += data.length;
  });
  socket.on('error', (e) => (error = e.message));
  socket.on('close', () => console.log(JSON.stringify({ bytes, error })));
}

if (mode === 'serve') await serve(Number(args[0]), args.slice(1));
else {
  const [address = '', ...numbers] = args;
  const [port = 0, seconds = 0, bytesPerSecond = 0, idleTimeoutMs = 0] = numbers.map(Number);
  fetch(address, port, seconds, bytesPerSecond, idleTimeoutMs);
}
