// The NAA server against the real apiserver: drivers authenticate with pod-bound tokens, their
// associations land in the table, and every kind of bad stream is closed with a status that
// says why while a good stream next to it carries on.
import { status } from '@grpc/grpc-js';
import { KubeConfig } from '@kubernetes/client-node';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NaaServer, type AssociationSink } from '../../dataplane/naa/server.ts';
import { TokenReviewAuthenticator } from '../../dataplane/naa/auth.ts';
import type { AssociationChanges } from '../../dataplane/naa/table.ts';
import { Driver } from '../../contracts/naa/index.ts';
import type { Association } from '../../contracts/naa/index.ts';
import { kubectl } from '../cluster/cluster.ts';
import { eventually } from '../eventually.ts';
import { association, helloOf, makePod, openRawStream, type TestPod } from './naa-fixtures.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const namespace = `naa-${process.pid}`;

class RecordingSink implements AssociationSink {
  batches: AssociationChanges[] = [];
  async apply(changes: AssociationChanges): Promise<void> {
    this.batches.push(changes);
  }
}

let server: NaaServer;
let sink: RecordingSink;
let port: number;
let podA: TestPod;
let podB: TestPod;
let dir: string;

beforeAll(async () => {
  await k(['create', 'namespace', namespace]);
  await k(['create', 'serviceaccount', 'app', '-n', namespace]);
  [podA, podB] = await Promise.all([makePod(namespace, 'a'), makePod(namespace, 'b')]);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  sink = new RecordingSink();
  server = new NaaServer({
    authenticator: new TokenReviewAuthenticator(kubeConfig),
    sink,
    limits: { maxMessagesPerSecond: 200, maxAssociations: 50, maxMessageBytes: 64 * 1024 },
  });
  port = await server.listen('127.0.0.1:0');
  dir = await mkdtemp(join(tmpdir(), 'naat-naa-'));
});

afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
  await k(['delete', 'namespace', namespace, '--wait=false']);
});

/** A raw stream, for saying what a well-behaved driver never would. */
const rawStream = () => openRawStream(`127.0.0.1:${port}`);

test('a driver with its pod-bound token streams associations that the gateway applies and acknowledges', async () => {
  const tokenFile = join(dir, 'token-a');
  await writeFile(tokenFile, podA.token);
  const driver = new Driver({ target: `127.0.0.1:${port}`, pod: podA.ref, tokenFile, version: 'test' });
  const scanned = (ports: number[]) =>
    new Map<string, Association>(
      ports.map((p) => [
        String(p),
        {
          flow: {
            transport: 'tcp',
            family: 4,
            sourceAddress: podA.ip,
            sourcePort: p,
            destinationAddress: '203.0.113.10',
            destinationPort: 443,
          },
          application: { ...association(podA.ip, p).application, processName: p === 1001 ? 'curl' : 'python3' },
          observedAt: new Date(),
        },
      ]),
    );
  driver.update(scanned([1001, 1002]));
  driver.start();
  try {
    const held = () =>
      server.table
        .entries()
        .filter((e) => e.pod.uid === podA.ref.uid)
        .map((e) => `${e.sourceAddress}:${e.sourcePort} ${e.application.processName}`)
        .sort();
    await eventually(() => expect(held()).toEqual([`${podA.ip}:1001 curl`, `${podA.ip}:1002 python3`]));

    driver.update(scanned([1002, 1003]));
    await eventually(() => expect(held()).toEqual([`${podA.ip}:1002 python3`, `${podA.ip}:1003 python3`]));
    await eventually(() => expect(driver.progress.acked).toBe(driver.progress.sent));
    expect(server.table.lookup('tcp', podA.ip, 1003)[0]?.pod).toEqual(podA.ref);
  } finally {
    driver.stop();
  }
});

test('a stream that claims another pod’s address is closed, and the stream beside it carries on', async () => {
  const good = rawStream();
  const bad = rawStream();
  good.hello(podB);
  bad.hello(podA);
  await Promise.all([good.helloAcked(), bad.helloAcked()]);

  bad.send({ $case: 'associate', value: association(podB.ip, 2001) });
  expect(await bad.ended).toEqual({
    code: status.PERMISSION_DENIED,
    details: `source address ${podB.ip} is not an address of pod ${namespace}/a`,
  });

  good.send({ $case: 'associate', value: association(podB.ip, 2002) });
  await eventually(() => expect(server.table.lookup('tcp', podB.ip, 2002)).toHaveLength(1));
  expect(server.table.lookup('tcp', podB.ip, 2001)).toHaveLength(0);
  good.call.end();
  good.client.close();
  bad.client.close();
});

test.each([
  [
    'a token that is not a token',
    (s: ReturnType<typeof rawStream>) => s.hello(podA, { token: 'not-a-token' }),
    status.UNAUTHENTICATED,
    /the token was not accepted/,
  ],
  [
    'a hello that names another pod than its token',
    (s: ReturnType<typeof rawStream>) => s.hello(podA, { pod: podB.ref }),
    status.PERMISSION_DENIED,
    new RegExp(`names pod ${namespace}/b .* but the token is bound to ${namespace}/a`),
  ],
  [
    'an association before the hello',
    (s: ReturnType<typeof rawStream>) => s.send({ $case: 'associate', value: association(podA.ip, 1) }),
    status.INVALID_ARGUMENT,
    /the first message must be a hello, not associate/,
  ],
  [
    'a sequence that skips',
    (s: ReturnType<typeof rawStream>) => s.send({ $case: 'hello', value: helloOf(podA) }, 5),
    status.INVALID_ARGUMENT,
    /message sequence 5 does not follow 0/,
  ],
  [
    'an unknown protocol version',
    (s: ReturnType<typeof rawStream>) => s.send({ $case: 'hello', value: { ...helloOf(podA), protocolVersion: 9 } }),
    status.INVALID_ARGUMENT,
    /protocol version 9 is not spoken here/,
  ],
])('refuses %s with a clear status', async (_what, act, code, details) => {
  const stream = rawStream();
  act(stream);
  const ended = await stream.ended;
  expect(ended.code).toBe(code);
  expect(ended.details).toMatch(details);
  stream.client.close();
});

test('a flood is cut off with RESOURCE_EXHAUSTED and an oversized message is refused', async () => {
  const flood = rawStream();
  flood.hello(podA);
  await flood.helloAcked();
  for (let i = 0; i < 1000; i++)
    flood.send({ $case: 'dissociate', value: { flow: association(podA.ip, 1 + i).flow, observedAt: new Date() } });
  expect(await flood.ended).toEqual({ code: status.RESOURCE_EXHAUSTED, details: 'more than 200 messages per second' });

  const big = rawStream();
  big.hello(podA);
  await big.helloAcked();
  const huge = association(podA.ip, 3000);
  huge.application.commandLine = ['x'.repeat(100_000)];
  big.send({ $case: 'associate', value: huge });
  expect((await big.ended).code).toBe(status.RESOURCE_EXHAUSTED);
  flood.client.close();
  big.client.close();
});
