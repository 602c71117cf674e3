// The links' TLS over loopback sockets: a TLS directory followed through a rotation (a pair caught
// mid-rotation is not taken), the health port that answers plain requests and agents over mutual
// TLS, and an NAA server that learns each stream's agent node from its certificate.
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { AddressInfo, Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { AssociationServiceClient, type AssociateResponse, type PodRef } from '../proto/index.ts';
import { makeTestCa, nodeCertificate, writeTlsDir } from '../test/tls.ts';
import {
  agentChannelCredentials,
  naaServerCredentials,
  parseTlsMaterial,
  plainAndMutualTls,
  TlsDir,
  type TlsMaterial,
} from './link-tls.ts';
import type { StreamPeer } from './naa/auth.ts';
import { NaaServer } from './naa/server.ts';

const ca = makeTestCa();
const otherCa = makeTestCa('someone-else');
const dirs: string[] = [];
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'naat-link-tls-'));
  dirs.push(dir);
  return dir;
};
afterAll(() => dirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

const until = async (done: () => boolean, ms = 3_000) => {
  for (const start = Date.now(); !done() && Date.now() - start < ms;) await new Promise((r) => setTimeout(r, 10));
  expect(done()).toBe(true);
};
const fingerprint = (pem: string) => new X509Certificate(pem).fingerprint256;

test('a TLS directory names its node, and says what is wrong with one that is not whole', () => {
  const pair = nodeCertificate(ca, 'node-a', ['127.0.0.1']);
  const material = parseTlsMaterial({ ca: ca.cert, ...pair });
  expect(material.node).toBe('node-a');
  const other = nodeCertificate(ca, 'node-a', ['127.0.0.1']);
  expect(() => parseTlsMaterial({ ca: ca.cert, cert: pair.cert, key: other.key })).toThrow(
    'tls.crt is not the certificate of tls.key (mid-rotation?)',
  );
  expect(() => parseTlsMaterial({ ca: 'nothing', ...pair })).toThrow(/^ca\.crt is not a PEM certificate bundle/);
  expect(() => parseTlsMaterial({ ca: ca.cert, cert: 'x', key: pair.key })).toThrow(/^tls\.crt is not a PEM/);
});

test('a TLS directory keeps its previous pair while the files do not match, and takes the next whole one', async () => {
  const dir = tempDir();
  const first = writeTlsDir(dir, ca, 'node-a', ['127.0.0.1']);
  const logged: string[] = [];
  const tls = new TlsDir(dir, { reloadMs: 20, log: (_level, message) => logged.push(message) });
  try {
    await tls.ready();
    expect(fingerprint(tls.current()!.cert)).toBe(fingerprint(first.cert));
    // Mid-rotation: the new certificate is there, its key not yet.
    const next = nodeCertificate(ca, 'node-a', ['127.0.0.1']);
    writeFileSync(join(dir, 'tls.crt'), next.cert);
    await until(() => logged.includes('Kept the previous TLS key pair'));
    expect(fingerprint(tls.current()!.cert)).toBe(fingerprint(first.cert));
    writeFileSync(join(dir, 'tls.key'), next.key);
    await until(() => fingerprint(tls.current()!.cert) === fingerprint(next.cert));
    expect(logged).toEqual([
      'Loaded the TLS key pair',
      'Kept the previous TLS key pair',
      'Loaded a renewed TLS key pair',
    ]);
  } finally {
    tls.stop();
  }
});

describe('the health port: plain requests, and agents over mutual TLS', () => {
  let tls: TlsDir;
  let server: Server;
  let port: number;
  const client = (node: string, from = ca) => nodeCertificate(from, node, ['127.0.0.1']);

  beforeAll(async () => {
    const dir = tempDir();
    writeTlsDir(dir, ca, 'gateway-a', ['127.0.0.1']);
    tls = new TlsDir(dir);
    await tls.ready();
    server = plainAndMutualTls(tls, (_req, res, agentNode) => res.end(agentNode ?? 'plain'));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    tls.stop();
    await new Promise((resolve) => server.close(resolve));
  });

  const get = (secure?: { cert?: string; key?: string; ca: string }) =>
    new Promise<string>((resolve, reject) => {
      const options = { host: '127.0.0.1', port, path: '/steering', agent: false };
      const req = secure ? httpsRequest({ ...options, ...secure }) : httpRequest(options);
      req.on('response', (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve(text));
      });
      req.on('error', reject);
      req.end();
    });

  test('a plain request is answered as plain; an agent with a certificate from the CA is known by its node', async () => {
    expect(await get()).toBe('plain');
    expect(await get({ ca: ca.cert, ...client('node-b') })).toBe('node-b');
  });

  test('no client certificate, or one from another CA, fails the handshake', async () => {
    await expect(get({ ca: ca.cert })).rejects.toThrow(/certificate|alert|socket hang up|ECONNRESET/);
    await expect(get({ ca: ca.cert, ...client('node-b', otherCa) })).rejects.toThrow(
      /certificate|alert|socket hang up|ECONNRESET/,
    );
  });

  test('a client that trusts only the CA refuses a server whose certificate does not name the address it dialled', async () => {
    const dir = tempDir();
    writeTlsDir(dir, ca, 'gateway-b', ['192.0.2.9']);
    const wrong = new TlsDir(dir);
    await wrong.ready();
    const other = plainAndMutualTls(wrong, (_req, res) => res.end('answered'));
    await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
    try {
      const port = (other.address() as AddressInfo).port;
      const answer = new Promise<string>((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port, path: '/', agent: false, ca: ca.cert, ...client('n') });
        req.on('response', () => resolve('answered')).on('error', reject);
        req.end();
      });
      await expect(answer).rejects.toThrow(/IP: 127\.0\.0\.1 is not in the cert's list: 192\.0\.2\.9/);
    } finally {
      wrong.stop();
      await new Promise((resolve) => other.close(resolve));
    }
  });
});

describe('the NAA server over TLS', () => {
  const pod = { namespace: 'shop', name: 'web-1', uid: 'uid-1' };
  let dir: string;
  let tls: TlsDir;
  let server: NaaServer;
  let port: number;
  const peers: StreamPeer[] = [];

  beforeAll(async () => {
    dir = tempDir();
    writeTlsDir(dir, ca, 'gateway-a', ['127.0.0.1']);
    tls = new TlsDir(dir, { reloadMs: 20 });
    await tls.ready();
    server = new NaaServer({
      authenticator: {
        authenticate: async (_token: string, claimed: PodRef, peer?: StreamPeer) => {
          peers.push(peer ?? {});
          return { pod: claimed, addresses: ['10.0.0.5'] };
        },
        authenticateNodeDriven: async () => {
          throw new Error('unused');
        },
      },
      sink: { apply: async () => {} },
      credentials: naaServerCredentials(tls),
    });
    port = await server.listen('127.0.0.1:0');
  });
  afterAll(async () => {
    tls.stop();
    await server.close();
  });

  /** Opens a stream and says hello; resolves with the first answer or the error. */
  function hello(client: InstanceType<typeof AssociationServiceClient>) {
    const call = client.associate();
    const errors: ServiceError[] = [];
    const received: AssociateResponse[] = [];
    call.on('data', (m: AssociateResponse) => received.push(m));
    call.on('error', (e: ServiceError) => errors.push(e));
    call.write({
      sequence: 1,
      body: {
        $case: 'hello',
        value: { protocolVersion: 1, pod, token: 't', driverVersion: 'test', mode: 1, nodeDriven: false },
      },
    });
    return { call, errors, received };
  }

  test('a sidecar verifies the agent with the CA and has no node; a relay is known by its certificate', async () => {
    peers.length = 0;
    const sidecar = new AssociationServiceClient(`127.0.0.1:${port}`, credentials.createSsl(Buffer.from(ca.cert)));
    const relayDir = tempDir();
    writeTlsDir(relayDir, ca, 'worker-1', ['127.0.0.1']);
    const relayTls = new TlsDir(relayDir);
    await relayTls.ready();
    const relay = new AssociationServiceClient(`127.0.0.1:${port}`, agentChannelCredentials(relayTls));
    try {
      const a = hello(sidecar);
      await until(() => a.received.length > 0 || a.errors.length > 0);
      expect(a.errors).toEqual([]);
      const b = hello(relay);
      await until(() => b.received.length > 0 || b.errors.length > 0);
      expect(b.errors).toEqual([]);
      expect(peers).toEqual([
        { address: '127.0.0.1', agentNode: undefined },
        { address: '127.0.0.1', agentNode: 'worker-1' },
      ]);
      a.call.end();
      b.call.end();
    } finally {
      sidecar.close();
      relay.close();
      relayTls.stop();
    }
  });

  test('plaintext, a server certificate from another CA, and a client certificate from another CA get nowhere', async () => {
    peers.length = 0;
    const plaintext = new AssociationServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
    const trustsOther = new AssociationServiceClient(
      `127.0.0.1:${port}`,
      credentials.createSsl(Buffer.from(otherCa.cert)),
    );
    const foreign = nodeCertificate(otherCa, 'worker-1', ['127.0.0.1']);
    const posing = new AssociationServiceClient(
      `127.0.0.1:${port}`,
      credentials.createSsl(Buffer.from(ca.cert), Buffer.from(foreign.key), Buffer.from(foreign.cert)),
    );
    try {
      for (const client of [plaintext, trustsOther]) {
        const s = hello(client);
        await until(() => s.errors.length > 0, 10_000);
        expect(s.errors[0]!.code).toBe(14); // UNAVAILABLE: no connection could be made
      }
      // The handshake goes through (sidecars have no certificate either), but the certificate
      // proves no node.
      const s = hello(posing);
      await until(() => s.received.length > 0 || s.errors.length > 0);
      expect(peers).toEqual([{ address: '127.0.0.1', agentNode: undefined }]);
      s.call.end();
    } finally {
      for (const client of [plaintext, trustsOther, posing]) client.close();
    }
  });

  test('a rotated pair serves new connections and drops no open stream', async () => {
    const client = new AssociationServiceClient(`127.0.0.1:${port}`, credentials.createSsl(Buffer.from(ca.cert)));
    const served = () =>
      new Promise<string>((resolve, reject) => {
        const socket = tlsConnect({ host: '127.0.0.1', port, ca: ca.cert, ALPNProtocols: ['h2'] }, () => {
          resolve(socket.getPeerX509Certificate()!.fingerprint256);
          socket.end();
        });
        socket.on('error', reject);
      });
    try {
      const open = hello(client);
      await until(() => open.received.length > 0);
      const before = await served();
      const next = writeTlsDir(dir, ca, 'gateway-a', ['127.0.0.1']);
      await until(() => fingerprint((tls.current() as TlsMaterial).cert) === fingerprint(next.cert));
      expect(await served()).toBe(fingerprint(next.cert));
      expect(before).not.toBe(fingerprint(next.cert));
      // The stream made before still carries messages both ways.
      const answers = open.received.length;
      open.call.write({
        sequence: 2,
        body: { $case: 'snapshot', value: { generation: 1, associations: [], last: true } },
      });
      await until(() => open.received.length > answers);
      expect(open.errors).toEqual([]);
      open.call.end();
    } finally {
      client.close();
    }
  });
});
