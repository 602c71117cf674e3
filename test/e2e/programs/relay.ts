// Carries TCP connections across network namespaces through a Unix socket, whose path every
// namespace sees: the gateway namespace reaches the test apiserver on the host's loopback.
//
// from-unix <socket> <host> <port>: listens on the Unix socket, connects each client to host:port.
// to-unix <host> <port> <socket>: listens on host:port, connects each client to the Unix socket.
// Prints "listening" once bound.
import { connect, createServer, type Socket } from 'node:net';

const [mode, ...args] = process.argv.slice(2);

function pipe(client: Socket, upstream: Socket): void {
  client.pipe(upstream).pipe(client);
  const close = () => {
    client.destroy();
    upstream.destroy();
  };
  client.on('error', close).on('close', close);
  upstream.on('error', close).on('close', close);
}

if (mode === 'from-unix') {
  const [path = '', host = '', port = ''] = args;
  createServer((client) => pipe(client, connect({ host, port: Number(port) }))).listen(path, () =>
    console.log('listening'),
  );
} else {
  const [host = '', port = '', path = ''] = args;
  createServer((client) => pipe(client, connect({ path }))).listen({ host, port: Number(port) }, () =>
    console.log('listening'),
  );
}
