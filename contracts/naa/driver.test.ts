// The driver's tracing against a real NAA server on loopback: each association is sent with the
// context of its own span, which ends with the gateway's Ack; a snapshot after a reconnect carries
// the same contexts again instead of starting new spans.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NaaServer } from '../../dataplane/naa/server.ts';
import type { AssociationEntry } from '../../dataplane/naa/table.ts';
import type { Association } from './associations.ts';
import { Driver, type AssociationTracer } from './driver.ts';
import { eventually } from '../../test/eventually.ts';

const pod = { namespace: 'shop', name: 'web-1', uid: 'uid-1' };

function scanned(ports: number[]): Map<string, Association> {
  return new Map(
    ports.map((port) => [
      String(port),
      {
        flow: {
          transport: 'tcp',
          family: 4,
          sourceAddress: '10.0.0.5',
          sourcePort: port,
          destinationAddress: '203.0.113.10',
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
      },
    ]),
  );
}

test('each association carries its own span’s context, ended by the Ack; a reconnect resends the same contexts', async () => {
  const spans: Array<{ port: number; traceparent: string; ended?: string }> = [];
  const tracer: AssociationTracer = {
    start(association) {
      const span: (typeof spans)[number] = {
        port: association.flow.sourcePort,
        traceparent: `00-${'a'.repeat(24)}${String(spans.length + 1).padStart(8, '0')}-${'b'.repeat(16)}-01`,
      };
      spans.push(span);
      return { trace: { traceparent: span.traceparent, tracestate: '' }, end: (error) => (span.ended = error ?? 'ok') };
    },
  };
  const received: AssociationEntry[] = [];
  // One message a second, with a burst of two per stream: a hello and a snapshot. The associate
  // message after them closes the stream (RESOURCE_EXHAUSTED); the next stream starts afresh.
  const server = new NaaServer({
    authenticator: {
      authenticate: async (_token, claimed) => ({ pod: claimed, addresses: ['10.0.0.5'] }),
      authenticateNodeDriven: async (claimed) => ({ pod: claimed, addresses: ['10.0.0.5'] }),
    },
    sink: { apply: async ({ upsert }) => void received.push(...upsert) },
    limits: { maxMessagesPerSecond: 1 },
    tracing: { context: (trace) => trace, applied: () => {} },
  });
  const port = await server.listen('127.0.0.1:0');
  const dir = await mkdtemp(join(tmpdir(), 'naat-driver-'));
  await writeFile(join(dir, 'token'), 't');
  const driver = new Driver({
    target: `127.0.0.1:${port}`,
    pod,
    tokenFile: join(dir, 'token'),
    version: 'test',
    backoff: { initialMs: 10, maxMs: 10 },
    tracer,
  });
  try {
    driver.update(scanned([1001]));
    driver.start();
    await eventually(() => expect(spans).toEqual([expect.objectContaining({ port: 1001, ended: 'ok' })]));
    expect(received.map((e) => [e.sourcePort, e.trace?.traceparent])).toEqual([[1001, spans[0]!.traceparent]]);

    // The snapshot used both tokens: this message closes the stream, and the driver reconnects.
    driver.update(scanned([1001, 1002]));
    await eventually(() => expect(spans[1]?.ended).toBe('the stream was lost before the gateway acknowledged'));
    await eventually(() =>
      expect(
        server.table
          .entries()
          .map((e) => e.sourcePort)
          .sort(),
      ).toEqual([1001, 1002]),
    );
    expect(spans.map((s) => s.port)).toEqual([1001, 1002]);
    const held = new Map(server.table.entries().map((e) => [e.sourcePort, e.trace?.traceparent]));
    expect(held).toEqual(new Map(spans.map((s) => [s.port, s.traceparent])));
  } finally {
    driver.stop();
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a driver stopped while it reads its token opens no stream afterwards', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'naat-driver-'));
  await writeFile(join(dir, 'token'), 't');
  const failures: unknown[] = [];
  const onRejection = (reason: unknown) => failures.push(reason);
  process.on('unhandledRejection', onRejection);
  const states: string[] = [];
  const driver = new Driver({
    target: '127.0.0.1:1',
    pod,
    tokenFile: join(dir, 'token'),
    version: 'test',
    onState: (state) => states.push(state),
  });
  try {
    driver.start();
    driver.stop();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(failures).toEqual([]);
    expect(states).toEqual(['connecting', 'stopped']);
  } finally {
    process.off('unhandledRejection', onRejection);
    await rm(dir, { recursive: true, force: true });
  }
});
