// A gateway agent's NAA server behind a node agent's relay, against the real apiserver: the
// gateway takes a pod on another node only when its stream comes from an address of that node
// (where the relay runs), authenticates the pod's own token itself, and applies what the pod's
// driver sends through the relay; a pod whose node has other addresses is refused, with a message
// that says why, while the relayed stream beside it carries on. What a relayed stream claims is
// held to its own pod as a direct one is: a stamp applies to the pod's addresses as the apiserver
// knows them, and an association of any other pod's address, on the relay's node or elsewhere,
// closes the stream. A node-driven stream (no token) is taken only from the node agent of the
// pod's node and only for a pod that is node-driven: from the gateway agent itself for a pod of
// its node, and never from the relay without that node's agent certificate.
import { credentials, status, type ServiceError } from '@grpc/grpc-js';
import { KubeConfig } from '@kubernetes/client-node';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TokenReviewAuthenticator } from '../../dataplane/naa/auth.ts';
import { NaaRelay } from '../../dataplane/naa/relay.ts';
import { NaaServer } from '../../dataplane/naa/server.ts';
import { AssociationServiceClient, type AssociateResponse } from '../../proto/index.ts';
import type { AssociateStream, Association } from '../../contracts/naa/index.ts';
import { Driver } from '../../contracts/naa/index.ts';
import { kubectl } from '../cluster/cluster.ts';
import { eventually } from '../eventually.ts';
import { association, helloOf, makePod, openRawStream, type TestPod } from './naa-fixtures.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const namespace = `naa-relay-${process.pid}`;
/** The relay's node: its connections to the gateway node (127.0.0.2) leave from 127.0.0.1. */
const relayNodeAddress = '127.0.0.1';

let server: NaaServer;
/** The stamps the gateway applied: for which addresses, which application. */
const stamps: Array<{ addresses: readonly string[]; stamp: number; processName: string }> = [];
let relay: NaaRelay;
let relayPort: number;
let port: number;
let dir: string;
/** On the gateway's own node. */
let near: TestPod;
/** On worker-a, whose address (as the pod reports it) is the relay's. */
let far: TestPod;
/** On worker-a too, reporting another address for it. */
let stray: TestPod;

beforeAll(async () => {
  await k(['create', 'namespace', namespace]);
  await k(['create', 'serviceaccount', 'app', '-n', namespace]);
  [near, far, stray] = await Promise.all([
    makePod(namespace, 'near', 'gateway-a'),
    makePod(namespace, 'far', 'worker-a'),
    makePod(namespace, 'stray', 'worker-a'),
  ]);
  // The test nodes have no addresses of this machine; the pod says where its node is.
  for (const [name, address] of [
    ['far', relayNodeAddress],
    ['stray', '192.0.2.99'],
  ]) {
    await k([
      'patch',
      'pod',
      name!,
      '-n',
      namespace,
      '--subresource=status',
      '--type=merge',
      '-p',
      JSON.stringify({ status: { hostIP: address, hostIPs: [{ ip: address }] } }),
    ]);
  }
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  server = new NaaServer({
    authenticator: new TokenReviewAuthenticator(kubeConfig, 'gateway-a'),
    sink: {
      apply: async () => {},
      stamp: async (addresses, stamp, application) => {
        stamps.push({ addresses, stamp, processName: application.processName });
      },
    },
  });
  port = await server.listen('127.0.0.2:0');
  relay = new NaaRelay({
    gateway: {
      gateway: 'egress',
      tunnel: { vni: 7, port: 4789 },
      selection: 'Pod',
      associationPort: port,
      healthPort: 7741,
      bypass: [],
      pods: [],
      peers: [{ node: 'gateway-a', addresses: ['127.0.0.2'] }],
    },
    peers: { up: () => new Set(['gateway-a']), onChange: () => {} },
    pinnedPeer: () => undefined,
  });
  relayPort = await relay.listen(`${relayNodeAddress}:0`);
  dir = await mkdtemp(join(tmpdir(), 'naat-naa-relay-'));
});

afterAll(async () => {
  await relay?.close();
  await server?.close();
  await rm(dir, { recursive: true, force: true });
  await k(['delete', 'namespace', namespace, '--wait=false']);
});

/**
 * A stream that says hello as `pod` to `target` (a gRPC address, or a stream opened in this process),
 * with its token or node-driven; resolves with how it ended, or 'accepted' at its HelloAck.
 */
function hello(
  target: string | (() => AssociateStream),
  pod: TestPod,
  { nodeDriven = false } = {},
): Promise<{ code: status; details: string } | 'accepted'> {
  const client =
    typeof target === 'string' ? new AssociationServiceClient(target, credentials.createInsecure()) : undefined;
  const call: AssociateStream = client ? client.associate() : (target as () => AssociateStream)();
  return new Promise((resolve) => {
    call.on('data', (m: AssociateResponse) => {
      if (m.body?.$case !== 'helloAck') return;
      resolve('accepted');
      call.cancel();
    });
    call.on('error', (error) => {
      const { code, details } = error as ServiceError;
      resolve({ code, details });
    });
    call.write({
      sequence: 1,
      body: {
        $case: 'hello',
        value: { ...helloOf(pod), ...(nodeDriven && { token: '', nodeDriven }) },
      },
    });
  }).finally(() => client?.close()) as Promise<{ code: status; details: string } | 'accepted'>;
}

test('a pod on another node is served through the relay on its node, with its own token', async () => {
  const tokenFile = join(dir, 'token-far');
  await writeFile(tokenFile, far.token);
  const driver = new Driver({ target: `${relayNodeAddress}:${relayPort}`, pod: far.ref, tokenFile, version: 'test' });
  const { flow, application, observedAt } = association(far.ip, 1001);
  const scanned = new Map<string, Association>([
    [
      '1001',
      {
        flow: {
          transport: 'tcp',
          family: 4,
          sourceAddress: far.ip,
          sourcePort: flow.sourcePort,
          destinationAddress: '203.0.113.10',
          destinationPort: 443,
        },
        application,
        observedAt,
      },
    ],
  ]);
  driver.update(scanned);
  driver.start();
  try {
    // Hello, then the snapshot: acknowledged once the gateway applied it.
    await eventually(() => expect(driver.progress).toEqual({ acked: 2, sent: 2 }));
    expect(server.table.lookup('tcp', far.ip, 1001)[0]?.pod).toEqual(far.ref);

    // A pod whose node is elsewhere is refused through the same relay, and the stream above carries on.
    const refused = await hello(`${relayNodeAddress}:${relayPort}`, stray);
    expect(refused).toEqual({
      code: status.PERMISSION_DENIED,
      details:
        `gateway node gateway-a: pod ${namespace}/stray runs on node worker-a, not on gateway-a, so its stream must ` +
        `come through the node agent of worker-a (from 192.0.2.99), and this one comes from ${relayNodeAddress}`,
    });
    driver.update(new Map());
    await eventually(() => expect(driver.progress).toEqual({ acked: 3, sent: 3 }));
    expect(server.table.lookup('tcp', far.ip, 1001)).toEqual([]);
    expect(driver.lastError).toBeUndefined();
  } finally {
    driver.stop();
  }
});

test('a pod on the gateway’s own node is served directly, as before', async () => {
  expect(await hello(`127.0.0.2:${port}`, near)).toBe('accepted');
});

test.each([
  ['the gateway node', () => near],
  ["the relay's own node", () => stray],
])(
  "through the relay, a pod's stamp applies to its own addresses only, and its association of the address of a pod on %s closes its stream",
  async (_, other) => {
    const stream = openRawStream(`${relayNodeAddress}:${relayPort}`);
    stream.hello(far);
    await stream.helloAcked();
    const { application } = association(far.ip, 1);
    stream.send({ $case: 'stamp', value: { stamp: 9, application: { ...application, processName: 'stamped' } } });
    await eventually(() => expect(stamps.filter((s) => s.processName === 'stamped')).toHaveLength(1));
    expect(stamps.find((s) => s.processName === 'stamped')).toEqual({
      addresses: [far.ip],
      stamp: 9,
      processName: 'stamped',
    });
    stamps.length = 0;

    stream.send({ $case: 'associate', value: association(other().ip, 3001) });
    expect(await stream.ended).toEqual({
      code: status.PERMISSION_DENIED,
      details: `gateway node gateway-a: source address ${other().ip} is not an address of pod ${namespace}/far`,
    });
    expect(server.table.lookup('tcp', other().ip, 3001)).toEqual([]);
    stream.client.close();
  },
);

test("a node-driven stream is taken only from the node agent of the pod's node, for a node-driven pod", async () => {
  const denied = (details: string | RegExp) => ({
    code: status.PERMISSION_DENIED,
    details: typeof details === 'string' ? details : expect.stringMatching(details),
  });
  const nodeDriven = { nodeDriven: true };

  // A pod of the gateway's own node: from the gateway agent itself, once the pod is node-driven.
  expect(await hello(() => server.openLocal(), near, nodeDriven)).toEqual(
    denied(
      `pod ${namespace}/near is not node-driven (its annotation naat.dev/association-driver is not set, not 'Node'), ` +
        'so only its own driver speaks for it, with its token',
    ),
  );
  await k(['annotate', 'pod', 'near', '-n', namespace, 'naat.dev/association-driver=Node']);
  await k(['annotate', 'pod', 'far', '-n', namespace, 'naat.dev/association-driver=Node']);
  expect(await hello(() => server.openLocal(), near, nodeDriven)).toBe('accepted');
  expect(await hello(`127.0.0.2:${port}`, near, nodeDriven)).toEqual(
    denied(
      new RegExp(
        `^pod ${namespace}/near runs on this gateway node gateway-a, whose gateway agent drives it from within ` +
          `itself only, and this stream comes from 127\\.0\\.0\\.\\d+$`,
      ),
    ),
  );
  expect(
    await hello(() => server.openLocal(), { ...near, ref: { ...near.ref, uid: 'another-uid' } }, nodeDriven),
  ).toEqual(
    denied(
      `the node-driven hello names pod ${namespace}/near with uid another-uid, but that pod is ${near.ref.uid} now`,
    ),
  );
  expect(await hello(() => server.openLocal(), { ...near, ref: { ...near.ref, name: 'gone' } }, nodeDriven)).toEqual(
    denied(`the node-driven hello names pod ${namespace}/gone, which does not exist`),
  );
  expect(await hello(() => server.openLocal(), far, nodeDriven)).toEqual(
    denied(
      `pod ${namespace}/far runs on node worker-a, and this stream comes from the gateway agent of node gateway-a`,
    ),
  );

  // A pod of the relay's node: the relay forwards the node agent's hello, but this relay has no agent certificate.
  expect(await hello(() => relay.openLocal(), far, nodeDriven)).toEqual(
    denied(
      `gateway node gateway-a: pod ${namespace}/far runs on node worker-a, not on gateway-a, so its stream must come ` +
        'through the node agent of worker-a (with its agent certificate), and this one was made with no agent ' +
        'certificate the CA issued',
    ),
  );
  // A pod dialling the relay's port cannot pose as its node agent.
  expect(await hello(`${relayNodeAddress}:${relayPort}`, far, nodeDriven)).toEqual(
    denied(
      `the hello of pod ${namespace}/far says it is node-driven, which only this node's agent may say, from ` +
        'within itself; a stream from the network proves its pod with its token',
    ),
  );
});
