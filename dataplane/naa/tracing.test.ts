// The gateway's reading of the trace contexts that sidecars send: valid ones are kept (written
// anew), anything else is ignored, and a stream that sends garbage carries on as if it had sent none.
import { credentials, type ServiceError } from '@grpc/grpc-js';
import { AssociationServiceClient, Protocol, type AssociateResponse, type TraceContext } from '../../proto/index.ts';
import { addressToBytes } from '../../common/index.ts';
import { NaaServer, type AssociationTracing } from './server.ts';
import type { AssociationEntry } from './table.ts';
import { checkedContext } from './tracing.ts';

const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
const spanId = '00f067aa0ba902b7';
const valid = `00-${traceId}-${spanId}-01`;

describe('checkedContext', () => {
  it.each([
    ['', ''],
    ['garbage', ''],
    ['00-00000000000000000000000000000000-00f067aa0ba902b7-01', ''],
    [`00-${traceId}-0000000000000000-01`, ''],
    [`ff-${traceId}-${spanId}-01`, ''],
    [`00-${traceId}-${spanId}-01-extra`, ''],
    [`00-${traceId.toUpperCase()}-${spanId}-01`, ''],
    [`00-${traceId}-${spanId}-0x`, ''],
    ['0'.repeat(1 << 20), ''],
    [`${valid}\u0000`, ''],
  ])('ignores traceparent %j', (traceparent, tracestate) => {
    expect(checkedContext({ traceparent, tracestate })).toBeUndefined();
  });

  it('keeps a valid context, written anew: a later version as 00, tracestate only when it is valid and short', () => {
    expect(checkedContext({ traceparent: valid, tracestate: 'vendor=a,other=b' })).toEqual({
      traceparent: valid,
      tracestate: 'vendor=a,other=b',
    });
    expect(checkedContext({ traceparent: `01-${traceId}-${spanId}-01-future`, tracestate: '' })).toEqual({
      traceparent: valid,
      tracestate: '',
    });
    expect(checkedContext({ traceparent: valid, tracestate: `k=${'v'.repeat(600)}` })?.tracestate).toBe('');
    expect(checkedContext({ traceparent: valid, tracestate: 'no equals sign,=,k=v' })?.tracestate).toBe('k=v');
  });
});

test('the NAA server ignores a garbage trace context: the stream stays up and the association applies', async () => {
  const applied: Array<{ entry: AssociationEntry; appliedAt: Date }> = [];
  const tracing: AssociationTracing = {
    context: checkedContext,
    applied: (entry, _decision, appliedAt) => applied.push({ entry, appliedAt }),
  };
  const pod = { namespace: 'shop', name: 'web-1', uid: 'uid-1' };
  const server = new NaaServer({
    authenticator: {
      authenticate: async (_token, claimed) => ({ pod: claimed, addresses: ['10.0.0.5'] }),
      authenticateNodeDriven: async (claimed) => ({ pod: claimed, addresses: ['10.0.0.5'] }),
    },
    sink: { apply: async ({ upsert }) => upsert.map(() => ({ allowed: true, uplink: 'isp-a' })) },
    tracing,
  });
  const port = await server.listen('127.0.0.1:0');
  const client = new AssociationServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
  const call = client.associate();
  const acks: number[] = [];
  let error: ServiceError | undefined;
  call.on('data', (m: AssociateResponse) => m.body?.$case === 'ack' && acks.push(m.body.value.sequence));
  call.on('error', (e: ServiceError) => (error = e));
  const association = (sourcePort: number, trace: TraceContext) => ({
    flow: {
      protocol: Protocol.PROTOCOL_TCP,
      sourceAddress: addressToBytes('10.0.0.5'),
      sourcePort,
      destinationAddress: addressToBytes('203.0.113.10'),
      destinationPort: 443,
    },
    application: {
      processName: 'curl',
      executable: '/usr/bin/curl',
      commandLine: ['curl'],
      containerName: 'app',
      containerId: '',
      uid: 0,
      pid: 7,
    },
    observedAt: new Date(),
    trace,
  });
  try {
    call.write({
      sequence: 1,
      body: {
        $case: 'hello',
        value: { protocolVersion: 1, pod, token: 't', driverVersion: 'test', mode: 1, nodeDriven: false },
      },
    });
    const garbage = ['garbage', `00-${traceId}-${spanId}-01-extra`, '\u0000'.repeat(100_000)];
    garbage.forEach((traceparent, i) =>
      call.write({
        sequence: 2 + i,
        body: { $case: 'associate', value: association(1000 + i, { traceparent, tracestate: '\u00ff' }) },
      }),
    );
    call.write({
      sequence: 5,
      body: { $case: 'associate', value: association(2000, { traceparent: valid, tracestate: '' }) },
    });
    for (let i = 0; i < 200 && acks.length < 4; i++) await new Promise((resolve) => setTimeout(resolve, 25));

    expect(error).toBeUndefined();
    expect(acks).toEqual([2, 3, 4, 5]);
    const held = server.table.entries();
    expect(held.map((e) => e.sourcePort).sort()).toEqual([1000, 1001, 1002, 2000]);
    expect(held.filter((e) => e.trace).map((e) => [e.sourcePort, e.trace])).toEqual([
      [2000, { traceparent: valid, tracestate: '' }],
    ]);
    expect(applied.map(({ entry }) => entry.sourcePort)).toEqual([2000]);
    expect(applied[0]!.appliedAt.getTime()).toBeGreaterThanOrEqual(applied[0]!.entry.receivedAt.getTime());
  } finally {
    call.end();
    client.close();
    await server.close();
  }
});
