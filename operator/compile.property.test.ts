// Properties of compileGateway over random snapshots of the API (gateways, uplinks, policies,
// pods, namespaces and nodes, each valid by the CRDs' schemas): the dataplane accepts every
// config it compiles, and its slices restore its order without positions; the same snapshot in
// any order compiles to the same hash, and a conflict is reported on both policies it involves.
import fc from 'fast-check';
import { validate, type EgressGateway, type EgressPolicy, type Kind, type Uplink } from '../crds/index.ts';
import {
  assembleConfig,
  parseGatewayConfig,
  parseNodeConfig,
  sliceConfig,
  type ConfigSlice,
} from '../contracts/gateway/index.ts';
import { each } from '../test/arbitraries.ts';
import { compileGateway, sidecarContainerName, type PodFacts, type Snapshot, type TunnelFacts } from './compile.ts';
import { desiredNodeConfigs } from './steering.ts';
import type { Labels } from './selector.ts';

function valid<K extends Kind>(kind: K, object: unknown) {
  const result = validate(kind, object);
  if (!result.ok) throw new Error(`generated ${kind} is invalid: ${result.errors.join('; ')}`);
  return result.value;
}

const labels = fc.dictionary(fc.constantFrom('app', 'tier', 'egress'), fc.constantFrom('a', 'b'), { maxKeys: 2 });
const selector = fc.oneof(
  fc.constant({}),
  labels.map((matchLabels) => ({ matchLabels })),
  fc.record({
    matchExpressions: fc.array(
      fc.oneof(
        fc.record({
          key: fc.constantFrom('app', 'tier', 'egress'),
          operator: fc.constantFrom('In', 'NotIn'),
          values: fc.uniqueArray(fc.constantFrom('a', 'b'), { minLength: 1 }),
        }),
        fc.record({
          key: fc.constantFrom('app', 'tier', 'egress'),
          operator: fc.constantFrom('Exists', 'DoesNotExist'),
        }),
      ),
      { minLength: 1, maxLength: 2 },
    ),
  }),
);
const uplinkNames = ['isp-a', 'isp-b', 'isp.c', 'backup', 'lte'];
const v4 = fc.integer({ min: 1, max: 40 }).map((n) => `10.0.0.${n}`);
const v6 = fc.integer({ min: 1, max: 40 }).map((n) => `fd00::${n.toString(16)}`);

const uplink = (name: string) =>
  fc
    .record({
      labels,
      interface: fc.constantFrom('eth1', 'eth2', 'ppp0', 'wg0'),
      nextHop: fc.option(fc.record({ ipv4: fc.constant('192.0.2.1') }), { nil: undefined }),
      addresses: fc.option(fc.uniqueArray(fc.oneof(v4, v6), { minLength: 1, maxLength: 3 }), { nil: undefined }),
      weight: fc.integer({ min: 1, max: 10 }),
      tier: fc.integer({ min: 0, max: 2 }),
      nodeSelector: fc.option(labels, { nil: undefined }),
    })
    .map(
      (u) =>
        valid('Uplink', {
          apiVersion: 'naat.dev/v1alpha1',
          kind: 'Uplink',
          metadata: { name, labels: u.labels },
          spec: JSON.parse(
            JSON.stringify({
              interface: u.interface,
              nextHop: u.nextHop,
              snat: { addresses: u.addresses },
              weight: u.weight,
              tier: u.tier,
              nodeSelector: u.nodeSelector,
            }),
          ),
        }) as Uplink,
    );

const gateway = fc
  .record({
    nodeSelector: labels,
    uplinks: fc.oneof(
      fc.uniqueArray(fc.constantFrom(...uplinkNames, 'missing'), { minLength: 1 }).map((names) => ({ names })),
      selector.map((s) => ({ selector: s })),
    ),
    podSelector: fc.option(selector, { nil: undefined }),
    namespaceSelector: selector,
    mode: fc.constantFrom('Weighted', 'LeastLoaded', 'SourceSticky'),
    defaultAction: fc.constantFrom('Allow', 'Deny'),
    unassociatedFlows: fc.constantFrom('PodRules', 'Hold'),
    failover: fc.option(
      fc.uniqueArray(
        fc.record({
          address: fc.constantFrom('198.51.100.1', '198.51.100.2', '2001:db8:f::1'),
          uplink: fc.constantFrom(...uplinkNames),
        }),
        { minLength: 1, maxLength: 3, selector: (a) => a.address },
      ),
      { nil: undefined },
    ),
  })
  .map(
    (g) =>
      valid('EgressGateway', {
        apiVersion: 'naat.dev/v1alpha1',
        kind: 'EgressGateway',
        metadata: { name: 'gw' },
        spec: JSON.parse(
          JSON.stringify({
            nodeSelector: g.nodeSelector,
            uplinks: g.uplinks,
            podSelector: g.podSelector,
            namespaceSelector: g.namespaceSelector,
            balancing: { mode: g.mode },
            defaultAction: g.defaultAction,
            association: { unassociatedFlows: g.unassociatedFlows },
            failover: g.failover && { addresses: g.failover },
          }),
        ),
      }) as EgressGateway,
  );

const rule = (name: string) =>
  fc
    .record({
      applications: fc.option(
        fc.array(
          fc.oneof(
            fc.record({ processName: fc.constantFrom('curl', 'java') }),
            fc.record({ container: fc.constantFrom('app', 'batch') }),
            fc.record({ executable: fc.constantFrom('/usr/bin/curl', '/opt/**/java'), uid: fc.constantFrom(0, 1000) }),
          ),
          { minLength: 1, maxLength: 2 },
        ),
        { nil: undefined },
      ),
      destinations: fc.option(
        fc.array(
          fc.oneof(
            fc.record({ cidr: fc.constantFrom('203.0.113.0/24', '203.0.113.128/25', '2001:db8::/32') }),
            fc.record({
              protocol: fc.constantFrom('TCP', 'UDP'),
              ports: fc.array(
                fc.constantFrom({ port: 443 }, { port: 80 }, { port: 8000, endPort: 8999 }, { port: 53 }),
                { minLength: 1, maxLength: 2 },
              ),
            }),
            fc.record({ protocol: fc.constantFrom('ICMP', 'Any') }),
          ),
          { minLength: 1, maxLength: 2 },
        ),
        { nil: undefined },
      ),
      action: fc.constantFrom('Allow', 'Deny'),
      allowed: fc.option(fc.uniqueArray(fc.constantFrom(...uplinkNames, 'missing'), { minLength: 1 }), {
        nil: undefined,
      }),
      preferred: fc.option(fc.uniqueArray(fc.constantFrom(...uplinkNames, 'missing'), { minLength: 1 }), {
        nil: undefined,
      }),
    })
    .map((r) => {
      // The CRD's rules: uplinks only for Allow; preferred ones are allowed ones.
      const preferred = r.allowed ? r.preferred?.filter((n) => r.allowed!.includes(n)) : r.preferred;
      const uplinks =
        r.action === 'Allow' && (r.allowed || preferred?.length)
          ? { ...(r.allowed ? { allowed: r.allowed } : {}), ...(preferred?.length ? { preferred } : {}) }
          : undefined;
      return JSON.parse(
        JSON.stringify({ name, applications: r.applications, destinations: r.destinations, action: r.action, uplinks }),
      );
    });

const policy = ([namespace, name]: [string, string]) =>
  fc
    .record({
      gateway: fc.constantFrom('gw', 'gw', 'other'),
      podSelector: selector,
      priority: fc.constantFrom(10, 20),
      rules: fc
        .integer({ min: 1, max: 3 })
        .chain((n) => fc.tuple(...Array.from({ length: n }, (_, i) => rule(`r${i}`)))),
    })
    .map(
      (spec) =>
        valid('EgressPolicy', {
          apiVersion: 'naat.dev/v1alpha1',
          kind: 'EgressPolicy',
          metadata: { namespace, name },
          spec,
        }) as EgressPolicy,
    );

const pod = ([namespace, name]: [string, string]) =>
  fc.record({
    namespace: fc.constant(namespace),
    name: fc.constant(name),
    labels,
    ips: fc.oneof(
      fc.constant<string[]>([]),
      v4.map((a) => [a]),
      fc.tuple(v4, v6).map(([a, b]) => [a, b]),
    ),
    containers: fc.constantFrom(['app'], ['app', sidecarContainerName]),
    strict: fc.boolean(),
    phase: fc.constantFrom('Running', 'Running', 'Pending', 'Succeeded', 'Failed'),
    node: fc.constantFrom('n1', 'n2', 'n3', 'n4'),
    nodeAssociation: fc.option(
      fc.record({
        uid: fc.constantFrom('0f1e', '2d3c'),
        containers: fc.constant([{ id: 'ab'.repeat(32), name: 'app' }]),
      }),
      { nil: undefined },
    ),
  }) satisfies fc.Arbitrary<PodFacts>;

const nodeNames = ['n1', 'n2', 'n3', 'n4'];
/** A node's InternalIP addresses: none, one family or both. */
const internalIps = (i: number) =>
  fc.constantFrom([], [`192.0.2.${i + 1}`], [`2001:db8::${i + 1}`], [`192.0.2.${i + 1}`, `2001:db8::${i + 1}`]);

const namespaces = ['shop', 'other', 'ops'];
const objectKeys = (names: string[], max: number) =>
  fc.uniqueArray(fc.tuple(fc.constantFrom(...namespaces), fc.constantFrom(...names)), {
    maxLength: max,
    selector: ([ns, n]) => `${ns}/${n}`,
  });

const snapshot: fc.Arbitrary<Snapshot> = fc
  .record({
    gateway,
    uplinks: fc.subarray(uplinkNames).chain((names) => each(names.map(uplink))),
    policies: objectKeys(['p1', 'p2', 'p3'], 5).chain((keys) => each(keys.map(policy))),
    pods: objectKeys(['web', 'db', 'batch', 'job'], 8).chain((keys) => each(keys.map(pod))),
    namespaceLabels: each(namespaces.map(() => labels)),
    nodes: fc
      .subarray(nodeNames)
      .chain((names) =>
        each(
          names.map((name) =>
            fc.record({ name: fc.constant(name), labels, addresses: internalIps(nodeNames.indexOf(name)) }),
          ),
        ),
      ),
    bypass: fc.subarray(['10.96.0.0/12', 'fd00:96::/108', '10.244.0.0/16']),
    steering: fc.option(
      fc.constantFrom<TunnelFacts>(
        { tunnel: { vni: 4242, port: 7790 }, markMask: 0x10 },
        { vniTakenBy: 'gx', vni: 4242 },
      ),
      { nil: undefined },
    ),
  })
  .map(({ namespaceLabels, ...s }) => ({
    ...s,
    namespaces: new Map<string, Labels>(namespaces.map((n, i) => [n, namespaceLabels[i]!])),
  }));

/**
 * A snapshot whose gateway serves every pod and whose policies all belong to it at one priority:
 * conflicts, rare in `snapshot`, are common here.
 */
const contested: fc.Arbitrary<Snapshot> = snapshot.map((s) => {
  return {
    ...s,
    gateway: { ...s.gateway, spec: { ...s.gateway.spec, podSelector: undefined, namespaceSelector: {} } },
    policies: s.policies.map((p) => ({ ...p, spec: { ...p.spec, gateway: 'gw', priority: 10 } })),
  };
});

/** The snapshot and the same snapshot with every list (and the namespace map) in another order. */
const permuted = snapshot.chain((s) =>
  fc
    .record({
      uplinks: fc.shuffledSubarray([...s.uplinks], { minLength: s.uplinks.length }),
      policies: fc.shuffledSubarray([...s.policies], { minLength: s.policies.length }),
      pods: fc.shuffledSubarray([...s.pods], { minLength: s.pods.length }),
      nodes: fc.shuffledSubarray([...s.nodes], { minLength: s.nodes.length }),
      namespaces: fc.shuffledSubarray([...s.namespaces], { minLength: s.namespaces.size }),
    })
    .map((p) => [s, { ...s, ...p, namespaces: new Map(p.namespaces) }] as const),
);

/**
 * Two snapshots, the second made of the first's pods and policies (the same objects, as the caches
 * hand on what did not change) mixed with another snapshot's, in its context (gateway, uplinks,
 * nodes, namespaces).
 */
const successive = fc
  .tuple(snapshot, snapshot, fc.infiniteStream(fc.boolean()))
  .map(([first, other, keep]): [Snapshot, Snapshot] => {
    const mix = <T>(a: readonly T[], b: readonly T[], key: (x: T) => string) => {
      const byKey = new Map(b.map((x) => [key(x), x]));
      for (const x of a) if (keep.next().value || !byKey.has(key(x))) byKey.set(key(x), x);
      return [...byKey.values()];
    };
    return [
      first,
      {
        ...other,
        pods: mix(first.pods, other.pods, (p) => `${p.namespace}/${p.name}`),
        policies: mix(first.policies, other.policies, (p) => `${p.metadata.namespace}/${p.metadata.name}`),
      },
    ];
  });

describe('compileGateway, for any snapshot', () => {
  it('compiles a snapshot after another as it compiles it afresh, and its slices too', () => {
    fc.assert(
      fc.property(successive, fc.integer({ min: 300, max: 3000 }), ([first, next], budget) => {
        sliceConfig(compileGateway(first).config, budget);
        const kept = compileGateway(next);
        const afresh = compileGateway(structuredClone(next));
        expect(kept.config).toEqual(afresh.config);
        expect(kept.config.hash).toBe(afresh.config.hash);
        expect(kept.policies).toEqual(afresh.policies);
        expect(sliceConfig(kept.config, budget)).toEqual(sliceConfig(structuredClone(afresh.config), budget));
      }),
      { numRuns: 200 },
    );
  });

  it('compiles a config the dataplane accepts', () => {
    fc.assert(
      fc.property(snapshot, (s) => {
        const { config } = compileGateway(s);
        expect(parseGatewayConfig(JSON.parse(JSON.stringify(config)))).toEqual(config);
      }),
      { numRuns: 150 },
    );
  });

  it('compiles a config in the order its slices restore: none carries a position, all lists derive', () => {
    fc.assert(
      fc.property(snapshot, fc.integer({ min: 300, max: 3000 }), (s, budget) => {
        const { config } = compileGateway(s);
        const { index, slices } = sliceConfig(config, budget);
        const entries = [...slices.values()]
          .map((text) => JSON.parse(text) as ConfigSlice)
          .flatMap((slice) => [...slice.pods, ...slice.policies, ...slice.steering]);
        expect(entries.filter((e) => e.at !== undefined)).toEqual([]);
        // Where pods share an address (one going as another comes), which pods a list came from
        // may not be found again: the index then keeps that list itself.
        const addresses = config.pods.flatMap((p) => p.addresses);
        if (new Set(addresses).size === addresses.length) {
          expect(index.derived).toEqual({ sources: true, sidecarSources: true, strictSources: true });
        }
        expect(assembleConfig(index, slices)).toEqual(config);
      }),
      { numRuns: 150 },
    );
  });

  it('is deterministic: the same snapshot, in any order, compiles to the same config and hash', () => {
    fc.assert(
      fc.property(permuted, ([s, shuffled]) => {
        const a = compileGateway(s);
        const b = compileGateway(shuffled);
        expect(compileGateway(structuredClone(s)).config.hash).toBe(a.config.hash);
        expect(b.config.hash).toBe(a.config.hash);
        expect(b.config).toEqual(a.config);
        expect(b.policies).toEqual(a.policies);
      }),
      { numRuns: 150 },
    );
  });

  it('reports each conflict on both policies, each naming the other', () => {
    let conflicts = 0;
    fc.assert(
      fc.property(fc.oneof(snapshot, contested), (s) => {
        const { policies } = compileGateway(s);
        for (const [name, facts] of policies) {
          for (const text of facts.conflicts) {
            const shadows = /^rule (\S+) overlaps (\S+)#(\S+), which it shadows$/.exec(text);
            const shadowed = /^rule (\S+) is shadowed by (\S+)#(\S+)$/.exec(text);
            expect(shadows ?? shadowed).not.toBeNull();
            conflicts++;
            const [, rule, other, otherRule] = (shadows ?? shadowed)!;
            const mirror = shadows
              ? `rule ${otherRule} is shadowed by ${name}#${rule}`
              : `rule ${otherRule} overlaps ${name}#${rule}, which it shadows`;
            expect(policies.get(other!)?.conflicts).toContain(mirror);
            // Only policies of equal priority that decide differently conflict.
            const [p, q] = [name, other!].map((k) =>
              s.policies.find((x) => `${x.metadata.namespace}/${x.metadata.name}` === k)!,
            );
            expect(p!.spec.priority).toBe(q!.spec.priority);
          }
        }
      }),
      { numRuns: 300 },
    );
    // The generator must actually produce conflicts for this to say anything.
    expect(conflicts).toBeGreaterThan(0);
  });

  it("gives each node that hosts pods away from the gateway's nodes a config of exactly those pods", () => {
    let steered = 0;
    fc.assert(
      fc.property(snapshot, (s) => {
        const compiled = compileGateway(s);
        const configs = desiredNodeConfigs([compiled], { markMask: 0xe0, healthPort: 9091 });
        const addressed = new Set(s.nodes.filter((n) => n.addresses?.length).map((n) => n.name));
        const tunnelled = s.steering && 'tunnel' in s.steering;
        for (const config of configs) {
          expect(parseNodeConfig(JSON.parse(JSON.stringify(config)))).toEqual(config);
          // Never a gateway node for its own gateway: its pods take the local path.
          expect(compiled.nodes).not.toContain(config.node);
          const [entry] = config.gateways;
          expect(entry!.pods).toEqual(
            compiled.away.filter((p) => p.node === config.node).map(({ node: _, ...pod }) => pod),
          );
          // Peers: the gateway's nodes with an uplink there and an address to tunnel to.
          for (const peer of entry!.peers) expect(compiled.nodes).toContain(peer.node);
          steered += entry!.pods.length;
        }
        // Every away pod on a node with an address is steered when the gateway has its tunnel.
        const expected = tunnelled ? compiled.away.filter((p) => addressed.has(p.node)).map((p) => p.node) : [];
        expect(configs.map((c) => c.node)).toEqual([...new Set(expected)].sort());
        expect(compiled.config.steering?.sources.map((n) => n.node) ?? []).toEqual(configs.map((c) => c.node));
      }),
      { numRuns: 300 },
    );
    expect(steered).toBeGreaterThan(0);
  });
});
