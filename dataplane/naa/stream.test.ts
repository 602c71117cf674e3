// The NAA stream's transitions: each test feeds inputs as the server would (the table changed as
// the server changes it) and checks the resulting state, effects and table.
import { status } from '@grpc/grpc-js';
import { addressToBytes } from '../../common/index.ts';
import { Action, AssociationMode, type AssociateRequest, type AssociateResponse } from '../../proto/index.ts';
import { association as fixture } from '../../test/integration/naa-fixtures.ts';
import { AuthenticationError } from './auth.ts';
import {
  maxPendingMessages,
  openStream,
  stepStream,
  type StreamEffect,
  type StreamInput,
  type StreamRules,
} from './stream.ts';
import { AssociationTable, type AssociationChanges } from './table.ts';

const limits = { maxMessageBytes: 1 << 20, maxAssociations: 3, maxMessagesPerSecond: 100 };
const pod = { namespace: 'shop', name: 'web-1', uid: 'uid-1' };
const identity = { pod, addresses: ['10.0.0.5', 'fd00::5'] };
const other = { pod: { namespace: 'shop', name: 'web-2', uid: 'uid-2' }, addresses: ['10.0.0.6'] };
const now = new Date('2026-01-01T00:00:00Z');

/** The fixture's association from the pod's address, or from none (''), to `destination`. */
function association(sourcePort: number, options: { source?: string; destination?: string; process?: string } = {}) {
  const { source = '10.0.0.5', destination, process } = options;
  const value = fixture(source || '10.0.0.5', sourcePort, process);
  if (source === '') value.flow.sourceAddress = Buffer.alloc(0);
  if (destination) value.flow.destinationAddress = addressToBytes(destination);
  return value;
}

/**
 * A stream as its server runs it: 'change' effects are made on `table` (the changes kept for the
 * 'applied' answer), the clock moves only when told.
 */
function stream(rules: StreamRules = { limits }, table = new AssociationTable()) {
  let clockMs = 1000;
  let state = openStream(rules, clockMs);
  let sequence = 0;
  let changes: AssociationChanges = { upsert: [], remove: [] };
  const take = (input: StreamInput): StreamEffect[] => {
    const step = stepStream(rules, state, input, { table, now, clockMs });
    state = step.state;
    for (const effect of step.effects) if (effect.type === 'change') changes = table.change(effect.change);
    return step.effects;
  };
  const send = (body: AssociateRequest['body'], seq = ++sequence) =>
    take({ type: 'message', message: { sequence: seq, body } });
  return {
    table,
    get state() {
      return state;
    },
    take,
    send,
    hello: (token = 'token') =>
      send({
        $case: 'hello',
        value: { protocolVersion: 1, pod, token, driverVersion: 'test', mode: 1, nodeDriven: false },
      }),
    /** Says hello and is authenticated as `identity`. */
    open(strict = false) {
      this.hello();
      return take({ type: 'authenticated', identity, sessionId: 'session-1', strict });
    },
    associate: (port: number, options?: Parameters<typeof association>[1]) =>
      send({ $case: 'associate', value: association(port, options) }),
    /** The last change or stamp is applied; the gateway decides `decisions` for what it upserted. */
    applied: (decisions?: Array<{ allowed: boolean; uplink?: string; rule?: string } | undefined>) =>
      take({ type: 'applied', upserted: changes.upsert, decisions, at: now }),
    advance(ms: number) {
      clockMs += ms;
    },
  };
}

const sent = (effects: StreamEffect[]): AssociateResponse['body'][] =>
  effects.flatMap((e) => (e.type === 'send' ? [e.response.body] : []));
const acks = (effects: StreamEffect[]) =>
  sent(effects).flatMap((body) => (body?.$case === 'ack' ? [body.value.sequence] : []));
const refusal = (effects: StreamEffect[]) => effects.find((e) => e.type === 'refuse');
const changes = (effects: StreamEffect[]) => effects.flatMap((e) => (e.type === 'change' ? [e.change] : []));
const ports = (table: AssociationTable) => table.entries().map((e) => `${e.pod.name}:${e.sourcePort}`);

describe('hello', () => {
  it('must come first: any other message closes the stream', () => {
    const s = stream();
    const effects = s.associate(1000);
    expect(effects).toEqual([
      { type: 'refuse', code: status.INVALID_ARGUMENT, details: 'the first message must be a hello, not associate' },
    ]);
    expect(s.state.phase).toBe('closed');
    expect(s.table.size).toBe(0);
  });

  it('has its token checked; messages behind it wait for the answer, then are handled', () => {
    const s = stream();
    expect(s.hello('the-token')).toEqual([{ type: 'authenticate', token: 'the-token', pod }]);
    expect(s.associate(1000)).toEqual([]);
    expect(s.state).toMatchObject({ phase: 'hello', waiting: 'authentication', inbox: [{ sequence: 2 }] });

    const effects = s.take({ type: 'authenticated', identity, sessionId: 'session-1', strict: false });
    expect(effects.slice(0, 3)).toEqual([
      { type: 'accept', identity },
      {
        type: 'send',
        response: {
          body: {
            $case: 'helloAck',
            value: { sessionId: 'session-1', limits, mode: AssociationMode.ASSOCIATION_MODE_OBSERVE },
          },
        },
      },
      { type: 'sendPolicy', identity },
    ]);
    expect(s.state).toMatchObject({ phase: 'open', identity, waiting: 'apply', inbox: [] });
    expect(ports(s.table)).toEqual(['web-1:1000']);
  });

  it('has the node agent it comes from checked when it is node-driven, with no token', () => {
    const s = stream();
    const effects = s.send({
      $case: 'hello',
      value: { protocolVersion: 1, pod, token: '', driverVersion: 'test', mode: 1, nodeDriven: true },
    });
    expect(effects).toEqual([{ type: 'authenticate', nodeDriven: true, pod }]);
    expect(s.state).toMatchObject({ phase: 'hello', waiting: 'authentication' });
  });

  it('is answered in strict mode when the gateway classifies the pod by stamps', () => {
    const [helloAck] = sent(stream().open(true));
    expect(helloAck).toMatchObject({ value: { mode: AssociationMode.ASSOCIATION_MODE_STRICT } });
  });

  it.each([
    [{ protocolVersion: 2 }, status.INVALID_ARGUMENT, 'protocol version 2 is not spoken here (1 is)'],
    [{ pod: { ...pod, uid: '' } }, status.INVALID_ARGUMENT, 'the hello must name the pod: namespace, name and uid'],
    [{ pod: undefined }, status.INVALID_ARGUMENT, 'the hello must name the pod: namespace, name and uid'],
    [{ token: '' }, status.UNAUTHENTICATED, 'the hello carries no token'],
    [{ nodeDriven: true }, status.INVALID_ARGUMENT, 'a node-driven hello carries no token: its node agent proves it'],
  ])('with %j is refused before its token is checked', (overrides, code, details) => {
    const s = stream();
    const effects = s.send({
      $case: 'hello',
      value: { protocolVersion: 1, pod, token: 't', driverVersion: 'test', mode: 1, nodeDriven: false, ...overrides },
    });
    expect(effects).toEqual([{ type: 'refuse', code, details }]);
  });

  it.each([
    [new AuthenticationError('denied', 'bound to another pod'), status.PERMISSION_DENIED, 'bound to another pod'],
    [new AuthenticationError('unauthenticated', 'expired'), status.UNAUTHENTICATED, 'expired'],
    [new Error('connection refused'), status.UNAVAILABLE, 'could not check the token: connection refused'],
  ])('whose token is not accepted (%s) closes the stream', (error, code, details) => {
    const s = stream();
    s.hello();
    expect(s.take({ type: 'authenticationFailed', error })).toEqual([{ type: 'refuse', code, details }]);
    expect(s.state.phase).toBe('closed');
  });

  it('must come in time, and be proved in time', () => {
    const timeout = { type: 'helloTimeout' } as const;
    const refused = { type: 'refuse', code: status.DEADLINE_EXCEEDED, details: 'no hello within the time allowed' };
    expect(stream().take(timeout)).toEqual([refused]);
    const checking = stream();
    checking.hello();
    expect(checking.take(timeout)).toEqual([refused]);
    const open = stream();
    open.open();
    expect(open.take(timeout)).toEqual([]);
    expect(open.state.phase).toBe('open');
  });

  it('proved after the stream is gone speaks for no pod', () => {
    const s = stream();
    s.hello();
    expect(s.take({ type: 'gone' })).toEqual([]);
    expect(s.take({ type: 'authenticated', identity, sessionId: 'session-1', strict: false })).toEqual([]);
    expect(s.state.phase).toBe('closed');
    expect(s.state.identity).toBeUndefined();
  });

  it('comes once, and every message follows the one before', () => {
    const twice = stream();
    twice.open();
    expect(refusal(twice.hello())).toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: 'a stream says hello only once',
    });
    const gap = stream();
    gap.open();
    expect(refusal(gap.send({ $case: 'associate', value: association(1000) }, 5))).toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: 'message sequence 5 does not follow 1',
      pod,
    });
    const empty = stream();
    empty.open();
    expect(refusal(empty.send(undefined))).toMatchObject({ details: 'message 2 has no body' });
  });
});

describe('associations', () => {
  it('are acknowledged once applied, with the verdict the gateway gives each', () => {
    const s = stream();
    s.open();
    const effects = s.associate(1000);
    expect(changes(effects)).toEqual([
      {
        op: 'upsert',
        entry: expect.objectContaining({
          pod,
          transport: 'tcp',
          sourceAddress: '10.0.0.5',
          sourcePort: 1000,
          receivedAt: now,
        }),
      },
    ]);
    expect(acks(effects)).toEqual([]);
    const answered = s.applied([{ allowed: false, rule: 'shop/no-curl#r' }]);
    expect(acks(answered)).toEqual([2]);
    expect(sent(answered)).toContainEqual({
      $case: 'verdict',
      value: expect.objectContaining({
        flow: expect.objectContaining({ sourcePort: 1000, destinationPort: 443 }),
        action: Action.ACTION_DENY,
        rule: 'shop/no-curl#r',
      }),
    });
    expect(s.state.waiting).toBeUndefined();
  });

  it('without a source address start from the pod’s address of the destination’s family', () => {
    const s = stream();
    s.open();
    s.associate(1000, { source: '', destination: '2001:db8::1' });
    s.applied();
    s.associate(1001, { source: '', destination: '203.0.113.10' });
    expect(s.table.entries().map((e) => e.sourceAddress)).toEqual(['fd00::5', '10.0.0.5']);
  });

  it.each([
    ['an association', { $case: 'associate' as const, value: association(1000, { source: '10.0.0.6' }) }],
    [
      'a dissociation',
      { $case: 'dissociate' as const, value: { flow: association(1000, { source: '10.0.0.6' }).flow } },
    ],
    [
      'a snapshot',
      {
        $case: 'snapshot' as const,
        value: {
          generation: 1,
          last: true,
          associations: [association(1000), association(1001, { source: '10.0.0.6' })],
        },
      },
    ],
  ])('for an address other than the pod’s are refused: %s', (_, body) => {
    const s = stream();
    s.open();
    expect(refusal(s.send(body as AssociateRequest['body']))).toEqual({
      type: 'refuse',
      code: status.PERMISSION_DENIED,
      details: 'source address 10.0.0.6 is not an address of pod shop/web-1',
      pod,
    });
    expect(s.table.size).toBe(0);
  });

  it.each([
    ['a source port of 0', { ...association(0) }, 'flow ports must be within 1-65535'],
    ['no flow', { ...association(1000), flow: undefined }, 'an association must carry its flow'],
    [
      'no application',
      { ...association(1000), application: undefined },
      'an association or stamp must name its application',
    ],
    [
      'an executable of 5,000 characters',
      { ...association(1000), application: { ...association(1000).application, executable: 'x'.repeat(5000) } },
      'application fields are limited to 4096 characters',
    ],
    [
      // What a Timestamp past the range of a Date decodes to.
      'an observation time no date holds',
      { ...association(1000), observedAt: new Date(Number.NaN) },
      'an association must be observed at a time a date can hold',
    ],
  ])('with %s are refused', (_, value, details) => {
    const s = stream();
    s.open();
    expect(refusal(s.send({ $case: 'associate', value }))).toMatchObject({ code: status.INVALID_ARGUMENT, details });
  });

  it('are limited per pod; the same flow again replaces, and counts once', () => {
    const s = stream();
    s.open();
    for (const port of [1000, 1001, 1002]) {
      s.associate(port);
      s.applied();
    }
    s.associate(1002, { process: 'python3' });
    expect(acks(s.applied())).toEqual([5]);
    expect(refusal(s.associate(1003))).toMatchObject({
      code: status.RESOURCE_EXHAUSTED,
      details: 'pod holds the most associations allowed (3)',
    });
    expect(ports(s.table)).toEqual(['web-1:1000', 'web-1:1001', 'web-1:1002']);
  });

  it('of an older stream of the pod count towards its limit', () => {
    const table = new AssociationTable();
    const older = stream({ limits }, table);
    older.open();
    for (const port of [1000, 1001, 1002]) {
      older.associate(port);
      older.applied();
    }
    const s = stream({ limits }, table);
    s.open();
    expect(refusal(s.associate(2000))).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
  });

  it('are taken back by dissociations', () => {
    const s = stream();
    s.open();
    s.associate(1000);
    s.applied();
    s.send({ $case: 'dissociate', value: { flow: association(1000).flow, observedAt: now } });
    expect(acks(s.applied())).toEqual([3]);
    expect(s.table.size).toBe(0);
  });

  it('carry their trace context, checked, when the gateway traces them', () => {
    const checked = { traceparent: 'checked', tracestate: '' };
    const s = stream({ limits, trace: (carried) => (carried.traceparent === 'good' ? checked : undefined) });
    s.open();
    s.send({ $case: 'associate', value: { ...association(1000), trace: { traceparent: 'good', tracestate: '' } } });
    const traced = s.applied([{ allowed: true, uplink: 'isp-a' }]);
    expect(traced).toContainEqual({
      type: 'traced',
      entry: expect.objectContaining({ sourcePort: 1000, trace: checked }),
      verdict: { allowed: true, uplink: 'isp-a' },
      appliedAt: now,
    });
    s.send({ $case: 'associate', value: { ...association(1001), trace: { traceparent: 'bad', tracestate: '' } } });
    expect(s.applied().filter((e) => e.type === 'traced')).toEqual([]);
    expect(s.table.entries().map((e) => e.trace)).toEqual([checked, undefined]);
  });
});

describe('snapshots', () => {
  const snapshot = (generation: number, last: boolean, ports: number[]) => ({
    $case: 'snapshot' as const,
    value: { generation, last, associations: ports.map((port) => association(port)) },
  });

  it('on reconnect replace the pod’s previous set, and leave other pods alone', () => {
    const table = new AssociationTable();
    const before = stream({ limits }, table);
    before.open();
    before.associate(1000);
    before.applied();
    before.associate(1001);
    before.applied();
    const neighbour = stream({ limits }, table);
    neighbour.hello();
    neighbour.take({ type: 'authenticated', identity: other, sessionId: 's', strict: false });
    neighbour.associate(1000, { source: '10.0.0.6' });
    neighbour.applied();

    const s = stream({ limits }, table);
    s.open();
    expect(s.send(snapshot(1, false, [1001]))).toEqual([]);
    s.send(snapshot(1, true, [1002]));
    expect(acks(s.applied())).toEqual([3]);
    expect(ports(table).sort()).toEqual(['web-1:1001', 'web-1:1002', 'web-2:1000']);
  });

  it('start again when a part of another generation comes', () => {
    const s = stream();
    s.open();
    s.send(snapshot(1, false, [1000, 1001]));
    s.send(snapshot(2, true, [1002]));
    expect(ports(s.table)).toEqual(['web-1:1002']);
  });

  it('are limited, across their parts', () => {
    const s = stream();
    s.open();
    s.send(snapshot(1, false, [1000, 1001]));
    expect(refusal(s.send(snapshot(1, true, [1002, 1003])))).toMatchObject({
      code: status.RESOURCE_EXHAUSTED,
      details: 'snapshot holds more than the 3 associations allowed',
    });
    expect(s.table.size).toBe(0);
  });
});

describe('stamps', () => {
  const application = association(1).application;

  it('apply to the pod’s own addresses and are acknowledged once applied', () => {
    const s = stream();
    s.open(true);
    expect(s.send({ $case: 'stamp', value: { stamp: 5, application } })).toEqual([
      { type: 'stamp', addresses: identity.addresses, stamp: 5, application },
    ]);
    expect(s.associate(1000)).toEqual([]);
    const answered = s.applied();
    expect(acks(answered)).toEqual([2]);
    expect(changes(answered)).toHaveLength(1);
  });

  it.each([0, 64, 1.5])('of %d are refused (six DSCP bits)', (stamp) => {
    const s = stream();
    s.open(true);
    expect(refusal(s.send({ $case: 'stamp', value: { stamp, application } }))).toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: `stamp ${stamp} is not within 1-63 (six DSCP bits)`,
    });
  });

  it('must name their application', () => {
    const s = stream();
    s.open(true);
    expect(refusal(s.send({ $case: 'stamp', value: { stamp: 5, application: undefined } }))).toMatchObject({
      code: status.INVALID_ARGUMENT,
      details: 'an association or stamp must name its application',
    });
  });
});

describe('flow control', () => {
  it(`stops reading at ${maxPendingMessages} pending messages while the kernel is slow, and reads again below`, () => {
    const s = stream({ limits: { ...limits, maxAssociations: 1000 } });
    s.open();
    s.associate(1000);
    for (let i = 1; i < maxPendingMessages - 1; i++) expect(s.associate(1000 + i)).toEqual([]);
    expect(s.associate(2000)).toEqual([{ type: 'pause' }]);
    expect(s.state).toMatchObject({ paused: true, waiting: 'apply' });
    expect(s.state.inbox).toHaveLength(maxPendingMessages - 1);

    const effects = s.applied();
    expect(acks(effects)).toEqual([2]);
    expect(changes(effects)).toHaveLength(1);
    expect(effects.at(-1)).toEqual({ type: 'resume' });
    expect(s.state.paused).toBe(false);
  });

  it('cuts a stream off past its message rate, counting messages as they arrive', () => {
    const s = stream();
    s.open();
    s.associate(1000);
    // The bucket holds two seconds' worth (200); the hello took one, the association another.
    for (let i = 0; i < 198; i++) expect(refusal(s.associate(1001))).toBeUndefined();
    expect(refusal(s.associate(1001))).toEqual({
      type: 'refuse',
      code: status.RESOURCE_EXHAUSTED,
      details: 'more than 100 messages per second',
      pod,
    });
  });

  it('lets the rate refill with time', () => {
    const s = stream();
    s.open();
    for (let i = 0; i < 199; i++)
      s.send({ $case: 'dissociate', value: { flow: association(1000).flow, observedAt: now } });
    s.advance(50);
    expect(
      refusal(s.send({ $case: 'dissociate', value: { flow: association(1000).flow, observedAt: now } })),
    ).toBeUndefined();
    expect(s.state.phase).toBe('open');
  });

  it('closes the stream when the kernel refuses a change', () => {
    const s = stream();
    s.open();
    s.associate(1000);
    expect(s.take({ type: 'failed', error: new Error('nft: No such file') })).toEqual([
      { type: 'refuse', code: status.INTERNAL, details: 'nft: No such file', pod },
    ]);
  });
});

describe('the end', () => {
  it('of the driver’s side ends the server’s, drops what waits, and releases the pod', () => {
    const s = stream();
    s.open();
    s.associate(1000);
    s.associate(1001);
    expect(s.take({ type: 'end' })).toEqual([{ type: 'release', identity }, { type: 'end' }]);
    expect(s.state).toMatchObject({ phase: 'closed', inbox: [] });
    expect(s.applied()).toEqual([]);
    expect(ports(s.table)).toEqual(['web-1:1000']);
  });

  it('of a refused stream still releases the pod; nothing else is taken', () => {
    const s = stream();
    s.open();
    s.send(undefined);
    expect(s.associate(1000)).toEqual([]);
    expect(s.take({ type: 'helloTimeout' })).toEqual([]);
    expect(s.take({ type: 'gone' })).toEqual([{ type: 'release', identity }]);
  });
});
