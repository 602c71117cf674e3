// The counts the flow table keeps as flows come and go (flows per uplink, the busiest translation
// per uplink) equal those counted afresh from its flows, after any sequence of NEW and DESTROY
// events, listings, ids reused for other flows, flows that change uplink and flows past its limit.
import fc from 'fast-check';
import { FlowTable, type Flow, type FlowEvent } from './conntrack.ts';

/** A small space of flows, so that ids, tuples and translations collide often. */
const flow = fc
  .record({
    id: fc.integer({ min: 1, max: 12 }),
    uplink: fc.integer({ min: 0, max: 3 }),
    source: fc.constantFrom('10.0.0.1', '10.0.0.2'),
    sourcePort: fc.integer({ min: 1000, max: 1003 }),
    destination: fc.constantFrom('192.0.2.1', '192.0.2.2'),
    destinationPort: fc.constantFrom(80, 443),
    mappedAddress: fc.constantFrom('100.64.0.1', '100.64.0.2'),
    mappedPort: fc.option(fc.integer({ min: 2000, max: 2003 }), { nil: undefined }),
    startedAt: fc.integer({ min: 0, max: 100 }).map((s) => new Date(s * 1000)),
  })
  .map((f): Flow => ({ ...f, family: 4, protocol: 'tcp', mark: f.uplink, timeoutSeconds: 30, counters: undefined }));

type Step = { kind: 'event'; event: FlowEvent } | { kind: 'listing'; flows: Flow[] };
const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant('event' as const),
    event: fc.record({ type: fc.constantFrom('new', 'destroy'), flow }),
  }),
  fc.record({ kind: fc.constant('listing' as const), flows: fc.array(flow, { maxLength: 8 }) }),
);

function counted(table: FlowTable): { active: Map<number, number>; busiest: Map<number, number> } {
  const active = new Map<number, number>();
  const mappings = new Map<string, { uplink: number; count: number }>();
  for (const f of table.flows()) {
    active.set(f.uplink, (active.get(f.uplink) ?? 0) + 1);
    if (f.mappedPort === undefined) continue;
    const key = `${f.uplink} ${f.protocol} ${f.mappedAddress} ${f.destination} ${f.destinationPort}`;
    const m = mappings.get(key) ?? { uplink: f.uplink, count: 0 };
    m.count++;
    mappings.set(key, m);
  }
  const busiest = new Map<number, number>();
  for (const { uplink, count } of mappings.values()) busiest.set(uplink, Math.max(busiest.get(uplink) ?? 0, count));
  return { active, busiest };
}

test('the counts kept as flows come and go are those counted from the flows', () => {
  fc.assert(
    fc.property(fc.integer({ min: 1, max: 10 }), fc.array(step, { maxLength: 60 }), (limit, steps) => {
      const table = new FlowTable(limit);
      for (const s of steps) {
        // Each sighting its own object, as the parser makes them.
        if (s.kind === 'event') table.apply({ type: s.event.type, flow: { ...s.event.flow } });
        else table.replace(s.flows.map((f) => ({ ...f })));
        const { active, busiest } = counted(table);
        expect(table.activeByUplink()).toEqual(active);
        expect(table.busiestMapping()).toEqual(busiest);
      }
    }),
    { numRuns: 500 },
  );
});
