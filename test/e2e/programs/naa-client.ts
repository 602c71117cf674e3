// An NAA client for the links' security tests, standing for whoever dials an NAA port: it says
// Hello for a pod with a token, or node-driven without one (as only a node's agent may, from
// within itself), and prints, as one JSON line, whether a HelloAck came or the status the stream
// ended with. With `record`, it dials through a TCP proxy of its own that writes every
// byte the client sent to that file (a real TLS session, to replay).
//
// naa-client.ts '<JSON of Options>'
import { credentials, status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { AssociationServiceClient, type AssociateResponse } from '../../../proto/index.ts';

interface Options {
  /** host:port of the NAA server. */
  target: string;
  /** Plaintext, TLS verifying the server with the CA in `ca` (a file), or mutual TLS with a --tls-dir. */
  transport: 'plaintext' | 'tls' | 'mtls';
  ca?: string;
  tlsDir?: string;
  /** The name the server's certificate must carry, when dialling through the recording proxy. */
  serverName?: string;
  pod: { namespace: string; name: string; uid: string };
  /** The pod's token; a node-driven Hello when omitted. */
  tokenFile?: string;
  record?: string;
}

const options = JSON.parse(process.argv[2] ?? '{}') as Options;

function channelCredentials(): ChannelCredentials {
  if (options.transport === 'plaintext') return credentials.createInsecure();
  const dir = options.tlsDir;
  const ca = readFileSync(dir ? join(dir, 'ca.crt') : options.ca!);
  if (options.transport === 'tls') return credentials.createSsl(ca);
  return credentials.createSsl(ca, readFileSync(join(dir!, 'tls.key')), readFileSync(join(dir!, 'tls.crt')));
}

/** A proxy to `target` on loopback that records what the client sends; resolves with its address. */
async function recordingProxy(target: string, file: string): Promise<string> {
  const at = target.lastIndexOf(':');
  const sent: Buffer[] = [];
  const proxy = createServer((client) => {
    const upstream = connect({ host: target.slice(0, at).replace(/^\[|\]$/g, ''), port: Number(target.slice(at + 1)) });
    client.on('data', (chunk: Buffer) => {
      sent.push(chunk);
      writeFileSync(file, Buffer.concat(sent));
    });
    client.pipe(upstream).pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  await new Promise<void>((resolve) => proxy.listen(0, '127.0.0.1', resolve));
  proxy.unref();
  return `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
}

const target = options.record ? await recordingProxy(options.target, options.record) : options.target;
const client = new AssociationServiceClient(target, channelCredentials(), {
  ...(options.serverName ? { 'grpc.ssl_target_name_override': options.serverName } : {}),
});
const call = client.associate();
const done = (outcome: Record<string, unknown>) => {
  console.log(JSON.stringify(outcome));
  call.cancel();
  client.close();
  process.exit(0);
};
setTimeout(() => done({ helloAck: false, code: status.DEADLINE_EXCEEDED, details: 'no answer in 10 s' }), 10_000);
call.on('data', (response: AssociateResponse) => {
  if (response.body?.$case === 'helloAck') done({ helloAck: true });
});
call.on('error', (error: ServiceError) => done({ helloAck: false, code: error.code, details: error.details }));
call.write({
  sequence: 1,
  body: {
    $case: 'hello',
    value: {
      protocolVersion: 1,
      pod: options.pod,
      token: options.tokenFile ? readFileSync(options.tokenFile, 'utf8').trim() : '',
      driverVersion: 'naa-client',
      mode: 1,
      nodeDriven: !options.tokenFile,
    },
  },
});
