import type { V1Lease } from '@kubernetes/client-node';
import { failoverAnnotations, failoverLeaseName, type FailoverClaim } from '../contracts/gateway/index.ts';
import {
  claimEventName,
  claimNote,
  desiredFailoverStatus,
  leftoverLeases,
  readFailoverLease,
  sight,
  type FailoverView,
  type NodeLease,
} from './failover.ts';

/** A gateway node's Lease as its agent writes it. */
function lease(node: string, annotations: Record<string, string>, holder: string | null = node): V1Lease {
  return {
    metadata: { name: failoverLeaseName('gw', node), annotations },
    spec: holder ? { holderIdentity: holder } : {},
  };
}

const claim = (c: FailoverClaim) => JSON.stringify(c);

describe('reading a failover Lease', () => {
  test('takes the addresses, draining flag, duration and last claim from the annotations', () => {
    expect(
      readFailoverLease(
        lease('g1', {
          [failoverAnnotations.addresses]: '192.0.2.10,2001:DB8::0:10',
          [failoverAnnotations.uplinks]: 'isp',
          [failoverAnnotations.draining]: 'true',
          [failoverAnnotations.durationMs]: '900',
          [failoverAnnotations.lastClaim]: claim({
            address: '2001:db8::10',
            from: 'g2',
            at: '2026-12-05T03:00:00.120Z',
            reason: 'LeaseExpired',
            milliseconds: 640,
          }),
        }),
      ),
    ).toEqual({
      lease: 'naat-fo-gw-g1',
      node: 'g1',
      addresses: ['192.0.2.10', '2001:db8::10'],
      draining: true,
      durationMs: 900,
      lastClaim: {
        address: '2001:db8::10',
        from: 'g2',
        at: '2026-12-05T03:00:00.120Z',
        reason: 'LeaseExpired',
        milliseconds: 640,
      },
      problems: [],
    });
  });

  test('reads a node that owns nothing, and no node where the Lease has no holder', () => {
    expect(readFailoverLease(lease('g1', {}))).toEqual({
      lease: 'naat-fo-gw-g1',
      node: 'g1',
      addresses: [],
      draining: false,
      problems: [],
    });
    expect(readFailoverLease(lease('g1', {}, null))).toBeUndefined();
  });

  test('names what is wrong with an annotation and ignores that part', () => {
    const read = (annotation: string, value: string) => readFailoverLease(lease('g1', { [annotation]: value }))!;
    const problems = (annotation: string, value: string) => read(annotation, value).problems;
    expect(read(failoverAnnotations.addresses, '192.0.2.10,eth0')).toMatchObject({
      addresses: ['192.0.2.10'],
      problems: [
        'Lease naat-fo-gw-g1: annotation naat.dev/addresses holds "eth0", not an IP address: "192.0.2.10,eth0"',
      ],
    });
    expect(read(failoverAnnotations.durationMs, '0.5s')).not.toHaveProperty('durationMs');
    expect(problems(failoverAnnotations.durationMs, '0')).toEqual([
      'Lease naat-fo-gw-g1: annotation naat.dev/lease-duration-ms is not a positive whole number of milliseconds: "0"',
    ]);
    const at = '2026-12-05T03:00:00Z';
    for (const [value, why] of [
      ['{', 'is not JSON'],
      ['[]', 'is not a JSON object'],
      [claim({ address: 'x', at, reason: 'Released' }), 'has no IP address in address'],
      [claim({ address: '192.0.2.10', from: '', at, reason: 'Released' }), 'has a from that is not a node name'],
      [claim({ address: '192.0.2.10', at: 'yesterday', reason: 'Released' }), 'has no RFC 3339 time in at'],
      [
        JSON.stringify({ address: '192.0.2.10', at, reason: 'Moved' }),
        'has a reason other than LeaseExpired, Released, Failback, Unowned',
      ],
      [
        claim({ address: '192.0.2.10', at, reason: 'Released', milliseconds: -1 }),
        'has milliseconds that are not a whole number of at least 0',
      ],
    ]) {
      const read = readFailoverLease(lease('g1', { [failoverAnnotations.lastClaim]: value! }))!;
      expect(read.lastClaim).toBeUndefined();
      expect(read.problems).toEqual([
        `Lease naat-fo-gw-g1: annotation naat.dev/last-claim ${why}: ${JSON.stringify(value)}`,
      ]);
    }
  });
});

describe('sightings', () => {
  test('a Lease is seen when it first shows up and again only when its version changes; gone ones are forgotten', () => {
    let seen = sight(
      new Map(),
      [
        { lease: 'a', version: '1' },
        { lease: 'b', version: '5' },
      ],
      100,
    );
    seen = sight(
      seen,
      [
        { lease: 'a', version: '1' },
        { lease: 'b', version: '6' },
      ],
      300,
    );
    expect([...seen]).toEqual([
      ['a', { version: '1', at: 100 }],
      ['b', { version: '6', at: 300 }],
    ]);
    expect([...sight(seen, [{ lease: 'b', version: '6' }], 400)]).toEqual([['b', { version: '6', at: 300 }]]);
  });

  test('the Leases there at the first look are inherited until they change', () => {
    const first = sight(undefined, [{ lease: 'a', version: '1' }], 100);
    expect([...first]).toEqual([['a', { version: '1', at: 100, inherited: true }]]);
    expect([...sight(first, [{ lease: 'a', version: '1' }], 200)]).toEqual([
      ['a', { version: '1', at: 100, inherited: true }],
    ]);
    expect([...sight(first, [{ lease: 'a', version: '2' }], 300)]).toEqual([['a', { version: '2', at: 300 }]]);
  });
});

describe('the failover status', () => {
  const node = (name: string, addresses: string[] = [], more: Partial<NodeLease> = {}): NodeLease => ({
    lease: `lease-${name}`,
    node: name,
    addresses,
    draining: false,
    problems: [],
    ...more,
  });
  const view = (leases: NodeLease[], seenAt: Record<string, number>, now: number, more: Partial<FailoverView> = {}) =>
    desiredFailoverStatus({
      addresses: ['192.0.2.10', '192.0.2.11'],
      leaseDurationMs: 600,
      drained: new Set(),
      leases,
      sightings: new Map(Object.entries(seenAt).map(([n, at]) => [`lease-${n}`, { version: '1', at }])),
      now,
      ...more,
    });

  test('names the owner of each address and the healthy nodes, and when to look again', () => {
    expect(view([node('g1', ['192.0.2.10']), node('g2')], { g1: 1000, g2: 1200 }, 1300)).toEqual({
      status: {
        addresses: [{ address: '192.0.2.10', node: 'g1' }, { address: '192.0.2.11' }],
        healthyNodes: ['g1', 'g2'],
      },
      // g1 was seen at 1000: out of date after 1600.
      recheckInMs: 301,
    });
  });

  test('a node whose Lease was not seen to change for the lease duration owns nothing and is not healthy', () => {
    const leases = [node('g1', ['192.0.2.10']), node('g2')];
    expect(view(leases, { g1: 1000, g2: 1500 }, 1600).status.healthyNodes).toEqual(['g1', 'g2']);
    expect(view(leases, { g1: 1000, g2: 1500 }, 1601)).toEqual({
      status: { addresses: [{ address: '192.0.2.10' }, { address: '192.0.2.11' }], healthyNodes: ['g2'] },
      recheckInMs: 500,
    });
    // A Lease never seen counts as out of date; with no current Lease there is nothing to wait for.
    expect(view(leases, {}, 0)).toEqual({
      status: { addresses: [{ address: '192.0.2.10' }, { address: '192.0.2.11' }] },
    });
  });

  test('after a restart, an unchanged Lease counts as current only if the status written before names its node', () => {
    const leases = [node('g1', ['192.0.2.10']), node('g2', ['192.0.2.11']), node('g3')];
    const sightings = sight(
      undefined,
      leases.map((l) => ({ lease: l.lease, version: '1' })),
      1000,
    );
    // The status named g1 as an owner and g2 as healthy; g3 not at all (it had dropped out).
    const previous = {
      addresses: [{ address: '192.0.2.10', node: 'g1' }, { address: '192.0.2.11' }],
      healthyNodes: ['g2'],
    };
    const status = (now: number, seen = sightings) =>
      desiredFailoverStatus({
        addresses: ['192.0.2.10', '192.0.2.11'],
        leaseDurationMs: 600,
        drained: new Set(),
        leases,
        sightings: seen,
        now,
        previous,
      });
    expect(status(1100)).toEqual({
      status: {
        addresses: [
          { address: '192.0.2.10', node: 'g1' },
          { address: '192.0.2.11', node: 'g2' },
        ],
        healthyNodes: ['g1', 'g2'],
      },
      recheckInMs: 501,
    });
    // Unless it changes within the lease duration, it goes out of date as any other.
    expect(status(1601).status).toEqual({ addresses: [{ address: '192.0.2.10' }, { address: '192.0.2.11' }] });
    // g3 renews: it is seen, and current.
    const renewed = sight(
      sightings,
      leases.map((l) => ({ lease: l.lease, version: l.node === 'g3' ? '2' : '1' })),
      1200,
    );
    expect(status(1300, renewed).status.healthyNodes).toEqual(['g1', 'g2', 'g3']);
  });

  test("a Lease's own duration counts over the gateway's", () => {
    const leases = [node('g1', ['192.0.2.10'], { durationMs: 2000 })];
    expect(view(leases, { g1: 0 }, 1900).status.healthyNodes).toEqual(['g1']);
  });

  test('draining nodes, by their own flag or by the gateway (drainNodes, cordoned), are not healthy but keep what they own', () => {
    const leases = [node('g1', ['192.0.2.10'], { draining: true }), node('g2', ['192.0.2.11']), node('g3')];
    expect(view(leases, { g1: 0, g2: 0, g3: 0 }, 10, { drained: new Set(['g2']) }).status).toEqual({
      addresses: [
        { address: '192.0.2.10', node: 'g1' },
        { address: '192.0.2.11', node: 'g2' },
      ],
      healthyNodes: ['g3'],
    });
  });

  test('of two current Leases that list an address, the node that claimed it last owns it', () => {
    const taken = { address: '192.0.2.10', from: 'g2', at: '2026-12-05T03:00:01Z', reason: 'LeaseExpired' as const };
    const leases = [node('g2', ['192.0.2.10']), node('g3', ['192.0.2.10'], { lastClaim: taken })];
    expect(view(leases, { g2: 0, g3: 0 }, 10).status.addresses![0]).toEqual({ address: '192.0.2.10', node: 'g3' });
    // Neither claimed it: by name.
    expect(
      view([node('g3', ['192.0.2.10']), node('g2', ['192.0.2.10'])], { g2: 0, g3: 0 }, 10).status.addresses![0],
    ).toEqual({
      address: '192.0.2.10',
      node: 'g2',
    });
  });

  test('the last failover is the latest claim of any node, or the one written before if none is later', () => {
    const at = (s: number) => `2026-12-05T03:00:0${s}.000Z`;
    const leases = [
      node('g1', ['192.0.2.10'], { lastClaim: { address: '192.0.2.10', at: at(1), reason: 'Unowned' } }),
      node('g2', ['192.0.2.11'], {
        lastClaim: { address: '192.0.2.11', from: 'g3', at: at(5), reason: 'LeaseExpired', milliseconds: 640 },
      }),
    ];
    const expected = {
      address: '192.0.2.11',
      from: 'g3',
      to: 'g2',
      at: at(5),
      reason: 'LeaseExpired',
      milliseconds: 640,
    };
    expect(view(leases, { g1: 0, g2: 0 }, 10).status.lastFailover).toEqual(expected);
    const earlier = { address: '192.0.2.10', to: 'g1', at: at(3), reason: 'Released' };
    expect(view(leases, { g1: 0, g2: 0 }, 10, { previous: { lastFailover: earlier } }).status.lastFailover).toEqual(
      expected,
    );
    // The Leases no longer say it (say g2's Lease is gone): the status keeps what it said.
    const later = { ...earlier, at: at(7) };
    expect(view(leases, { g1: 0, g2: 0 }, 10, { previous: { lastFailover: later } }).status.lastFailover).toEqual(
      later,
    );
    expect(view([], {}, 10, { previous: { lastFailover: later } }).status.lastFailover).toEqual(later);
  });
});

describe('Leases left behind', () => {
  const leases = [
    { lease: 'l-g1', node: 'g1', durationMs: 600 },
    { lease: 'l-g2', node: 'g2', durationMs: 600 },
    { lease: 'l-g3', node: 'g3' },
  ];
  const sightings = new Map([
    ['l-g1', { version: '1', at: 0 }],
    ['l-g2', { version: '1', at: 1000 }],
    ['l-g3', { version: '1', at: 0 }],
  ]);
  const view = { leases, leaseDurationMs: 5000, sightings };

  test('of gateway nodes are kept however long they went unrenewed', () => {
    expect(leftoverLeases({ ...view, gatewayNodes: new Set(['g1', 'g2', 'g3']), now: 1e9 })).toEqual({
      leftover: [],
    });
  });

  test('of other nodes go once unrenewed for twice their lease duration, and the next is looked at in time', () => {
    expect(leftoverLeases({ ...view, gatewayNodes: new Set(['g3']), now: 1500 })).toEqual({
      leftover: ['l-g1'],
      recheckInMs: 701,
    });
    expect(leftoverLeases({ ...view, gatewayNodes: new Set(['g3']), now: 2201 })).toEqual({
      leftover: ['l-g1', 'l-g2'],
    });
  });

  test('of a gateway gone go too, a Lease without its own duration after twice the one given', () => {
    expect(leftoverLeases({ ...view, gatewayNodes: new Set(), now: 9999 })).toEqual({
      leftover: ['l-g1', 'l-g2'],
      recheckInMs: 2,
    });
    expect(leftoverLeases({ ...view, gatewayNodes: new Set(), now: 10_001 }).leftover).toEqual([
      'l-g1',
      'l-g2',
      'l-g3',
    ]);
  });

  test('never seen are given their full time from now', () => {
    expect(leftoverLeases({ ...view, sightings: new Map(), gatewayNodes: new Set(), now: 50 })).toEqual({
      leftover: [],
      recheckInMs: 1201,
    });
  });
});

describe('claim Events', () => {
  const moved = {
    address: '192.0.2.10',
    from: 'g1',
    to: 'g2',
    at: '2026-12-05T03:00:00.120Z',
    reason: 'LeaseExpired',
    milliseconds: 640,
  };

  test('tell what moved where, why and how long it had no owner', () => {
    expect(claimNote(moved)).toBe('address 192.0.2.10 moved from g1 to g2 (LeaseExpired) after 640 ms');
    expect(claimNote({ address: '192.0.2.10', to: 'g1', at: moved.at, reason: 'Unowned' })).toBe(
      'address 192.0.2.10 claimed by g1 (Unowned)',
    );
  });

  test('are named after the claim alone, so that each claim is told once by any replica', () => {
    expect(claimEventName('gw', moved)).toMatch(/^gw\.failover\.[0-9a-f]{16}$/);
    expect(claimEventName('gw', { ...moved })).toBe(claimEventName('gw', moved));
    expect(claimEventName('gw', { ...moved, at: '2026-12-05T03:00:00.121Z' })).not.toBe(claimEventName('gw', moved));
    expect(claimEventName('gw', { ...moved, to: 'g3' })).not.toBe(claimEventName('gw', moved));
    expect(claimEventName('a'.repeat(253), moved).length).toBeLessThanOrEqual(253);
  });
});
