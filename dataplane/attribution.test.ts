import {
  AttributionStore,
  decodeRecord,
  describeAttribution,
  encodeRecord,
  parseAttributionQuery,
  type AttributionRecord,
} from './attribution.ts';

const t0 = Date.parse('2026-05-01T10:00:00Z');
const at = (seconds: number) => new Date(t0 + seconds * 1000);

const record = (id: number, startSeconds: number, change: Partial<AttributionRecord> = {}): AttributionRecord => ({
  id,
  start: at(startSeconds),
  family: 4,
  protocol: 'tcp',
  source: '10.244.1.2',
  sourcePort: 40000 + id,
  destination: '203.0.113.10',
  destinationPort: 443,
  mappedAddress: '100.64.1.2',
  mappedPort: 20000,
  uplink: 'isp-a',
  pod: { namespace: 'shop', name: 'web-1' },
  verdict: 'Allow',
  ...change,
});

const held = { address: '100.64.1.2', port: 20000 };
const ids = (records: AttributionRecord[]) => records.map((r) => r.id);

describe('AttributionStore', () => {
  it('answers who held a mapped address and port at a time, while the flow is open and after it ended', () => {
    const store = new AttributionStore();
    store.open(record(1, 0));
    store.open(record(2, 1, { mappedPort: 20001 }));
    expect(ids(store.query({ ...held, at: at(5) }, at(10)))).toEqual([1]);
    store.close(1, at(20), { packetsSent: 3, bytesSent: 180, packetsReceived: 2, bytesReceived: 120 });
    const [ended] = store.query({ ...held, at: at(20) }, at(3600));
    expect(ended).toMatchObject({ id: 1, end: at(20), counters: { bytesSent: 180 } });
    expect(store.query({ ...held, at: at(-1) }, at(3600))).toEqual([]);
    expect(store.query({ ...held, at: at(21) }, at(3600))).toEqual([]);
    expect(store.query({ address: '100.64.1.3', port: 20000, at: at(5) }, at(3600))).toEqual([]);
  });

  it('puts the shortest of overlapping translations first: the kernel reuses a mapped port for other destinations', () => {
    const store = new AttributionStore();
    store.open(record(1, 0));
    store.open(record(2, 10, { destination: '198.51.100.7' }));
    store.close(2, at(12));
    expect(ids(store.query({ ...held, at: at(11) }, at(100)))).toEqual([2, 1]);
  });

  it('learns the application of an open flow when its association arrives late', () => {
    const store = new AttributionStore();
    store.open(record(1, 0));
    store.update(1, { application: { processName: 'curl', executable: '/usr/bin/curl', uid: 1000 }, container: 'app' });
    expect(store.close(1, at(5))).toMatchObject({ container: 'app', application: { processName: 'curl' } });
    expect(store.update(1, { container: 'other' })).toBeUndefined();
  });

  it('ends a record whose end event was lost when the kernel reuses its id', () => {
    const store = new AttributionStore();
    store.open(record(1, 0));
    store.open(record(1, 30, { mappedPort: 20001 }));
    expect(store.query({ ...held, at: at(10) }, at(60))).toMatchObject([{ start: at(0), end: at(30) }]);
    expect(store.isOpen(1)).toBe(true);
  });

  it('keeps at most maxRecords, dropping the oldest ended ones first and counting them', () => {
    const store = new AttributionStore({ maxRecords: 2, maxAgeMs: 3600_000 });
    store.open(record(1, 0));
    store.open(record(2, 1));
    store.close(2, at(2));
    store.open(record(3, 3));
    expect(store.size).toBe(2);
    expect(store.dropped).toBe(1);
    expect(store.isOpen(1)).toBe(true);
    // With no ended record left, the oldest open one goes.
    store.open(record(4, 4));
    expect(store.isOpen(1)).toBe(false);
    expect(store.dropped).toBe(2);
  });

  it('forgets ended records older than maxAgeMs, never open ones', () => {
    const store = new AttributionStore({ maxRecords: 10, maxAgeMs: 60_000 });
    store.open(record(1, 0));
    store.open(record(2, 1));
    store.close(2, at(2));
    expect(ids(store.query({ ...held, at: at(1.5) }, at(61)))).toEqual([2, 1]);
    expect(ids(store.query({ ...held, at: at(1.5) }, at(63)))).toEqual([1]);
    expect(store.size).toBe(1);
  });
});

describe('the log across a restart of the agent', () => {
  const kept = () => {
    const store = new AttributionStore();
    store.open(record(1, 0, { application: { processName: 'curl', executable: '/usr/bin/curl', uid: 1000 } }));
    store.open(record(2, 1, { mappedPort: 20001, trace: { traceparent: '00-ab-cd-01', tracestate: '' } }));
    store.open(record(3, 2, { mappedPort: 20002 }));
    store.close(1, at(5), { packetsSent: 3, bytesSent: 180, packetsReceived: 2, bytesReceived: 120 });
    return store.records().map(encodeRecord);
  };

  it('takes every record back as it was, its times as times', () => {
    const lines = kept();
    const store = new AttributionStore();
    store.restore(lines.map(decodeRecord), () => true, at(10));
    const [ended] = store.query({ ...held, at: at(3) }, at(10));
    expect(ended).toMatchObject({ id: 1, start: at(0), end: at(5), counters: { bytesSent: 180 } });
    expect(ended!.application).toEqual({ processName: 'curl', executable: '/usr/bin/curl', uid: 1000 });
    expect(store.isOpen(2) && store.isOpen(3)).toBe(true);
    // A flow that stayed open across the restart is one record, ended by its end event; its flow
    // span will still have the sidecar's span as its parent.
    expect(store.close(2, at(30))).toMatchObject({ start: at(1), end: at(30), trace: { traceparent: '00-ab-cd-01' } });
  });

  it('ends at the restart a record whose flow ended while no agent ran, so that it still answers for the gap', () => {
    const store = new AttributionStore();
    store.restore(kept().map(decodeRecord), (r) => r.id === 2, at(40));
    expect(store.isOpen(3)).toBe(false);
    expect(store.query({ ...held, port: 20002, at: at(39) }, at(40))).toMatchObject([{ id: 3, end: at(40) }]);
    expect(store.isOpen(2)).toBe(true);
  });

  it('keeps its bounds: records past their age or count are not taken back', () => {
    const store = new AttributionStore({ maxRecords: 1, maxAgeMs: 60_000 });
    store.restore(kept().map(decodeRecord), () => true, at(100));
    // Record 1 ended 95 s before: gone by age; of the two open ones the older goes by count.
    expect(store.records().map((r) => r.id)).toEqual([3]);
    expect(store.dropped).toBe(1);
  });

  it('refuses a line that is not a record, naming what is wrong', () => {
    expect(() => decodeRecord('not json')).toThrow(SyntaxError);
    expect(() => decodeRecord('[1]')).toThrow('not a JSON object');
    const line = JSON.parse(encodeRecord(record(1, 0))) as Record<string, unknown>;
    expect(() => decodeRecord(JSON.stringify({ ...line, id: '1' }))).toThrow('id: "1" is not a number');
    expect(() => decodeRecord(JSON.stringify({ ...line, start: 'yesterday' }))).toThrow(
      'start: "yesterday" is not a time',
    );
    expect(() => decodeRecord(JSON.stringify({ ...line, mappedAddress: undefined }))).toThrow(
      'mappedAddress: undefined is not a string',
    );
  });
});

describe('parseAttributionQuery', () => {
  const parse = (query: string) => parseAttributionQuery(new URLSearchParams(query));

  it('reads address, port and an ISO 8601 time, with the address written as conntrack writes it', () => {
    expect(parse('address=FD00:64:1:0:0:0:0:2&port=61000&at=2026-05-01T10:00:00Z')).toEqual({
      address: 'fd00:64:1::2',
      port: 61000,
      at: new Date('2026-05-01T10:00:00Z'),
    });
  });

  it.each([
    ['address=100.64.1&port=1&at=2026-05-01T10:00:00Z', /^address: /],
    ['port=1&at=2026-05-01T10:00:00Z', /^address: "" /],
    ['address=100.64.1.2&port=65536&at=2026-05-01T10:00:00Z', /^port: "65536" /],
    ['address=100.64.1.2&port=http&at=2026-05-01T10:00:00Z', /^port: /],
    ['address=100.64.1.2&port=80&at=May 1', /^at: "May 1" is not an ISO 8601 time/],
    ['address=100.64.1.2&port=80&at=2026-13-01T10:00:00Z', /^at: /],
  ])('names the bad parameter in %s', (query, message) => {
    expect(parse(query)).toMatch(message);
  });
});

describe('describeAttribution', () => {
  const query = { ...held, at: at(5) };

  it('says who was behind each translation', () => {
    const text = describeAttribution(query, [
      {
        ...record(1, 0),
        end: at(20),
        container: 'app',
        application: { processName: 'curl', executable: '/usr/bin/curl', uid: 1000 },
        policy: 'shop/curl',
        rule: 'via-a',
        counters: { packetsSent: 3, bytesSent: 180, packetsReceived: 2, bytesReceived: 120 },
      },
    ]);
    expect(text).toBe(
      [
        '1 translation held 100.64.1.2:20000 at 2026-05-01T10:00:05.000Z:',
        '  tcp 10.244.1.2:40001 -> 203.0.113.10:443 via isp-a',
        '    from 2026-05-01T10:00:00.000Z to 2026-05-01T10:00:20.000Z',
        '    pod shop/web-1, container app, application curl (/usr/bin/curl, uid 1000)',
        '    Allow by shop/curl#via-a; sent 3 packets, 180 bytes; received 2 packets, 120 bytes',
      ].join('\n'),
    );
  });

  it('says when there is nobody', () => {
    expect(describeAttribution(query, [])).toBe('No translation held 100.64.1.2:20000 at 2026-05-01T10:00:05.000Z.');
  });
});
