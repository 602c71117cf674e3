// Gateway nodes that share one consistent view of the failover Leases (each change seen by all at
// the instant it is written) go through random sequences of power-offs, returns, apiserver losses,
// drains and uplink failures. At every instant, no two running nodes decide to own the same
// address; and once everything is back and quiet, every address has exactly one owner.
import fc from 'fast-check';
import {
  decideOwnership,
  emptyMemory,
  renewingOnSchedule,
  type FailoverSettings,
  type NodeLease,
  type OwnershipMemory,
} from './ownership.ts';

const L = 300;
const addresses = [
  { address: '203.0.113.10', uplink: 'isp1' },
  { address: '203.0.113.11', uplink: 'isp2' },
  { address: '2001:db8::a', uplink: 'isp1' },
];
const uplinks = ['isp1', 'isp2'];

type Event =
  | { kind: 'tick'; ms: number }
  | { kind: 'power' | 'apiserver' | 'drain' | 'leaving'; node: number; on: boolean }
  | { kind: 'uplink'; node: number; uplink: string; on: boolean };

const event = (nodes: number): fc.Arbitrary<Event> => {
  const node = fc.nat(nodes - 1);
  return fc.oneof(
    { weight: 4, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.integer({ min: 1, max: L / 2 }) }) },
    fc.record({ kind: fc.constantFrom('power', 'apiserver', 'drain', 'leaving'), node, on: fc.boolean() }),
    fc.record({ kind: fc.constant('uplink' as const), node, uplink: fc.constantFrom(...uplinks), on: fc.boolean() }),
  );
};

interface SimNode {
  name: string;
  running: boolean;
  apiserver: boolean;
  leaving: boolean;
  uplinks: Set<string>;
  owned: Set<string>;
  memory: OwnershipMemory;
  renewedAt: number | undefined;
}

class Gateway {
  now = 0;
  readonly nodes: SimNode[];
  readonly leases = new Map<string, NodeLease>();
  readonly draining = new Set<string>();
  readonly settings: Omit<FailoverSettings, 'draining'>;

  constructor(count: number, failback: boolean, failbackDelaySeconds: number) {
    this.nodes = Array.from({ length: count }, (_, i) => ({
      name: `g${i + 1}`,
      running: true,
      apiserver: true,
      leaving: false,
      uplinks: new Set(uplinks),
      owned: new Set<string>(),
      memory: emptyMemory,
      renewedAt: undefined,
    }));
    this.settings = {
      addresses,
      leaseDurationMs: L,
      failback,
      failbackDelaySeconds,
      nodes: this.nodes.map((n, i) => ({ node: n.name, addresses: [`10.0.0.${i + 1}`] })),
    };
  }

  apply(e: Event): void {
    if (e.kind === 'tick') {
      this.now += e.ms;
      return;
    }
    const node = this.nodes[e.node];
    if (!node) return;
    switch (e.kind) {
      case 'power':
        if (e.on && !node.running) Object.assign(node, { owned: new Set(), memory: emptyMemory, renewedAt: undefined });
        node.running = e.on;
        break;
      case 'apiserver':
        node.apiserver = e.on;
        break;
      case 'leaving':
        node.leaving = e.on;
        break;
      case 'drain':
        if (e.on) this.draining.add(node.name);
        else this.draining.delete(node.name);
        break;
      case 'uplink':
        if (e.on) node.uplinks.add(e.uplink);
        else node.uplinks.delete(e.uplink);
    }
  }

  /** Every running node decides on the same view; then those that reach the apiserver write their Lease. */
  step(): Map<string, Set<string>> {
    const failover = { ...this.settings, draining: [...this.draining] };
    const running = this.nodes.filter((n) => n.running);
    const reaches = (n: SimNode) => renewingOnSchedule(n.renewedAt, this.now, L);
    const leases = [...this.leases.values()];
    const decisions = running.map((node) => {
      const peersHeard = new Map(running.filter((p) => p !== node).map((p) => [p.name, reaches(p)]));
      const decision = decideOwnership(
        {
          failover,
          node: node.name,
          now: this.now,
          leases,
          owned: node.owned,
          renewedAt: node.renewedAt,
          healthyUplinks: node.uplinks,
          draining: node.leaving,
          peersHeard,
        },
        node.memory,
      );
      return { node, decision };
    });
    for (const { node, decision } of decisions) {
      node.owned = decision.owned;
      node.memory = decision.memory;
      if (!node.apiserver) continue;
      node.renewedAt = this.now;
      this.leases.set(node.name, {
        node: node.name,
        addresses: [...node.owned].sort(),
        healthyUplinks: [...node.uplinks].sort(),
        draining: node.leaving,
        observedAt: this.now,
      });
    }
    return new Map(decisions.map(({ node, decision }) => [node.name, decision.owned]));
  }
}

function doubleOwners(decided: Map<string, Set<string>>): string[] {
  const owners = new Map<string, string[]>();
  for (const [node, owned] of decided) for (const a of owned) owners.set(a, [...(owners.get(a) ?? []), node]);
  return [...owners].filter(([, nodes]) => nodes.length > 1).map(([a, nodes]) => `${a}: ${nodes.join(', ')}`);
}

test('no two running nodes own one address at the same instant, and all is owned once quiet', () => {
  const scenario = fc.integer({ min: 2, max: 4 }).chain((count) =>
    fc.record({
      count: fc.constant(count),
      failback: fc.boolean(),
      failbackDelaySeconds: fc.constantFrom(0, 1),
      events: fc.array(event(count), { maxLength: 80, size: 'max' }),
    }),
  );
  fc.assert(
    fc.property(scenario, ({ count, failback, failbackDelaySeconds, events }) => {
      const gateway = new Gateway(count, failback, failbackDelaySeconds);
      for (const e of events) {
        gateway.apply(e);
        const decided = gateway.step();
        if (doubleOwners(decided).length) throw new Error(`at ${gateway.now}: ${doubleOwners(decided).join('; ')}`);
      }
      for (let i = 0; i < count; i++) {
        for (const kind of ['power', 'apiserver'] as const) gateway.apply({ kind, node: i, on: true });
        for (const kind of ['drain', 'leaving'] as const) gateway.apply({ kind, node: i, on: false });
        for (const uplink of uplinks) gateway.apply({ kind: 'uplink', node: i, uplink, on: true });
      }
      let decided = gateway.step();
      for (let t = 0; t < 60; t++) {
        gateway.apply({ kind: 'tick', ms: L / 6 });
        decided = gateway.step();
        expect(doubleOwners(decided)).toEqual([]);
      }
      const owned = [...decided.values()].flatMap((set) => [...set]).sort();
      expect(owned).toEqual(addresses.map((a) => a.address).sort());
    }),
    { numRuns: 200 },
  );
});
