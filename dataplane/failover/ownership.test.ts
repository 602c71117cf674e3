import { rendezvous } from '../../common/index.ts';
import {
  apiserverOutage,
  decideOwnership,
  emptyMemory,
  fenceDeadline,
  type FailoverSettings,
  type NodeLease,
  type OwnershipInput,
  type OwnershipMemory,
} from './ownership.ts';

const L = 600;
const X = '203.0.113.10';
const failover = (overrides: Partial<FailoverSettings> = {}): FailoverSettings => ({
  addresses: [{ address: X, uplink: 'isp1' }],
  leaseDurationMs: L,
  failback: false,
  failbackDelaySeconds: 30,
  nodes: ['g1', 'g2', 'g3'].map((node, i) => ({ node, addresses: [`10.0.0.${i + 1}`] })),
  draining: [],
  ...overrides,
});
// The nodes in the order rendezvous prefers them for X.
const [first, second, third] = ['g1', 'g2', 'g3'].sort((a, b) => (rendezvous(X, [a, b]) === a ? -1 : 1)) as [
  string,
  string,
  string,
];

const lease = (node: string, observedAt: number, overrides: Partial<NodeLease> = {}): NodeLease => ({
  node,
  addresses: [],
  healthyUplinks: ['isp1'],
  draining: false,
  replicaReady: true,
  observedAt,
  ...overrides,
});

/** A settled node at `now`: renewing, and reaching the apiserver for longer than a lease duration. */
const settled: OwnershipMemory = {
  ...emptyMemory,
  reachableSince: 0,
  currentSince: 0,
  eligibleSince: new Map([['isp1', 0]]),
  replicaReadySince: 0,
};

function input(node: string, now: number, overrides: Partial<OwnershipInput> = {}): OwnershipInput {
  return {
    failover: failover(),
    node,
    now,
    owned: new Set(),
    renewedAt: now - 10,
    healthyUplinks: new Set(['isp1']),
    draining: false,
    replicaReady: true,
    peersHeard: new Map(),
    ...overrides,
    // Its own Lease, as the others see it: renewed just now.
    leases: [...(overrides.leases ?? []), lease(node, now)],
  };
}

test('a node claims nothing for a lease duration after it first reaches the apiserver, then what it wins', () => {
  const leases = [lease(second, 0), lease(third, 0)];
  const start = decideOwnership(input(first, 1000, { leases, renewedAt: 1000 }), emptyMemory);
  expect(start.claims).toEqual([]);
  expect(start.wakeAt).toBe(1000 + L);
  // Eligible itself only once its own Lease has said so for a lease duration: until then another
  // node was preferred, which may have been claiming; its next renewal shows it was not.
  const settling = decideOwnership(
    input(first, 1000 + L, { leases: leases.map((l) => ({ ...l, observedAt: 1000 + L - 50 })) }),
    start.memory,
  );
  expect(settling.claims).toEqual([]);
  const later = decideOwnership(
    input(first, 1000 + L + 20, { leases: leases.map((l) => ({ ...l, observedAt: 1000 + L + 10 })) }),
    settling.memory,
  );
  expect(later.claims).toEqual([{ address: X, reason: 'Unowned' }]);
  expect([...later.owned]).toEqual([X]);
  // The others never claim what the winner may take.
  const other = decideOwnership(input(second, 5000, { leases: [lease(first, 4990)] }), settled);
  expect(other.claims).toEqual([]);
});

test('the owner keeps its address while eligible, though another node is preferred (no failback)', () => {
  const decision = decideOwnership(
    input(second, 5000, { owned: new Set([X]), leases: [lease(first, 4990), lease(third, 4990)] }),
    settled,
  );
  expect([...decision.owned]).toEqual([X]);
  expect(decision.releases).toEqual([]);
  const preferred = decideOwnership(
    input(first, 5000, { leases: [lease(second, 4990, { addresses: [X] }), lease(third, 4990)] }),
    settled,
  );
  expect(preferred.claims).toEqual([]);
});

test('the winner takes an address over from a Lease it has not seen change for a lease duration', () => {
  const owner = lease(second, 4000, { addresses: [X] });
  const alive = decideOwnership(input(first, 4000 + L, { leases: [owner] }), settled);
  expect(alive.claims).toEqual([]);
  expect(alive.wakeAt).toBe(4000 + L + 1);
  const expired = decideOwnership(input(first, 4000 + L + 1, { leases: [owner] }), alive.memory);
  expect(expired.claims).toEqual([{ address: X, reason: 'LeaseExpired', from: second, gapMs: L + 1 }]);
});

test('an address its owner released goes to the winner at once, with the time it had no owner', () => {
  const owning = decideOwnership(input(first, 5000, { leases: [lease(second, 4990, { addresses: [X] })] }), settled);
  const released = lease(second, 5100, { draining: true });
  const claim = decideOwnership(input(first, 5130, { leases: [released] }), owning.memory);
  expect(claim.claims).toEqual([{ address: X, reason: 'Released', from: second, gapMs: 30 }]);
});

test('an owner releases at once when draining, by config or by itself, or when the uplink fails', () => {
  const owns = { owned: new Set([X]), leases: [lease(second, 4990)] };
  const byConfig = input(first, 5000, { ...owns, failover: failover({ draining: [first] }) });
  expect(decideOwnership(byConfig, settled).releases).toEqual([{ address: X, reason: 'drain' }]);
  expect(decideOwnership(input(first, 5000, { ...owns, draining: true }), settled).releases).toEqual([
    { address: X, reason: 'drain' },
  ]);
  const uplinkDown = decideOwnership(input(first, 5000, { ...owns, healthyUplinks: new Set() }), settled);
  expect(uplinkDown.releases).toEqual([{ address: X, reason: 'uplink' }]);
  expect(uplinkDown.owned.size).toBe(0);
  // Nor does a draining node, or one whose uplink fails, take anything.
  expect(decideOwnership(input(first, 5000, { draining: true }), settled).claims).toEqual([]);
  // A draining peer is no candidate: the next node wins.
  const next = decideOwnership(
    input(second, 5000, { leases: [lease(first, 4990, { draining: true }), lease(third, 4990)] }),
    settled,
  );
  expect(next.claims).toEqual([{ address: X, reason: 'Unowned' }]);
});

describe('a replica that is not complete yet', () => {
  const owner = lease(third, 4000, { addresses: [X] });
  const expired = 4000 + L + 1;

  it('makes way for an eligible node whose replica is complete, though rendezvous prefers it', () => {
    const fresh = lease(first, expired - 10, { replicaReady: false });
    const complete = decideOwnership(input(second, expired, { leases: [owner, fresh] }), settled);
    expect(complete.claims).toEqual([{ address: X, reason: 'LeaseExpired', from: third, gapMs: L + 1 }]);
    const starting = decideOwnership(
      input(first, expired, { leases: [owner, lease(second, expired - 10)], replicaReady: false }),
      settled,
    );
    expect(starting.claims).toEqual([]);
  });

  it('still takes an address over when no eligible node has a complete one', () => {
    const alone = decideOwnership(
      input(first, expired, {
        leases: [owner, lease(second, expired - 10, { replicaReady: false })],
        replicaReady: false,
      }),
      settled,
    );
    expect(alone.claims).toEqual([{ address: X, reason: 'LeaseExpired', from: third, gapMs: L + 1 }]);
  });

  it('counts as complete on the node itself only once its own Lease has said so for a lease duration', () => {
    // The others see the node complete only once its Lease says so, and may see that late.
    const leases = [owner, lease(second, expired - 10)];
    const notYet = decideOwnership(input(first, expired, { leases }), { ...settled, replicaReadySince: undefined });
    expect(notYet.claims).toEqual([]);
    expect(notYet.memory.replicaReadySince).toBe(expired);
    const after = decideOwnership(
      input(first, expired + L, { leases: leases.map((l) => ({ ...l, observedAt: expired + L - 10 })) }),
      notYet.memory,
    );
    expect(after.memory.replicaReadySince).toBe(expired);
    // Its own Lease saying it is not complete (an agent that restarted) starts the wait again.
    const restarted = decideOwnership(
      input(first, expired + L, { leases: [lease(first, expired + L, { replicaReady: false })] }),
      notYet.memory,
    );
    expect(restarted.memory.replicaReadySince).toBeUndefined();
  });
});

describe('the fence', () => {
  const owner = (overrides: Partial<OwnershipInput>) =>
    decideOwnership(input(first, 5000, { owned: new Set([X]), renewedAt: 5000 - L - 1, ...overrides }), settled);

  test('gives everything up once the last successful renewal was sent more than a lease duration ago', () => {
    expect(owner({ renewedAt: 5000 - L }).releases).toEqual([]);
    expect(owner({ renewedAt: 5000 - L }).wakeAt).toBe(5001);
    const fenced = owner({ peersHeard: new Map([[second, true]]) });
    expect(fenced.releases).toEqual([{ address: X, reason: 'fence' }]);
    expect(fenced.apiserverReachable).toBe(false);
    // Hearing nobody is a partition of this node, not an outage.
    expect(owner({}).releases).toEqual([{ address: X, reason: 'fence' }]);
  });

  test('moves nothing when none of the peers it hears reaches the apiserver either', () => {
    const outage = owner({
      peersHeard: new Map([
        [second, false],
        [third, false],
      ]),
    });
    expect(outage.releases).toEqual([]);
    expect([...outage.owned]).toEqual([X]);
    expect(
      owner({
        peersHeard: new Map([
          [second, false],
          [third, true],
        ]),
      }).releases,
    ).toEqual([{ address: X, reason: 'fence' }]);
    // A gateway of one node: nobody could take over.
    const alone = failover({ nodes: [{ node: first, addresses: ['10.0.0.1'] }] });
    expect(owner({ failover: alone }).releases).toEqual([]);
  });

  test('after an outage, holds for half a lease duration while a peer that renewed first is heard', () => {
    const renewedAt = 1000;
    const during = decideOwnership(
      input(first, 5000, { owned: new Set([X]), renewedAt, peersHeard: new Map([[second, false]]) }),
      settled,
    );
    expect(during.releases).toEqual([]);
    const peerBack = new Map([[second, true]]);
    const after = (now: number, memory: OwnershipMemory, overrides: Partial<OwnershipInput> = {}) =>
      decideOwnership(
        input(first, now, { owned: new Set([X]), renewedAt, peersHeard: peerBack, ...overrides }),
        memory,
      );
    const held = after(5010, during.memory);
    expect(held.releases).toEqual([]);
    expect(held.wakeAt).toBe(5010 + L / 2);
    // Its own renewal succeeds within that time: nothing moved.
    expect(after(5200, held.memory, { renewedAt: 5150 }).releases).toEqual([]);
    // It does not: the fence falls, before the peer can claim.
    expect(after(5010 + L / 2 - 1, held.memory).releases).toEqual([]);
    expect(after(5010 + L / 2, held.memory).releases).toEqual([{ address: X, reason: 'fence' }]);
  });

  describe('a node back on its renewal schedule', () => {
    const expired = lease(second, 1000, { addresses: [X] });
    // Off schedule for a moment between two decisions: from 5040 until the answer at 5048.
    const lapse = { from: 5040, to: 5048, failed: false };
    const back = (memory: OwnershipMemory, overrides: Partial<OwnershipInput> = {}) =>
      decideOwnership(input(first, 5050, { leases: [expired], renewedAt: 5045, lapse, ...overrides }), memory);
    const waited = (memory: OwnershipMemory) =>
      decideOwnership(input(first, 5048 + L + 1, { leases: [expired], renewedAt: 5045 + L }), memory);
    const claim = { address: X, reason: 'LeaseExpired', from: second, gapMs: 5048 + L + 1 - 1000 };

    test('after answers that came late, with no peer heard saying it lost the apiserver, claims once its watch shows a later renewal', () => {
      // Its watch has shown only a write sent before the lapse ended: it may lag as the answers did.
      const lagging = back(settled, { ownWriteSeen: 5045 });
      expect(lagging.claims).toEqual([]);
      const caughtUp = decideOwnership(
        input(first, 5060, { leases: [expired], renewedAt: 5055, ownWriteSeen: 5055 }),
        lagging.memory,
      );
      expect(caughtUp.claims).toEqual([{ ...claim, gapMs: 5060 - 1000 }]);
    });

    test('claims nothing for a lease duration after a peer off its own schedule heard it', () => {
      // The peer said so during the lapse, or a little before: it may hold its addresses on its word.
      for (const memory of [settled, { ...settled, heardOutageAt: 5040 - L }]) {
        const peerDown = memory === settled ? new Map([[third, false]]) : new Map([[third, true]]);
        const first = back(memory, { peersHeard: peerDown });
        expect(first.claims).toEqual([]);
        expect(waited(first.memory).claims).toEqual([claim]);
      }
      // Long before: it cannot.
      expect(back({ ...settled, heardOutageAt: 5040 - L - 1 }, { ownWriteSeen: 5049 }).claims).toHaveLength(1);
    });

    test('claims nothing for a lease duration after a request failed', () => {
      const first = back(settled, { lapse: { ...lapse, failed: true } });
      expect(first.claims).toEqual([]);
      expect(waited(first.memory).claims).toEqual([claim]);
    });
  });

  test('claims nothing without the apiserver, and waits a lease duration after regaining it', () => {
    const stale = lease(second, 1000, { addresses: [X] });
    const cut = decideOwnership(input(first, 9000, { leases: [stale], renewedAt: 1000 }), settled);
    expect(cut.claims).toEqual([]);
    const back = decideOwnership(
      input(first, 9100, { leases: [stale], renewedAt: 9100, lapse: { from: 1000 + L / 2, to: 9100, failed: true } }),
      cut.memory,
    );
    expect(back.claims).toEqual([]);
    expect(back.wakeAt).toBe(9100 + L);
    const waited = decideOwnership(input(first, 9100 + L + 1, { leases: [stale] }), back.memory);
    expect(waited.claims).toEqual([{ address: X, reason: 'LeaseExpired', from: second, gapMs: 9100 + L + 1 - 1000 }]);
  });
});

describe('failback', () => {
  const withFailback = failover({ failback: true, failbackDelaySeconds: 1 });

  test('the owner gives the address to the preferred node once it has been eligible for the delay', () => {
    let memory = settled;
    // The preferred node, heard saying it reaches the apiserver.
    let peersHeard = new Map([[first, true]]);
    const at = (now: number) => {
      const decision = decideOwnership(
        input(second, now, {
          failover: withFailback,
          owned: new Set([X]),
          leases: [lease(first, now - 10)],
          peersHeard,
        }),
        memory,
      );
      memory = decision.memory;
      return decision;
    };
    expect(at(10_000).releases).toEqual([]);
    expect(at(10_500).wakeAt).toBe(11_000);
    peersHeard = new Map([[first, false]]);
    expect(at(11_000).releases).toEqual([]);
    peersHeard = new Map([[first, true]]);
    expect(at(11_000).releases).toEqual([{ address: X, reason: 'failback' }]);
  });

  test('waits at least a lease duration, so that the preferred node is past its own wait', () => {
    const soon = failover({ failback: true, failbackDelaySeconds: 0 });
    const heard = new Map([[first, true]]);
    const first_ = decideOwnership(
      input(second, 10_000, { failover: soon, owned: new Set([X]), leases: [lease(first, 9990)], peersHeard: heard }),
      settled,
    );
    expect(first_.releases).toEqual([]);
    const later = decideOwnership(
      input(second, 10_000 + L, {
        failover: soon,
        owned: new Set([X]),
        leases: [lease(first, 10_590)],
        peersHeard: heard,
      }),
      first_.memory,
    );
    expect(later.releases).toEqual([{ address: X, reason: 'failback' }]);
  });

  test('the preferred node claims it back with reason Failback', () => {
    const owning = decideOwnership(
      input(first, 20_000, { failover: withFailback, leases: [lease(second, 19_990, { addresses: [X] })] }),
      settled,
    );
    const claim = decideOwnership(
      input(first, 20_020, { failover: withFailback, leases: [lease(second, 20_010)] }),
      owning.memory,
    );
    expect(claim.claims).toEqual([{ address: X, reason: 'Failback', from: second, gapMs: 10 }]);
  });
});

test('after a partition heals, of two owners the rendezvous winner among them keeps the address', () => {
  const both = (node: string, other: string) =>
    decideOwnership(
      input(node, 5000, { owned: new Set([X]), leases: [lease(other, 4990, { addresses: [X] })] }),
      settled,
    );
  expect(both(first, second).releases).toEqual([]);
  expect(both(second, first).releases).toEqual([{ address: X, reason: 'conflict' }]);
});

test('a node counts itself eligible only once its Lease tells the others', () => {
  // first's uplink is back, but its Lease still says it is down: second is the winner for all.
  const unpublished = input(first, 5000, { leases: [lease(second, 4990)] });
  unpublished.leases = [lease(second, 4990), lease(first, 4995, { healthyUplinks: [] })];
  expect(decideOwnership(unpublished, settled).claims).toEqual([]);
});

test('a new winner waits for the node preferred before it, which may be claiming', () => {
  // second was the winner while first's uplink was down.
  const before = decideOwnership(
    input(first, 5000, { healthyUplinks: new Set(), leases: [lease(second, 4990)] }),
    settled,
  );
  // first is back and the winner; second's Lease has not changed since: it may be applying a claim.
  const back = decideOwnership(input(first, 5100, { leases: [lease(second, 4990)] }), before.memory);
  expect(back.claims).toEqual([]);
  // second renewed without the address: it claimed nothing.
  const renewed = decideOwnership(input(first, 5200, { leases: [lease(second, 5150)] }), back.memory);
  expect(renewed.claims).toEqual([{ address: X, reason: 'Unowned' }]);
  // Or a lease duration passed: had it claimed without being able to say so, it is fenced now.
  const waited = decideOwnership(input(first, 5100 + L, { leases: [lease(second, 5090)] }), back.memory);
  expect(waited.claims).toEqual([{ address: X, reason: 'Unowned' }]);
});

test('a node whose watch no longer shows its own renewals claims nothing', () => {
  const stalled = input(first, 5000, { leases: [lease(second, 3000, { addresses: [X] })] });
  stalled.leases = [lease(second, 3000, { addresses: [X] }), lease(first, 3000)];
  expect(decideOwnership(stalled, settled).claims).toEqual([]);
});

test('a node whose watch comes back takes nothing over for a lease duration, though its own Lease is seen first', () => {
  // It renewed all along but saw no change for seconds; then the watch delivers its own Lease
  // before the other's, which lists X but was last seen changing long ago.
  const other = lease(second, 3000, { addresses: [X] });
  const stalled = input(first, 6000, { leases: [other] });
  stalled.leases = [other, lease(first, 3000)];
  const during = decideOwnership(stalled, settled);
  expect(during.claims).toEqual([]);
  const back = decideOwnership(input(first, 6100, { leases: [other] }), during.memory);
  expect(back.claims).toEqual([]);
  expect(back.wakeAt).toBeLessThanOrEqual(6100 + L);
  // The other's Lease comes next, still listing X: it keeps it.
  const caughtUp = decideOwnership(input(first, 6150, { leases: [{ ...other, observedAt: 6150 }] }), back.memory);
  expect(caughtUp.claims).toEqual([]);
  expect(caughtUp.releases).toEqual([]);
  // Had the other stopped renewing, a lease duration after the watch came back it is taken over.
  expect(decideOwnership(input(first, 6101 + L, { leases: [other] }), back.memory).claims).toEqual([
    { address: X, reason: 'LeaseExpired', from: second, gapMs: 6101 + L - 3000 },
  ]);
});

test('a node that falls behind its renewals says it does not reach the apiserver, and claims nothing', () => {
  const behind = decideOwnership(input(first, 5000, { renewedAt: 5000 - L / 2 - 1 }), settled);
  expect(behind.apiserverReachable).toBe(false);
  expect(behind.claims).toEqual([]);
  expect(decideOwnership(input(first, 5000, { renewedAt: 5000 - L / 2 }), settled).apiserverReachable).toBe(true);
});

test('an address taken out of the config is given up at once', () => {
  const decision = decideOwnership(input(first, 5000, { owned: new Set([X, '198.51.100.1']) }), settled);
  expect(decision.releases).toEqual([{ address: '198.51.100.1', reason: 'removed' }]);
  expect([...decision.owned]).toEqual([X]);
});

test('back from an apiserver outage, an owner keeps its address though a Lease long unchanged lists it too', () => {
  const stale = lease(first, 1000, { addresses: [X] });
  const cut = decideOwnership(
    input(second, 9000, {
      owned: new Set([X]),
      renewedAt: 1000,
      leases: [stale],
      peersHeard: new Map([[third, false]]),
    }),
    settled,
  );
  expect([...cut.owned]).toEqual([X]);
  const back = decideOwnership(input(second, 9100, { owned: new Set([X]), leases: [stale] }), cut.memory);
  expect(back.releases).toEqual([]);
  // A node that renews listing it, though, is a second owner: the rendezvous winner keeps it.
  const renewing = lease(first, 9150, { addresses: [X] });
  expect(
    decideOwnership(input(second, 9200, { owned: new Set([X]), leases: [renewing] }), back.memory).releases,
  ).toEqual([{ address: X, reason: 'conflict' }]);
});

describe('the kernel fence deadline', () => {
  it('is a lease duration after the last successful renewal request, which no other node claims before', () => {
    expect(fenceDeadline(1000, 1200, L, false)).toBe(1000 + L);
    // Passed: the agent's own fence falls now, nothing is extended.
    expect(fenceDeadline(1000, 1000 + L, L, false)).toBeUndefined();
    expect(fenceDeadline(undefined, 1200, L, false)).toBeUndefined();
  });

  it('moves on without renewals through an apiserver outage, which keeps the addresses', () => {
    expect(fenceDeadline(1000, 5000, L, true)).toBe(5000 + L);
    expect(fenceDeadline(undefined, 5000, L, true)).toBe(5000 + L);
  });

  it('counts an outage when the other nodes heard directly all fail to reach the apiserver, or there are none', () => {
    const settings = failover();
    expect(apiserverOutage(settings, 'g1', new Map([['g2', false]]))).toBe(true);
    expect(
      apiserverOutage(
        settings,
        'g1',
        new Map([
          ['g2', false],
          ['g3', true],
        ]),
      ),
    ).toBe(false);
    // Hearing nobody is this node's partition, not an outage.
    expect(apiserverOutage(settings, 'g1', new Map())).toBe(false);
    expect(apiserverOutage(failover({ nodes: [{ node: 'g1', addresses: ['10.0.0.1'] }] }), 'g1', new Map())).toBe(true);
  });
});

test('an address an alive other node lists is held elsewhere; one listed by a Lease that lapsed, or by this node, is not', () => {
  const Y = '203.0.113.20';
  const both = failover({
    addresses: [
      { address: X, uplink: 'isp1' },
      { address: Y, uplink: 'isp1' },
    ],
  });
  const now = 10_000;
  const alive = lease(second, now - 100, { addresses: [X] });
  const lapsed = lease(third, now - L - 100, { addresses: [Y] });
  const decision = decideOwnership(input(first, now, { failover: both, leases: [alive, lapsed] }), settled);
  expect(decision.elsewhere).toEqual([X]);
  const own = decideOwnership(
    input(first, now, { failover: both, owned: new Set([Y]), leases: [lease(second, now - 100)] }),
    settled,
  );
  expect(own.elsewhere).toEqual([]);
});
