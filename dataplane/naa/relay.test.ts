// The NAA relay over real gRPC sockets: the real driver dials the relay, which carries its stream
// to two real NAA servers (two gateway nodes at 127.0.0.2 and 127.0.0.3, the same port) whose
// authenticator the test answers. What the driver is told must hold on every up node when it is
// told: acknowledged associations and stamps are applied on both, a change of the up nodes gives a
// node that comes up the whole snapshot, and hostile streams end alone.
import { Client, credentials, status, type ClientDuplexStream, type ServiceError } from '@grpc/grpc-js';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { addressToBytes } from '../../common/index.ts';
import type { NodeGateway } from '../../contracts/gateway/index.ts';
import {
  AssociationMode,
  AssociationServiceService,
  Protocol,
  type AssociateRequest,
  type FlowKey,
  type AssociateResponse,
  type Application,
  type PodRef,
} from '../../proto/index.ts';
import { Driver } from '../../contracts/naa/index.ts';
import type { Association } from '../../contracts/naa/index.ts';
import { AuthenticationError, type PodIdentity } from './auth.ts';
import { NaaRelay, type RelayPeers } from './relay.ts';
import { NaaServer } from './server.ts';
import type { AssociationChanges } from './table.ts';
import { eventually } from '../../test/eventually.ts';

const pod = { namespace: 'shop', name: 'web-1', uid: 'uid-1' };
const podIp = '10.0.0.5';
const limits = { maxMessagesPerSecond: 200, maxAssociations: 100, maxMessageBytes: 16 * 1024 };
const application = (processName: string, pid = 7): Application => ({
  processName,
  executable: `/usr/bin/${processName}`,
  commandLine: [processName],
  containerName: 'app',
  containerId: '',
  uid: 0,
  pid,
});

/** A gateway node: an NAA server whose sink records what it applied, and can be made to stall. */
class GatewayNode {
  readonly name: string;
  readonly address: string;
  server!: NaaServer;
  /** Every apply and stamp, with when it was done (performance.now()). */
  applied: Array<{ at: number; changes: AssociationChanges }> = [];
  stamps: Array<{ at: number; stamp: number; application: string }> = [];
  stall: Promise<void> | undefined;
  /** Pods refused by name, as a gateway refuses a token. */
  refuse = new Set<string>();
  /** While set, token checks wait for it. */
  authenticating: Promise<void> | undefined;
  /** The pods of the node-driven hellos this node was asked to take. */
  nodeDriven: string[] = [];

  readonly #limits: typeof limits;

  constructor(name: string, address: string, nodeLimits = limits) {
    this.name = name;
    this.address = address;
    this.#limits = nodeLimits;
  }

  async start(port: number): Promise<number> {
    this.server = new NaaServer({
      authenticator: {
        authenticate: async (_token: string, claimed: PodRef): Promise<PodIdentity> => {
          await this.authenticating;
          if (this.refuse.has(claimed.name)) throw new AuthenticationError('denied', `pod ${claimed.name} is refused`);
          return { pod: claimed, addresses: [podIp] };
        },
        authenticateNodeDriven: async (claimed: PodRef): Promise<PodIdentity> => {
          if (this.refuse.has(claimed.name)) throw new AuthenticationError('denied', `pod ${claimed.name} is refused`);
          this.nodeDriven.push(claimed.name);
          return { pod: claimed, addresses: [podIp] };
        },
      },
      sink: {
        apply: async (changes) => {
          await this.stall;
          this.applied.push({ at: performance.now(), changes });
          return changes.upsert.map(() => ({ allowed: true, rule: 'shop/apps#0' }));
        },
        stamp: async (_addresses, stamp, app) => {
          await this.stall;
          this.stamps.push({ at: performance.now(), stamp, application: app.processName });
        },
        strict: () => true,
        policy: () => ({ configHash: this.name, classes: [], rules: [], defaultAction: 1 }),
      },
      limits: this.#limits,
    });
    return this.server.listen(`${this.address}:${port}`);
  }

  /** The source ports of the associations this node applied to its kernel, in order. */
  appliedPorts(): number[] {
    return this.applied.flatMap(({ changes }) => changes.upsert.map((e) => e.sourcePort));
  }

  /** The source ports of the pod's associations this node holds. */
  held(): number[] {
    return this.server.table
      .entries()
      .map((e) => e.sourcePort)
      .sort((a, b) => a - b);
  }
}

class Peers implements RelayPeers {
  #up: ReadonlySet<string>;
  readonly #listeners = new Set<() => void>();
  constructor(up: string[]) {
    this.#up = new Set(up);
  }
  up(): ReadonlySet<string> {
    return this.#up;
  }
  onChange(listener: () => void): void {
    this.#listeners.add(listener);
  }
  set(up: string[]): void {
    this.#up = new Set(up);
    for (const listener of this.#listeners) listener();
  }
}

function scanned(ports: number[]): Map<string, Association> {
  return new Map(
    ports.map((port) => [
      String(port),
      {
        flow: {
          transport: 'tcp',
          family: 4,
          sourceAddress: podIp,
          sourcePort: port,
          destinationAddress: '203.0.113.10',
          destinationPort: 443,
        },
        application: application('curl'),
        observedAt: new Date(),
      },
    ]),
  );
}

function flowOf(sourcePort: number): FlowKey {
  return {
    protocol: Protocol.PROTOCOL_TCP,
    sourceAddress: addressToBytes(podIp),
    sourcePort,
    destinationAddress: addressToBytes('203.0.113.10'),
    destinationPort: 443,
  };
}

function associationOf(sourcePort: number) {
  return { flow: flowOf(sourcePort), application: application('curl'), observedAt: new Date(), trace: undefined };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

let dir: string;
let tokenFile: string;
let port: number;
let a: GatewayNode;
let b: GatewayNode;
let peers: Peers;
let relay: NaaRelay;
let relayPort: number;
const pinned = new Map<string, string>();
/** What gw-b held each time the relay said a node that came up was synced, and which nodes were. */
let syncs: Array<{ synced: string[]; heldByB: number[]; stampsOfB: number[] }> = [];

function nodeGateway(): NodeGateway {
  return {
    gateway: 'egress',
    tunnel: { vni: 7, port: 4789 },
    selection: 'Pod',
    associationPort: port,
    healthPort: 7741,
    bypass: [],
    pods: [],
    peers: [
      { node: 'gw-a', addresses: ['127.0.0.2'] },
      { node: 'gw-b', addresses: ['127.0.0.3'] },
    ],
  };
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-relay-'));
  tokenFile = join(dir, 'token');
  await writeFile(tokenFile, 'token');
  a = new GatewayNode('gw-a', '127.0.0.2');
  b = new GatewayNode('gw-b', '127.0.0.3');
  port = await a.start(0);
  await b.start(port);
  peers = new Peers(['gw-a', 'gw-b']);
  pinned.clear();
  syncs = [];
  relay = new NaaRelay({
    gateway: nodeGateway(),
    peers,
    pinnedPeer: (p) => pinned.get(p.name),
    helloTimeoutMs: 1000,
    syncTimeoutMs: 1000,
    onSynced: () =>
      syncs.push({ synced: [...relay.synced()], heldByB: b.held(), stampsOfB: b.stamps.map((s) => s.stamp) }),
  });
  relayPort = await relay.listen('127.0.0.1:0');
});

afterEach(async () => {
  await relay.close();
  await Promise.all([a.server.close(), b.server.close()]);
  await rm(dir, { recursive: true, force: true });
});

function driver(options: Partial<ConstructorParameters<typeof Driver>[0]> = {}) {
  const states: string[] = [];
  const policiesFrom: string[] = [];
  const d = new Driver({
    target: `127.0.0.1:${relayPort}`,
    pod,
    tokenFile,
    version: 'test',
    mode: AssociationMode.ASSOCIATION_MODE_STRICT,
    backoff: { initialMs: 20, maxMs: 100 },
    onState: (state) => states.push(state),
    onPolicy: (policy) => policiesFrom.push(policy.configHash),
    ...options,
  });
  return { driver: d, states, policiesFrom: policiesFrom };
}

test('associations and stamps are applied on every up gateway node before the driver gets their Ack', async () => {
  const { driver: d, policiesFrom } = driver();
  d.update(scanned([1001, 1002]));
  d.start();
  try {
    await eventually(() => expect(d.progress.acked).toBeGreaterThan(0));
    // The moment the stamp's Ack arrives, both nodes hold it.
    await d.stamp(9, application('python3'));
    expect(a.stamps.map((s) => s.stamp)).toEqual([9]);
    expect(b.stamps.map((s) => s.stamp)).toEqual([9]);

    const acked = d.progress.sent;
    d.update(scanned([1001, 1002, 1003]));
    await eventually(() => expect(d.progress.acked).toBeGreaterThan(acked));
    expect(a.held()).toEqual([1001, 1002, 1003]);
    expect(b.held()).toEqual([1001, 1002, 1003]);
    // Without a pinned node, the first up node's policy reaches the driver, once.
    expect(policiesFrom).toEqual(['gw-a']);
    expect(a.server.sessions).toBe(1);
    expect(b.server.sessions).toBe(1);
  } finally {
    d.stop();
  }
});

test('the pinned node’s HelloAck and policy reach the driver, with the tightest limits of all nodes', async () => {
  pinned.set(pod.name, 'gw-b');
  const call = rawStream();
  call.hello();
  const ack = await call.next('helloAck');
  expect(ack.body).toMatchObject({ $case: 'helloAck', value: { limits } });
  expect((await call.next('policy')).body).toMatchObject({ value: { configHash: 'gw-b' } });
  call.close();
});

test('an Ack never precedes the slowest up node', async () => {
  const { driver: d } = driver();
  d.start();
  try {
    await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));
    let release!: () => void;
    b.stall = new Promise((resolve) => (release = resolve));
    const before = d.progress.acked;
    d.update(scanned([2001]));
    await eventually(() => expect(a.appliedPorts()).toContain(2001));
    // gw-a applied it; gw-b holds it back, and so does the relay.
    await sleep(200);
    expect(d.progress.acked).toBe(before);
    expect(b.appliedPorts()).not.toContain(2001);
    const releasedAt = performance.now();
    release();
    b.stall = undefined;
    await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));
    expect(b.applied.at(-1)!.at).toBeGreaterThanOrEqual(releasedAt);
    expect(b.appliedPorts()).toContain(2001);
  } finally {
    d.stop();
  }
});

test('a node going down and coming back makes the driver reconnect, and the node that came up gets everything', async () => {
  const { driver: d, states } = driver({ stamps: () => [{ stamp: 11, application: application('python3') }] });
  d.update(scanned([3001, 3002]));
  d.start();
  try {
    await d.stamp(11, application('python3'));
    await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));

    // gw-b goes down: its server is gone with everything it held; the relay's stream ends.
    const closed = b.server.close();
    peers.set(['gw-a']);
    await closed;
    await eventually(() => expect(states.filter((s) => s === 'connected')).toHaveLength(2));
    d.update(scanned([3001, 3002, 3003]));
    await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));
    expect(a.held()).toEqual([3001, 3002, 3003]);

    // A fresh gw-b comes up, empty: the driver reconnects and its snapshot and stamps reach it.
    // Until they are in force there, the relay does not count it as synced.
    b = new GatewayNode('gw-b', '127.0.0.3');
    await b.start(port);
    peers.set(['gw-a', 'gw-b']);
    expect([...relay.synced()]).toEqual(['gw-a']);
    await eventually(() => expect(syncs).toHaveLength(1));
    expect(syncs).toEqual([{ synced: ['gw-a', 'gw-b'], heldByB: [3001, 3002, 3003], stampsOfB: [11] }]);
    await eventually(() => expect(states.filter((s) => s === 'connected')).toHaveLength(3));
    await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));
    expect(b.held()).toEqual([3001, 3002, 3003]);
    expect(b.stamps.map((s) => s.stamp)).toEqual([11]);
    expect(a.held()).toEqual([3001, 3002, 3003]);
    expect(d.lastError?.message).toMatch(/up nodes of gateway egress changed \(gw-a → gw-a, gw-b\)/);
  } finally {
    d.stop();
  }
});

test('a node that came up counts as synced after a while when a pod does not come back', async () => {
  peers.set(['gw-a']);
  const gone = rawStream({ namespace: 'shop', name: 'gone', uid: 'uid-4' });
  gone.hello();
  await gone.next('helloAck');
  const cameUp = performance.now();
  peers.set(['gw-a', 'gw-b']);
  expect([...relay.synced()]).toEqual(['gw-a']);
  // Its stream ends so that it reconnects, and it never does.
  expect((await gone.ended).code).toBe(status.UNAVAILABLE);
  gone.close();
  await eventually(() => expect(syncs).toHaveLength(1));
  expect(syncs[0]!.synced).toEqual(['gw-a', 'gw-b']);
  expect(performance.now() - cameUp).toBeGreaterThanOrEqual(990);
});

test('a node that refuses the pod or does not answer ends the stream, saying which; no node up ends it UNAVAILABLE', async () => {
  b.refuse.add(pod.name);
  const refused = rawStream();
  refused.hello();
  expect(await refused.ended).toEqual({
    code: status.PERMISSION_DENIED,
    details: 'gateway node gw-b: pod web-1 is refused',
  });

  // gw-b takes longer than the hello timeout (1 s) to check the token: the relay gives up on it.
  b.refuse.clear();
  let answer!: () => void;
  b.authenticating = new Promise((resolve) => (answer = resolve));
  const slow = rawStream();
  slow.hello();
  expect(await slow.ended).toEqual({
    code: status.UNAVAILABLE,
    details: 'gateway node gw-b did not answer the hello within 1000 ms',
  });
  answer();

  peers.set([]);
  const none = rawStream();
  none.hello();
  expect(await none.ended).toEqual({ code: status.UNAVAILABLE, details: 'no node of gateway egress is up' });
});

test('a node-driven hello is forwarded from the node agent’s own drivers, and refused from the network', async () => {
  const { driver: d } = driver({
    target: () => relay.openLocal(),
    tokenFile: undefined,
    mode: AssociationMode.ASSOCIATION_MODE_OBSERVE,
  });
  d.update(scanned([1001]));
  d.start();
  try {
    await eventually(() => expect(d.progress).toEqual({ acked: 2, sent: 2 }));
    expect(a.nodeDriven).toEqual([pod.name]);
    expect(b.nodeDriven).toEqual([pod.name]);
    expect(a.held()).toEqual([1001]);
  } finally {
    d.stop();
  }

  // A pod that dials the relay's port and says it is node-driven, to pose as the node agent.
  const posing = rawStream({ ...pod, name: 'posing' });
  posing.send({
    $case: 'hello',
    value: { protocolVersion: 1, pod: posing.pod, token: '', driverVersion: 'test', mode: 1, nodeDriven: true },
  });
  expect(await posing.ended).toEqual({
    code: status.PERMISSION_DENIED,
    details:
      "the hello of pod shop/posing says it is node-driven, which only this node's agent may say, from within " +
      'itself; a stream from the network proves its pod with its token',
  });
  posing.close();
  expect([...a.nodeDriven, ...b.nodeDriven]).toEqual([pod.name, pod.name]);
});

describe("the node agent's own drivers, their streams handed to the relay in its process", () => {
  const nodeDriver = () =>
    driver({ target: () => relay.openLocal(), tokenFile: undefined, mode: AssociationMode.ASSOCIATION_MODE_OBSERVE });

  test('a pod’s associations reach every up gateway node and are acknowledged once both applied them', async () => {
    const { driver: d, policiesFrom } = nodeDriver();
    d.update(scanned([1001, 1002]));
    d.start();
    try {
      await eventually(() => expect(d.progress).toEqual({ acked: 2, sent: 2 }));
      expect(a.held()).toEqual([1001, 1002]);
      expect(b.held()).toEqual([1001, 1002]);
      d.update(scanned([1002, 1003]));
      await eventually(() => expect(d.progress).toEqual({ acked: 3, sent: 3 }));
      expect(a.held()).toEqual([1002, 1003]);
      expect(b.held()).toEqual([1002, 1003]);
      expect(policiesFrom).toEqual(['gw-a']);
      expect(relay.streams).toBe(1);
    } finally {
      d.stop();
    }
    // Its end goes through the relay to both nodes, which end theirs.
    await eventually(() => expect([relay.streams, a.server.sessions, b.server.sessions]).toEqual([0, 0, 0]));
  });

  test('a gateway node’s refusal reaches the driver as it is, naming the node', async () => {
    b.refuse.add(pod.name);
    const { driver: d, states } = nodeDriver();
    d.start();
    try {
      await eventually(() => expect(states).toContain('disconnected'));
      expect(d.lastError).toMatchObject({
        code: status.PERMISSION_DENIED,
        details: 'gateway node gw-b: pod web-1 is refused',
        message: '7 PERMISSION_DENIED: gateway node gw-b: pod web-1 is refused',
      });
      // It keeps trying, and is taken once the node takes the pod.
      b.refuse.clear();
      await eventually(() => expect(states).toContain('connected'));
      await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));
    } finally {
      d.stop();
    }
  });

  test('a change of the up nodes makes the driver reconnect and send its whole snapshot to the nodes up now', async () => {
    const { driver: d, states } = nodeDriver();
    d.update(scanned([4001, 4002]));
    d.start();
    try {
      await eventually(() => expect(d.progress).toEqual({ acked: 2, sent: 2 }));
      peers.set(['gw-b']);
      await eventually(() => expect(states.filter((s) => s === 'connected')).toHaveLength(2));
      expect(d.lastError?.message).toMatch(/up nodes of gateway egress changed \(gw-a, gw-b → gw-b\)/);
      d.update(scanned([4001, 4002, 4003]));
      await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));
      expect(b.held()).toEqual([4001, 4002, 4003]);
      expect(b.server.sessions).toBe(1);
      // gw-a dropped the pod's stream when the relay ended it, and got nothing since.
      await eventually(() => expect(a.server.sessions).toBe(0));
      expect(a.appliedPorts()).not.toContain(4003);
    } finally {
      d.stop();
    }
  });

  test('a relay that closed refuses new streams, and the driver tries again', async () => {
    await relay.close();
    const { driver: d, states } = nodeDriver();
    d.start();
    try {
      await eventually(() => expect(states.filter((s) => s === 'disconnected').length).toBeGreaterThanOrEqual(2));
      expect(d.lastError).toMatchObject({ code: status.UNAVAILABLE, details: 'the node agent is stopping' });
    } finally {
      d.stop();
    }
  });
});

/**
 * A raw stream to the relay on a connection of its own, speaking for `as`; `encode` replaces the
 * protobuf encoding.
 */
function rawStream(
  as: PodRef = pod,
  encode: (m: AssociateRequest) => Buffer = AssociationServiceService.associate.requestSerialize,
) {
  return rawStreamTo(`127.0.0.1:${relayPort}`, as, encode);
}
function rawStreamTo(
  target: string,
  as: PodRef = pod,
  encode: (m: AssociateRequest) => Buffer = AssociationServiceService.associate.requestSerialize,
) {
  const client = new Client(target, credentials.createInsecure(), {
    'grpc.naat_test_connection': Math.random(),
  });
  const call: ClientDuplexStream<AssociateRequest, AssociateResponse> = client.makeBidiStreamRequest(
    AssociationServiceService.associate.path,
    encode,
    AssociationServiceService.associate.responseDeserialize,
  );
  const received: AssociateResponse[] = [];
  const waiting: Array<() => void> = [];
  call.on('data', (m: AssociateResponse) => {
    received.push(m);
    for (const wake of waiting.splice(0)) wake();
  });
  const ended = new Promise<{ code: status; details: string }>((resolve) => {
    call.on('error', (e: ServiceError) => resolve({ code: e.code, details: e.details }));
    call.on('end', () => resolve({ code: status.OK, details: '' }));
  });
  let sequence = 0;
  /** Writes the next message; false when the stream's buffer is full (wait for 'drain'). */
  const send = (body: AssociateRequest['body']): boolean => call.write({ sequence: ++sequence, body });
  return {
    call,
    pod: as,
    received,
    ended,
    send,
    hello: () =>
      send({
        $case: 'hello',
        value: { protocolVersion: 1, pod: as, token: 't', driverVersion: 'test', mode: 2, nodeDriven: false },
      }),
    /** The next response of this kind not taken yet. */
    async next(kind: NonNullable<AssociateResponse['body']>['$case']): Promise<AssociateResponse> {
      for (;;) {
        const found = received.findIndex((m) => m.body?.$case === kind);
        if (found >= 0) return received.splice(found, 1)[0]!;
        await new Promise<void>((resolve) => waiting.push(resolve));
      }
    },
    close: () => {
      call.cancel();
      client.close();
    },
    /**
     * Sends `count` messages of `body(i)` as fast as the stream takes them; resolves with how many
     * went before the stream stopped taking more for `stuckMs`, or all of them.
     */
    async flood(count: number, body: (i: number) => AssociateRequest['body'], stuckMs = 1000): Promise<number> {
      for (let i = 0; i < count; i++) {
        if (send(body(i))) continue;
        const drained = await new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), stuckMs);
          call.once('drain', () => resolve(true) ?? clearTimeout(timer));
        });
        if (!drained) return i + 1;
      }
      return count;
    },
  };
}

/** Starts both gateway nodes again, on the same addresses, with `nodeLimits`. */
async function restartNodes(nodeLimits: typeof limits): Promise<void> {
  await Promise.all([a.server.close(), b.server.close()]);
  a = new GatewayNode('gw-a', '127.0.0.2', nodeLimits);
  b = new GatewayNode('gw-b', '127.0.0.3', nodeLimits);
  await a.start(port);
  await b.start(port);
}

const generous = { maxMessagesPerSecond: 1_000_000, maxAssociations: 1_000_000, maxMessageBytes: 16 * 1024 };

test('a gateway node that stops applying holds the driver back through the relay, and nothing is lost', async () => {
  await restartNodes(generous);
  let release!: () => void;
  b.stall = new Promise((resolve) => (release = resolve));
  const stream = rawStream();
  stream.hello();
  await stream.next('helloAck');
  // Associations of 4 KiB each, so that the buffers and flow-control windows on the way fill soon.
  const total = 3_000;
  const message = (i: number): AssociateRequest['body'] => ({
    $case: 'associate',
    value: {
      ...associationOf(1 + i),
      application: { ...application('curl'), commandLine: ['x'.repeat(4000)] },
    },
  });
  const taken = await stream.flood(total, message);
  // The stalled node's stream filled, the relay stopped reading the driver, and HTTP/2 flow
  // control stopped the driver: a bounded number of messages is in flight.
  expect(taken).toBeLessThan(total);
  expect(b.applied).toEqual([]);
  console.log(`relay backpressure: a stalled gateway node held the driver back after ${taken} messages of 4 KiB`);
  release();
  b.stall = undefined;
  const rest = await stream.flood(total - taken, (i) => message(taken + i), 10_000);
  expect(rest).toBe(total - taken);
  await eventually(() => {
    const acks = stream.received.filter((m) => m.body?.$case === 'ack');
    expect(acks.at(-1)?.body).toEqual({ $case: 'ack', value: { sequence: total + 1 } });
  }, 60_000);
  stream.close();
}, 90_000);

test('a driver that does not read what it is sent holds back only its own stream', async () => {
  await restartNodes(generous);
  const { driver: d, states } = driver();
  d.start();
  try {
    await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));
    const deaf = rawStream({ namespace: 'shop', name: 'deaf', uid: 'uid-3' });
    deaf.hello();
    await deaf.next('helloAck');
    deaf.call.pause();
    // Each association is answered with an Ack and a verdict, which the deaf driver leaves unread.
    const taken = await deaf.flood(200_000, (i) => ({ $case: 'associate', value: associationOf(1 + (i % 60_000)) }));
    expect(taken).toBeLessThan(200_000);
    console.log(`relay backpressure: a driver that does not read was held back after ${taken} associations`);

    const sent = d.progress.sent;
    d.update(scanned([7001]));
    await eventually(() => expect(d.progress.acked).toBeGreaterThan(sent));
    expect(states.filter((s) => s === 'disconnected')).toEqual([]);
    deaf.close();
  } finally {
    d.stop();
  }
}, 60_000);

test('hostile streams are refused alone: a bad first message, a flood, a huge message, silence', async () => {
  const { driver: d, states } = driver();
  d.start();
  try {
    await eventually(() => expect(d.progress.acked).toBe(d.progress.sent));

    // Another pod of the node, whose streams must not touch the driver's.
    const mallory = { namespace: 'shop', name: 'mallory', uid: 'uid-2' };
    const garbage = rawStream(mallory, () => Buffer.from([0xff, 0xff, 0xff]));
    garbage.send(undefined);
    expect((await garbage.ended).code).toBe(status.INVALID_ARGUMENT);

    const first = rawStream(mallory);
    first.send({ $case: 'snapshot', value: { generation: 1, associations: [], last: true } });
    expect(await first.ended).toEqual({
      code: status.INVALID_ARGUMENT,
      details: 'the first message must be a hello, not snapshot',
    });

    const flood = rawStream(mallory);
    flood.hello();
    await flood.next('helloAck');
    for (let i = 0; i < 1000; i++) {
      flood.send({ $case: 'dissociate', value: { flow: flowOf(6000 + i), observedAt: new Date() } });
    }
    expect(await flood.ended).toEqual({
      code: status.RESOURCE_EXHAUSTED,
      details: 'more than 200 messages per second',
    });

    const huge = rawStream(mallory);
    huge.hello();
    await huge.next('helloAck');
    huge.send({
      $case: 'stamp',
      value: { stamp: 3, application: { ...application('curl'), commandLine: ['x'.repeat(64 * 1024)] } },
    });
    expect(await huge.ended).toMatchObject({ code: status.RESOURCE_EXHAUSTED });

    const silent = rawStream(mallory);
    expect(await silent.ended).toEqual({ code: status.DEADLINE_EXCEEDED, details: 'no hello within the time allowed' });

    // None of them cost a gateway node a stream beyond the relayed ones, and the driver's stream
    // carried on throughout.
    const sent = d.progress.sent;
    d.update(scanned([4001]));
    await eventually(() => expect(d.progress.acked).toBeGreaterThan(sent));
    expect(a.held()).toEqual([4001]);
    expect(b.held()).toEqual([4001]);
    expect(states.filter((s) => s === 'disconnected')).toEqual([]);
    for (const s of [garbage, first, flood, huge, silent]) s.close();
    await eventually(() => expect(relay.streams).toBe(1));
  } finally {
    d.stop();
  }
});

/** Sorted milliseconds → p50 and p99 as text. */
function percentiles(times: number[]): string {
  const sorted = [...times].sort((x, y) => x - y);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!.toFixed(3);
  return `p50 ${at(0.5)} ms  p99 ${at(0.99)} ms`;
}

test('latency from a new stream and from a stamp to its Ack, through the relay and directly', async () => {
  const measure = async (target: string) => {
    const connects: number[] = [];
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      const { driver: d } = driver({ target });
      d.update(scanned([5001, 5002]));
      d.start();
      await new Promise<void>((resolve) => {
        const poll = () =>
          d.progress.acked > 0 && d.progress.acked === d.progress.sent ? resolve() : setImmediate(poll);
        poll();
      });
      connects.push(performance.now() - started);
      d.stop();
    }
    const { driver: d } = driver({ target });
    d.start();
    await d.stamp(1, application('curl'));
    const stamps: number[] = [];
    for (let i = 0; i < 300; i++) {
      const started = performance.now();
      await d.stamp(1 + (i % 63), application('curl'));
      stamps.push(performance.now() - started);
    }
    d.stop();
    return { connects, stamps };
  };
  const relayed = await measure(`127.0.0.1:${relayPort}`);
  peers.set(['gw-a']);
  const relayedOne = await measure(`127.0.0.1:${relayPort}`);
  const direct = await measure(`127.0.0.2:${port}`);
  console.log(
    [
      'NAA connect-to-Ack latency, loopback, driver, relay and gateway servers in one process:',
      `  new stream → snapshot acked  relay to 2 nodes ${percentiles(relayed.connects)} | relay to 1 node ${percentiles(relayedOne.connects)} | direct ${percentiles(direct.connects)}`,
      `  stamp → Ack                  relay to 2 nodes ${percentiles(relayed.stamps)} | relay to 1 node ${percentiles(relayedOne.stamps)} | direct ${percentiles(direct.stamps)}`,
    ].join('\n'),
  );
  expect(relayed.stamps).toHaveLength(300);
}, 60_000);
