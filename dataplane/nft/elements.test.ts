// Set and map elements are data, rendered to nft text in one place: the text the kernel gets, the
// in-memory table and the packet tracer must agree on them, IPv6 keys and concatenations included.
import { renderRule, renderTable, type SetElement, type Table } from './model.ts';
import { FakeNftables, operationText, planSync } from './nftables.ts';
import { trace, type Packet } from './trace.ts';

const flow = (
  address: string,
  protocol: 'tcp' | 'udp',
  port: number,
  chain: string,
  kind: 'goto' | 'jump' = 'goto',
): SetElement => ({
  key: [
    { kind: 'address', address },
    { kind: 'protocol', protocol },
    { kind: 'port', port },
  ],
  value: { kind, chain },
});

const stamp = (address: string, dscp: number, chain: string): SetElement => ({
  key: [
    { kind: 'address', address },
    { kind: 'dscp', dscp },
  ],
  value: { kind: 'goto', chain },
});

const marking = (name: string, value: number, then: 'accept' | 'return'): Table['chains'][number] => ({
  name,
  rules: [
    { match: [], then: [{ kind: 'setMark', mask: 0xffff, value }] },
    { match: [], then: [{ kind: 'verdict', verdict: then }] },
  ],
});

/** Built afresh on each call, so that nothing below can rely on elements being the same objects. */
const table = (): Table => ({
  objects: [],
  sets: [
    {
      name: 'sources6',
      type: 'ipv6_addr',
      interval: true,
      elements: [{ key: [{ kind: 'address', address: 'fd00:244:1::/64' }] }],
    },
    {
      name: 'flows6',
      type: 'ipv6_addr . inet_proto . inet_service : verdict',
      map: true,
      elements: [
        flow('fd00:244:1::7', 'tcp', 40000, 'app_a'),
        flow('fd00:244:1::7', 'udp', 5353, 'app_b'),
        flow('fd00:244:1::8', 'tcp', 40000, 'audit', 'jump'),
      ],
    },
    {
      name: 'stamps6',
      type: 'ipv6_addr . dscp : verdict',
      map: true,
      elements: [stamp('fd00:244:1::7', 42, 'app_b')],
    },
  ],
  chains: [
    {
      name: 'prerouting',
      base: { type: 'filter', hook: 'prerouting', priority: -150 },
      rules: [
        {
          match: [
            { kind: 'family', family: 6 },
            { kind: 'saddr', family: 6, set: 'sources6', negate: true },
          ],
          then: [{ kind: 'verdict', verdict: 'return' }],
        },
        {
          match: [
            { kind: 'family', family: 6 },
            { kind: 'dscpStamped', family: 6 },
          ],
          then: [{ kind: 'lookupStamp', family: 6, map: 'stamps6' }],
        },
        { match: [{ kind: 'family', family: 6 }], then: [{ kind: 'lookupFlow', family: 6, map: 'flows6' }] },
        { match: [], then: [{ kind: 'verdict', verdict: 'drop' }] },
      ],
    },
    marking('app_a', 1, 'accept'),
    marking('app_b', 2, 'accept'),
    marking('audit', 3, 'return'),
  ],
});

// The source is written the long way: the tracer compares addresses, not their spelling.
const packet = (protocol: 'tcp' | 'udp', sport: number, extra: Partial<Packet> = {}): Packet => ({
  family: 6,
  saddr: 'fd00:244:1:0:0:0:0:7',
  daddr: '2001:db8::10',
  protocol,
  sport,
  dport: 443,
  ...extra,
});

/** Each element as nft gets it, and where the tracer takes a packet of its key. */
const cases: Array<{ line: string; packet: Packet; path: string[]; verdict: 'accept' | 'drop'; mark: number }> = [
  {
    line: 'flows6 fd00:244:1::7 . tcp . 40000 : goto app_a',
    packet: packet('tcp', 40000),
    path: ['prerouting', 'app_a'],
    verdict: 'accept',
    mark: 1,
  },
  {
    line: 'flows6 fd00:244:1::7 . udp . 5353 : goto app_b',
    packet: packet('udp', 5353),
    path: ['prerouting', 'app_b'],
    verdict: 'accept',
    mark: 2,
  },
  // A jump comes back: the packet goes on to the rule after the lookup, which drops it.
  {
    line: 'flows6 fd00:244:1::8 . tcp . 40000 : jump audit',
    packet: packet('tcp', 40000, { saddr: 'fd00:244:1::8' }),
    path: ['prerouting', 'audit'],
    verdict: 'drop',
    mark: 3,
  },
  {
    line: 'stamps6 fd00:244:1::7 . 0x2a : goto app_b',
    packet: packet('udp', 9999, { dscp: 42 }),
    path: ['prerouting', 'app_b'],
    verdict: 'accept',
    mark: 2,
  },
];

async function synced(): Promise<FakeNftables> {
  const nft = new FakeNftables();
  await nft.run(planSync(table(), undefined));
  return nft;
}

describe('set and map elements', () => {
  it('render with IPv6 keys, concatenations and verdicts, and the tracer goes where the text says', async () => {
    const rendered = renderTable(table());
    const nft = await synced();
    expect(nft.dump()).toBe(rendered);
    expect(rendered).toContain('\tset sources6 { type ipv6_addr; flags interval; }\n\t\tsources6 fd00:244:1::/64\n');
    for (const c of cases) {
      expect(rendered).toContain(`\t\t${c.line}\n`);
      const result = trace(nft.table()!, 'prerouting', c.packet);
      expect({ path: result.path, verdict: result.verdict, mark: result.mark }).toEqual({
        path: c.path,
        verdict: c.verdict,
        mark: c.mark,
      });
    }
    // No element of that key: the packet goes on to the last rule.
    expect(trace(nft.table()!, 'prerouting', packet('tcp', 40001)).path).toEqual(['prerouting']);
    expect(trace(nft.table()!, 'prerouting', packet('udp', 9999, { dscp: 41 })).verdict).toBe('drop');
  });

  it('are written to the kernel in the text the table renders', () => {
    const adds = planSync(table(), undefined)
      .map(operationText)
      .filter((line) => line.startsWith('add element'));
    expect(adds).toEqual([
      'add element inet naat sources6 { fd00:244:1::/64 }',
      'add element inet naat flows6 { fd00:244:1::7 . tcp . 40000 : goto app_a, ' +
        'fd00:244:1::7 . udp . 5353 : goto app_b, fd00:244:1::8 . tcp . 40000 : jump audit }',
      'add element inet naat stamps6 { fd00:244:1::7 . 0x2a : goto app_b }',
    ]);
  });

  it('are found in the in-memory table by their key, whichever objects hold it', async () => {
    const nft = await synced();
    const before = nft.dump();
    // The same element again changes nothing; the same key going elsewhere is refused.
    await nft.run([
      { op: 'add', what: 'element', set: 'flows6', elements: [flow('fd00:244:1::7', 'tcp', 40000, 'app_a')] },
    ]);
    expect(nft.dump()).toBe(before);
    await expect(
      nft.run([
        { op: 'add', what: 'element', set: 'flows6', elements: [flow('fd00:244:1::7', 'tcp', 40000, 'app_b')] },
      ]),
    ).rejects.toThrow(/File exists/);
    await expect(
      nft.run([{ op: 'add', what: 'element', set: 'flows6', elements: [flow('fd00:244:1::9', 'tcp', 1, 'nowhere')] }]),
    ).rejects.toThrow(/chain nowhere/);
    // A chain an element goes to cannot be deleted while the element is there.
    await expect(
      nft.run([
        { op: 'flush', what: 'chain', name: 'app_a' },
        { op: 'delete', what: 'chain', name: 'app_a' },
      ]),
    ).rejects.toThrow(/busy/);

    await nft.run([
      { op: 'delete', what: 'element', set: 'flows6', elements: [flow('fd00:244:1::7', 'udp', 5353, 'app_b')] },
    ]);
    expect(nft.dump()).toBe(before.replace('\t\tflows6 fd00:244:1::7 . udp . 5353 : goto app_b\n', ''));
    expect(trace(nft.table()!, 'prerouting', packet('udp', 5353)).verdict).toBe('drop');
    await expect(
      nft.run([
        { op: 'delete', what: 'element', set: 'flows6', elements: [flow('fd00:244:1::7', 'udp', 5353, 'app_b')] },
      ]),
    ).rejects.toThrow(/No such file/);
  });
});

describe('elements of interval maps of concatenations', () => {
  const box = (source: [string, string], destination: [string, string], ports: [number, number], chain: string) => ({
    key: [
      { kind: 'addresses' as const, first: source[0], last: source[1] },
      { kind: 'addresses' as const, first: destination[0], last: destination[1] },
      { kind: 'ports' as const, first: ports[0], last: ports[1] },
    ],
    value: { kind: 'goto' as const, chain },
  });
  const rules: Table = {
    objects: [],
    sets: [
      {
        name: 'rules4',
        type: 'ipv4_addr . ipv4_addr . inet_service : verdict',
        map: true,
        interval: true,
        elements: [
          box(['10.244.10.2', '10.244.10.51'], ['0.0.0.0', '255.255.255.255'], [23, 23], 'app_a'),
          box(['10.0.0.0', '10.255.255.255'], ['192.0.2.0', '192.0.2.255'], [8000, 8080], 'app_b'),
        ],
      },
    ],
    chains: [
      {
        name: 'prerouting',
        base: { type: 'filter', hook: 'prerouting', priority: -150 },
        rules: [
          {
            match: [
              { kind: 'family', family: 4 },
              { kind: 'l4proto', protocols: ['tcp'] },
            ],
            then: [{ kind: 'classify', family: 4, ports: true, map: 'rules4' }],
          },
          { match: [], then: [{ kind: 'verdict', verdict: 'drop' }] },
        ],
      },
      marking('app_a', 1, 'accept'),
      marking('app_b', 2, 'accept'),
    ],
  };
  const to = (saddr: string, daddr: string, dport: number): Packet => ({
    family: 4,
    saddr,
    daddr,
    protocol: 'tcp',
    sport: 40000,
    dport,
  });

  it('render ranges as nft lists them, prefixes where they are, and the tracer finds the box that holds a packet', () => {
    const rendered = renderTable(rules);
    expect(rendered).toContain('\t\trules4 10.244.10.2-10.244.10.51 . 0.0.0.0/0 . 23 : goto app_a\n');
    expect(rendered).toContain('\t\trules4 10.0.0.0/8 . 192.0.2.0/24 . 8000-8080 : goto app_b\n');
    expect(renderRule(rules.chains[0]!.rules[0]!)).toBe(
      'meta nfproto ipv4 meta l4proto tcp ip saddr . ip daddr . th dport vmap @rules4',
    );
    const mark = (packet: Packet) => trace(rules, 'prerouting', packet);
    expect(mark(to('10.244.10.51', '198.51.100.1', 23)).mark).toBe(1);
    expect(mark(to('10.244.10.2', '192.0.2.255', 8080)).mark).toBe(2);
    expect(mark(to('10.244.10.52', '198.51.100.1', 23)).verdict).toBe('drop');
    expect(mark(to('10.244.10.2', '192.0.3.0', 8000)).verdict).toBe('drop');
    expect(mark(to('10.244.10.2', '192.0.2.1', 8081)).verdict).toBe('drop');
  });
});
