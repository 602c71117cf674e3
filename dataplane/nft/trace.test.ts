import fc from 'fast-check';
import { contains } from '../../contracts/gateway/index.ts';
import type { Chain, Table } from './model.ts';
import { TableIndex, trace, type Packet } from './trace.ts';

// The index a table gets for many traces answers as a pass over the elements would: the first
// element, in the map's order, that holds the key; membership by address or prefix.

const address = (n: number) => `10.0.0.${n}`;
const packet = (source: number, destination: number, dport: number): Packet => ({
  family: 4,
  saddr: address(source),
  daddr: `192.0.2.${destination}`,
  protocol: 'tcp',
  sport: 40000,
  dport,
});

/** A chain per element that marks the packet with the element's number and accepts it. */
const marking = (count: number): Chain[] =>
  Array.from({ length: count }, (_, i) => ({
    name: `element${i}`,
    rules: [
      {
        match: [],
        then: [
          { kind: 'setPacketMark', mask: 0xff, value: i + 1 },
          { kind: 'verdict', verdict: 'accept' },
        ],
      },
    ],
  }));

const range = fc
  .tuple(fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 15 }))
  .map(([a, b]) => [Math.min(a, b), Math.max(a, b)] as const);

describe('TableIndex', () => {
  it('finds the first element of an interval map that holds the key, where elements overlap too', () => {
    const box = fc.record({ sources: range, destinations: range, ports: range });
    fc.assert(
      fc.property(
        fc.array(box, { minLength: 1, maxLength: 12 }),
        fc.array(fc.tuple(range, range, range)),
        (boxes, asked) => {
          const table: Table = {
            chains: [
              {
                name: 'prerouting',
                base: { type: 'filter', hook: 'prerouting', priority: 0 },
                rules: [
                  { match: [], then: [{ kind: 'classify', family: 4, ports: true, map: 'rules4' }] },
                  { match: [], then: [{ kind: 'verdict', verdict: 'drop' }] },
                ],
              },
              ...marking(boxes.length),
            ],
            sets: [
              {
                name: 'rules4',
                type: 'ipv4_addr . ipv4_addr . inet_service : verdict',
                map: true,
                interval: true,
                elements: boxes.map((b, i) => ({
                  key: [
                    { kind: 'addresses', first: address(b.sources[0]), last: address(b.sources[1]) },
                    { kind: 'addresses', first: `192.0.2.${b.destinations[0]}`, last: `192.0.2.${b.destinations[1]}` },
                    { kind: 'ports', first: b.ports[0], last: b.ports[1] },
                  ],
                  value: { kind: 'goto', chain: `element${i}` },
                })),
              },
            ],
            objects: [],
          };
          const index = new TableIndex(table);
          for (const [[source], [destination], [port]] of asked) {
            const holds = (r: readonly [number, number], v: number) => r[0] <= v && v <= r[1];
            const first = boxes.findIndex(
              (b) => holds(b.sources, source) && holds(b.destinations, destination) && holds(b.ports, port),
            );
            const result = trace(index, 'prerouting', packet(source, destination, port));
            expect(result.verdict === 'drop' ? -1 : result.mark - 1).toBe(first);
          }
        },
      ),
    );
  });

  it('finds addresses and prefixes of both families in a set', () => {
    const elements = ['10.0.0.1', '10.0.0.8/29', '10.0.1.0/24', 'fd00::1', 'fd00:1::/64'];
    const table: Table = {
      chains: [
        {
          name: 'prerouting',
          base: { type: 'filter', hook: 'prerouting', priority: 0 },
          rules: [
            { match: [{ kind: 'saddr', family: 4, set: 'served4' }], then: [{ kind: 'verdict', verdict: 'accept' }] },
            { match: [{ kind: 'saddr', family: 6, set: 'served6' }], then: [{ kind: 'verdict', verdict: 'accept' }] },
            { match: [], then: [{ kind: 'verdict', verdict: 'drop' }] },
          ],
        },
      ],
      sets: [4, 6].map((family) => ({
        name: `served${family}`,
        type: family === 4 ? 'ipv4_addr' : 'ipv6_addr',
        interval: true,
        elements: elements
          .filter((e) => e.includes(':') === (family === 6))
          .map((e) => ({ key: [{ kind: 'address' as const, address: e }] })),
      })),
      objects: [],
    };
    const index = new TableIndex(table);
    const asked = ['10.0.0.1', '10.0.0.2', '10.0.0.15', '10.0.0.16', '10.0.1.200', 'fd00::1', 'fd00::2', 'fd00:1::5'];
    for (const saddr of asked) {
      const family = saddr.includes(':') ? 6 : 4;
      const result = trace(index, 'prerouting', {
        family,
        saddr,
        daddr: family === 4 ? '192.0.2.1' : '2001:db8::1',
        protocol: 'udp',
      });
      expect([saddr, result.verdict]).toEqual([saddr, elements.some((e) => contains(e, saddr)) ? 'accept' : 'drop']);
    }
  });
});
