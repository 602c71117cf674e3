// The NAA server under hostile input, over real gRPC with TokenReview against the test
// apiserver: garbage on the port, oversized and malformed messages, floods, unknown fields,
// wrong, foreign and expired tokens, associations for addresses that are not the caller's. Each
// is refused with a status that says why (unknown fields are ignored, as protobuf wants), a
// well-behaved stream beside them carries on, each kind of refusal is logged once per period,
// and the server's memory stays bounded. The outcomes are printed as a table at the end.
import { Client, credentials, status, type ClientDuplexStream } from '@grpc/grpc-js';
import { KubeConfig } from '@kubernetes/client-node';
import { createSign, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { TokenReviewAuthenticator, type Authenticator } from '../../dataplane/naa/auth.ts';
import { NaaServer, type AssociationSink } from '../../dataplane/naa/server.ts';
import type { AssociationChanges } from '../../dataplane/naa/table.ts';
import { AssociationServiceService, type AssociateRequest, type AssociateResponse } from '../../proto/index.ts';
import { kubectl } from '../cluster/cluster.ts';
import { association, helloOf, makePod, openRawStream, podToken, type TestPod } from './naa-fixtures.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const namespace = `naa-hostile-${process.pid}`;
const limits = { maxMessagesPerSecond: 100, maxAssociations: 20, maxMessageBytes: 16 * 1024 };

/** Applies at once, or waits while `stall` is set (a kernel that does not answer). */
class StallingSink implements AssociationSink {
  stall: Promise<void> | undefined;
  async apply(_changes: AssociationChanges): Promise<void> {
    await this.stall;
  }
}

/**
 * The pod's token with other times, signed again with the cluster's service-account key: the
 * apiserver cannot issue an expired token (10 minutes at least), so the test makes one.
 */
function resigned(real: string, key: string, expiresInSeconds: number): string {
  const [header, payload] = real.split('.');
  const claims = JSON.parse(Buffer.from(payload!, 'base64url').toString());
  const now = Math.floor(Date.now() / 1000);
  Object.assign(claims, { iat: now - 7200, nbf: now - 7200, exp: now + expiresInSeconds });
  const body = `${header}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}`;
  return `${body}.${createSign('RSA-SHA256').update(body).sign(key).toString('base64url')}`;
}

const otherKey = () =>
  generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;

let server: NaaServer;
let sink: StallingSink;
let port: number;
let podA: TestPod;
let podB: TestPod;
let saKey: string;
const logs: Array<{ message: string; fields: Record<string, unknown> }> = [];
const outcomes: Array<{ input: string; code: string; details: string }> = [];

beforeAll(async () => {
  await k(['create', 'namespace', namespace]);
  await k(['create', 'serviceaccount', 'app', '-n', namespace]);
  [podA, podB] = await Promise.all([makePod(namespace, 'a'), makePod(namespace, 'b')]);
  saKey = await readFile(join(process.env.NAAT_TEST_CLUSTER_DIR!, 'pki', 'sa.key'), 'utf8');
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  sink = new StallingSink();
  server = new NaaServer({
    authenticator: new TokenReviewAuthenticator(kubeConfig),
    sink,
    limits,
    helloTimeoutMs: 1000,
    log: (message, fields) => logs.push({ message, fields }),
  });
  port = await server.listen('127.0.0.1:0');
  good = stream();
  good.hello(podB);
  await good.acked(1);
});

afterAll(async () => {
  good?.call.end();
  good?.client.close();
  await server?.close();
  await k(['delete', 'namespace', namespace, '--wait=false']);
  const width = Math.max(...outcomes.map((o) => o.input.length));
  const codeWidth = Math.max(...outcomes.map((o) => o.code.length));
  console.log(
    [
      'Hostile input → outcome',
      ...outcomes.map((o) => `${o.input.padEnd(width)}  ${o.code.padEnd(codeWidth)}  ${o.details}`),
    ].join('\n'),
  );
});

/** Appended to every message a stream sends with `unknownFields`: a varint field 999 and a bytes field 1000. */
const unknownFields = Buffer.from([0xb8, 0x3e, 0x01, 0xc2, 0x3e, 0x03, 0x61, 0x62, 0x63]);

const stream = (encode?: (m: AssociateRequest) => Buffer) => openRawStream(`127.0.0.1:${port}`, encode);

let good: ReturnType<typeof stream>;
let goodPort = 30000;

/** The well-behaved stream associates one more flow, is acknowledged, and takes it back. */
async function goodStreamWorks(): Promise<void> {
  const flow = association(podB.ip, ++goodPort);
  let seq = good.next();
  good.send({ $case: 'associate', value: flow });
  await good.acked(seq);
  expect(server.table.lookup('tcp', podB.ip, goodPort)).toHaveLength(1);
  seq = good.next();
  good.send({ $case: 'dissociate', value: { flow: flow.flow, observedAt: new Date() } });
  await good.acked(seq);
}

afterEach(goodStreamWorks);

function record(input: string, outcome: { code: status; details: string }) {
  outcomes.push({ input, code: status[outcome.code] ?? String(outcome.code), details: outcome.details });
}

/** Runs a hostile stream to its end and checks (and records) how it was refused. */
async function refused(
  input: string,
  act: (s: ReturnType<typeof stream>) => unknown,
  code: status,
  details: RegExp,
  encode?: (m: AssociateRequest) => Buffer,
) {
  const s = stream(encode);
  await act(s);
  const ended = await s.ended;
  s.client.close();
  record(input, ended);
  expect(status[ended.code]).toBe(status[code]);
  expect(ended.details).toMatch(details);
}

/** Raw bytes on the port; resolves with what came back before the server closed the connection. */
function rawBytes(bytes: Buffer): Promise<{ closed: boolean; received: number; ms: number }> {
  return new Promise((resolve) => {
    const started = performance.now();
    const socket = connect(port, '127.0.0.1', () => socket.write(bytes));
    let received = 0;
    socket.on('data', (chunk) => (received += chunk.length));
    socket.on('error', () => {});
    const timer = setTimeout(() => {
      socket.destroy();
      resolve({ closed: false, received, ms: performance.now() - started });
    }, 5000);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, received, ms: performance.now() - started });
    });
  });
}

test.each([
  ['random bytes (not HTTP/2)', randomBytes(64 * 1024)],
  ['an HTTP/1.1 request', Buffer.from('GET / HTTP/1.1\r\nHost: naat\r\n\r\n')],
  [
    'the HTTP/2 preface, then garbage frames',
    Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), randomBytes(4096)]),
  ],
])('garbage on the port: %s closes that connection only', async (what, bytes) => {
  const result = await rawBytes(bytes);
  outcomes.push({
    input: `TCP: ${what}`,
    code: result.closed ? 'connection closed' : 'connection left open',
    details: `by the server after ${Math.round(result.ms)} ms, ${result.received} bytes sent back (HTTP/2 GOAWAY/RST); not logged`,
  });
  expect(result.closed).toBe(true);
});

test('a message larger than maxMessageBytes is refused by gRPC before it is decoded', async () => {
  const huge = association(podA.ip, 3000);
  huge.application.commandLine = ['x'.repeat(100_000)];
  await refused(
    'message of 100 KiB (limit 16 KiB)',
    async (s) => {
      s.hello(podA);
      await s.acked(1);
      s.send({ $case: 'associate', value: huge });
    },
    status.RESOURCE_EXHAUSTED,
    /larger than max/,
  );
});

test('bytes that are not protobuf in a gRPC frame are refused', async () => {
  await refused(
    'gRPC frame holding non-protobuf bytes',
    (s) => s.hello(podA),
    status.INTERNAL,
    /deserializ|parse|invalid/i,
    () => Buffer.alloc(32, 0xff),
  );
});

test('unknown protobuf fields are ignored: a stream that sends them is served', async () => {
  const withUnknown = (m: AssociateRequest) =>
    Buffer.concat([AssociationServiceService.associate.requestSerialize(m), unknownFields]);
  const s = stream(withUnknown);
  s.hello(podA);
  await s.acked(1);
  s.send({ $case: 'associate', value: association(podA.ip, 4000) });
  await s.acked(2);
  expect(server.table.lookup('tcp', podA.ip, 4000)).toHaveLength(1);
  outcomes.push({
    input: 'unknown protobuf fields (varint and bytes)',
    code: 'OK',
    details: 'ignored; hello and association acknowledged',
  });
  s.call.end();
  s.client.close();
});

test('a flood beyond maxMessagesPerSecond is cut off', async () => {
  await refused(
    '1,000 messages at once (limit 100/s, burst 200)',
    async (s) => {
      s.hello(podA);
      await s.acked(1);
      for (let i = 0; i < 1000; i++)
        s.send({ $case: 'dissociate', value: { flow: association(podA.ip, 1 + i).flow, observedAt: new Date() } });
    },
    status.RESOURCE_EXHAUSTED,
    /^more than 100 messages per second$/,
  );
});

test('a stream that floods while the kernel does not answer is no longer read, then cut off', async () => {
  let release = () => {};
  const s = stream();
  s.hello(podA);
  await s.acked(1);
  sink.stall = new Promise<void>((resolve) => (release = resolve));
  try {
    const filler = association(podA.ip, 5000);
    filler.application.executable = `/${'y'.repeat(4000)}`;
    for (let i = 0; i < 2000; i++) {
      s.send({ $case: 'associate', value: { ...filler, flow: { ...filler.flow, sourcePort: 5000 + (i % 10) } } });
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    // Held back by HTTP/2 flow control: the messages wait at the sender, not in the gateway's memory.
    const unread = s.call.writableLength;
    outcomes.push({
      input: '2,000 messages of 4 KiB while the kernel hangs',
      code: 'not read',
      details: `${2000 - unread} read by the server after 1 s, ${unread} held back at the sender by flow control`,
    });
    expect(unread).toBeGreaterThan(1500);
  } finally {
    release();
    sink.stall = undefined;
  }
  const ended = await s.ended;
  record('… the same stream once the kernel answers', ended);
  expect(ended).toEqual({ code: status.RESOURCE_EXHAUSTED, details: 'more than 100 messages per second' });
  s.client.close();
});

test.each([
  ['a token that is not a JWT', () => ({ token: 'not-a-token' }), status.UNAUTHENTICATED, /the token was not accepted/],
  [
    'a pod token for another audience',
    async () => ({ token: await podToken(podA.ref, 'someone-else') }),
    status.UNAUTHENTICATED,
    /the token was not accepted: .*audience/i,
  ],
  [
    'an expired pod token (exp 1 h ago, validly signed)',
    () => ({ token: resigned(podA.token, saKey, -3600) }),
    status.UNAUTHENTICATED,
    /the token was not accepted: .*expired/i,
  ],
  [
    'a token signed with another key',
    () => ({ token: resigned(podA.token, otherKey(), 3600) }),
    status.UNAUTHENTICATED,
    /the token was not accepted/,
  ],
  [
    'a hello naming another pod than its token',
    () => ({ pod: podB.ref }),
    status.PERMISSION_DENIED,
    /the hello names pod .*\/b .* but the token is bound to .*\/a/,
  ],
  ['no token', () => ({ token: '' }), status.UNAUTHENTICATED, /^the hello carries no token$/],
  [
    'protocol version 2',
    () => ({ protocolVersion: 2 }),
    status.INVALID_ARGUMENT,
    /protocol version 2 is not spoken here/,
  ],
])('refuses a hello with %s', async (what, overrides, code, details) => {
  const fields = await overrides();
  await refused(`hello: ${what}`, (s) => s.hello(podA, fields), code, details);
});

test('a validly signed, unexpired token made the same way is accepted (the expiry is what was refused)', async () => {
  const s = stream();
  s.hello(podA, { token: resigned(podA.token, saKey, 3600) });
  await s.acked(1);
  s.call.end();
  s.client.close();
});

test.each([
  [
    'an association for another pod’s address',
    () => ({ $case: 'associate' as const, value: association(podB.ip, 6000) }),
    status.PERMISSION_DENIED,
    () => new RegExp(`^source address ${podB.ip} is not an address of pod ${namespace}/a$`),
  ],
  [
    'an association for an address of no pod',
    () => ({ $case: 'associate' as const, value: association('192.0.2.99', 6001) }),
    status.PERMISSION_DENIED,
    () => /^source address 192.0.2.99 is not an address of pod .*\/a$/,
  ],
  [
    'a dissociation for another pod’s address',
    () => ({ $case: 'dissociate' as const, value: { flow: association(podB.ip, 6002).flow, observedAt: new Date() } }),
    status.PERMISSION_DENIED,
    () => /is not an address of pod/,
  ],
  [
    'a snapshot holding another pod’s address',
    () => ({
      $case: 'snapshot' as const,
      value: { generation: 1, last: true, associations: [association(podA.ip, 6003), association(podB.ip, 6004)] },
    }),
    status.PERMISSION_DENIED,
    () => /is not an address of pod/,
  ],
  [
    'a source port of 0',
    () => ({ $case: 'associate' as const, value: association(podA.ip, 0) }),
    status.INVALID_ARGUMENT,
    () => /^flow ports must be within 1-65535$/,
  ],
  [
    'a 5-byte address',
    () => ({
      $case: 'associate' as const,
      value: {
        ...association(podA.ip, 6005),
        flow: { ...association(podA.ip, 6005).flow, sourceAddress: Buffer.alloc(5) },
      },
    }),
    status.INVALID_ARGUMENT,
    () => /^flow address: an address has 4 or 16 bytes, not 5$/,
  ],
  [
    'an application field of 5,000 characters',
    () => ({ $case: 'associate' as const, value: association(podA.ip, 6006, 'p'.repeat(5000)) }),
    status.INVALID_ARGUMENT,
    () => /^application fields are limited to 4096 characters$/,
  ],
  [
    'a stamp of 64',
    () => ({ $case: 'stamp' as const, value: { stamp: 64, application: association(podA.ip, 1).application } }),
    status.INVALID_ARGUMENT,
    () => /^stamp 64 is not within 1-63/,
  ],
  [
    'a second hello',
    (): AssociateRequest['body'] => ({
      $case: 'hello',
      value: helloOf(podA),
    }),
    status.INVALID_ARGUMENT,
    () => /^a stream says hello only once$/,
  ],
])('refuses, after a good hello, %s', async (what, body, code, details) => {
  await refused(
    `after hello: ${what}`,
    async (s) => {
      s.hello(podA);
      await s.acked(1);
      s.send(body());
    },
    code,
    details(),
  );
});

test('a stream that never says hello is closed when its time is up', async () => {
  await refused('no hello within 1 s', () => {}, status.DEADLINE_EXCEEDED, /^no hello within the time allowed$/);
});

test('a pod’s associations are bounded: one past maxAssociations closes the stream, the table keeps the limit', async () => {
  await refused(
    `${limits.maxAssociations + 1} associations of one pod (limit ${limits.maxAssociations})`,
    async (s) => {
      s.hello(podA);
      await s.acked(1);
      // An empty snapshot first: the pod starts from nothing.
      s.send({ $case: 'snapshot', value: { generation: 1, last: true, associations: [] } });
      for (let i = 0; i < limits.maxAssociations; i++)
        s.send({ $case: 'associate', value: association(podA.ip, 7000 + i) });
      // At the limit, the same flows again (another process took the socket over) still count once.
      for (let i = 0; i < limits.maxAssociations; i++)
        s.send({ $case: 'associate', value: association(podA.ip, 7000 + i, 'python3') });
      await s.acked(2 + 2 * limits.maxAssociations);
      expect(server.table.countFor(podA.ref)).toBe(limits.maxAssociations);
      s.send({ $case: 'associate', value: association(podA.ip, 7000 + limits.maxAssociations) });
    },
    status.RESOURCE_EXHAUSTED,
    /^pod holds the most associations allowed \(20\)$/,
  );
  expect(server.table.countFor(podA.ref)).toBeLessThanOrEqual(limits.maxAssociations);
});

test('1,000 hostile streams leave the heap and the sessions as they were, and log one line per kind', async () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const heap = () => {
    gc();
    gc();
    return process.memoryUsage().heapUsed;
  };
  const kinds = [
    (s: ReturnType<typeof stream>) => s.send({ $case: 'associate', value: association(podA.ip, 1) }),
    (s: ReturnType<typeof stream>) => s.hello(podA, { protocolVersion: 3 }),
    (s: ReturnType<typeof stream>) =>
      s.send(
        {
          $case: 'hello',
          value: helloOf(podA),
        },
        9,
      ),
  ];
  const logged = () => logs.filter((l) => l.message === 'Closed NAA stream').length;
  // A first round so that connections, code and caches exist before the heap is measured.
  const round = async (n: number) => {
    // One connection carries them all, as a hostile pod would multiplex them.
    const client = new Client(`127.0.0.1:${port}`, credentials.createInsecure(), {
      'grpc.naat_test_connection': Math.random(),
    });
    for (let i = 0; i < n; i += 100) {
      await Promise.all(
        Array.from({ length: Math.min(100, n - i) }, async (_, j) => {
          const call: ClientDuplexStream<AssociateRequest, AssociateResponse> = client.makeBidiStreamRequest(
            AssociationServiceService.associate.path,
            AssociationServiceService.associate.requestSerialize,
            AssociationServiceService.associate.responseDeserialize,
          );
          const ended = new Promise<void>((resolve) => {
            call.on('error', () => resolve());
            call.on('end', () => resolve());
          });
          call.on('data', () => {});
          let sequence = 0;
          kinds[(i + j) % kinds.length]!({
            send: (body: AssociateRequest['body'], seq = ++sequence) => call.write({ sequence: seq, body }),
            hello: (pod: TestPod, o: object = {}) =>
              call.write({
                sequence: ++sequence,
                body: {
                  $case: 'hello',
                  value: { ...helloOf(pod), ...o },
                },
              }),
          } as unknown as ReturnType<typeof stream>);
          await ended;
        }),
      );
    }
    client.close();
  };
  await round(100);
  const linesBefore = logged();
  const before = heap();
  const started = performance.now();
  await round(1000);
  const ms = performance.now() - started;
  const after = heap();
  outcomes.push({
    input: '1,000 hostile streams on one connection',
    code: 'each closed',
    details: `in ${Math.round(ms)} ms; heap ${((after - before) / 2 ** 20).toFixed(1)} MiB after; ${logged() - linesBefore} log lines`,
  });
  expect(after - before).toBeLessThan(8 * 2 ** 20);
  expect(server.sessions).toBe(1);
  // Every kind was seen in the first round: within the period, none is logged again.
  expect(logged() - linesBefore).toBe(0);
  const codes = logs.filter((l) => l.message === 'Closed NAA stream').map((l) => l.fields.code as status);
  expect(codes.length).toBe(new Set(codes).size);
});

test('a refusal logged again after its period says how many were left out', async () => {
  const lines: Array<Record<string, unknown>> = [];
  const refuseAll: Authenticator = {
    authenticate: async () => {
      throw new Error('unused');
    },
    authenticateNodeDriven: async () => {
      throw new Error('unused');
    },
  };
  const quiet = new NaaServer({
    authenticator: refuseAll,
    sink: new StallingSink(),
    refusalLogPeriodMs: 300,
    log: (message, fields) => message === 'Closed NAA stream' && lines.push(fields),
  });
  const quietPort = await quiet.listen('127.0.0.1:0');
  const client = new Client(`127.0.0.1:${quietPort}`, credentials.createInsecure());
  const bad = () =>
    new Promise<void>((resolve) => {
      const call: ClientDuplexStream<AssociateRequest, AssociateResponse> = client.makeBidiStreamRequest(
        AssociationServiceService.associate.path,
        AssociationServiceService.associate.requestSerialize,
        AssociationServiceService.associate.responseDeserialize,
      );
      call.on('error', () => resolve());
      call.on('data', () => {});
      call.write({ sequence: 2, body: undefined });
    });
  try {
    await Promise.all(Array.from({ length: 50 }, bad));
    expect(lines).toHaveLength(1);
    await new Promise((resolve) => setTimeout(resolve, 350));
    await bad();
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatchObject({ code: status.INVALID_ARGUMENT, suppressed: 49 });
  } finally {
    client.close();
    await quiet.close();
  }
});
