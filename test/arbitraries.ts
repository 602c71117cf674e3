// fast-check arbitraries for property tests of the config compiler and the ruleset renderer:
// compiled gateway configs as a file or the operator would hold them (JSON, optional fields
// left out), each either valid by the API's rules or broken in one known way whose field the
// parser must name, and the associations and stamps the sidecars would report for it.
import fc from 'fast-check';
import {
  canonicalAddress,
  parseGatewayConfig,
  uplinkMarkMask,
  type GatewayConfig,
} from '../contracts/gateway/index.ts';
import {
  maxUplinkId,
  uplinkMarks,
  type FlowAssociation,
  type RenderInput,
  type StampedApplication,
} from '../dataplane/render.ts';
import { allocateUplinkIds } from '../dataplane/uplink-ids.ts';
import { failoverUplinkIds } from '../dataplane/failover/egress.ts';
import type { Application } from '../proto/index.ts';

/** One value from each arbitrary, in order. */
export const each = <T>(arbitraries: Array<fc.Arbitrary<T>>): fc.Arbitrary<T[]> =>
  arbitraries.length ? fc.tuple(...arbitraries).map((values) => [...values]) : fc.constant([]);

/** Kubernetes object names, with look-alikes that only differ in `-` and `.` and some near the 253 limit. */
export const objectName = fc.oneof(
  { weight: 6, arbitrary: fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?$/) },
  { weight: 2, arbitrary: fc.constantFrom('isp-a', 'isp.a', 'isp-b', 'backup', 'a--b', 'a.b', 'a-b') },
  {
    weight: 1,
    arbitrary: fc
      .tuple(fc.integer({ min: 230, max: 253 }), fc.constantFrom('a', 'b', 'c'))
      .map(([length, last]) => `${'u'.repeat(length - 1)}${last}`),
  },
);

const v4 = fc.ipV4();
const v6 = fc.oneof(fc.ipV6(), fc.constantFrom('fd00::1', '2001:db8::7', 'fe80::1', '::ffff:10.0.0.1'));
const address = fc.oneof(v4, v6);
/** What the API's address types accept (next hops, SNAT addresses, probe targets): no unspecified, loopback or IPv4-mapped address. */
const usableV4 = v4.filter((a) => a !== '0.0.0.0' && !a.startsWith('127.'));
const usableV6 = v6.filter(
  (a) => !['::', '::1'].includes(canonicalAddress(a)) && !canonicalAddress(a).startsWith('::ffff:'),
);
const usableAddress = fc.oneof(usableV4, usableV6);
const prefix = fc.oneof(
  address,
  v4.chain((a) => fc.integer({ min: 0, max: 32 }).map((n) => `${a}/${n}`)),
  v6.chain((a) => fc.integer({ min: 0, max: 128 }).map((n) => `${a}/${n}`)),
);
/** A network written without host bits, as the API's CIDR type requires. */
const cidr = fc.oneof(
  fc.tuple(v4, fc.integer({ min: 0, max: 32 })).map(([a, n]) => maskV4(a, n)),
  fc.constantFrom('2001:db8::/32', 'fd00::/8', '::/0', '2001:db8:1::/48', '2001:db8::1/128'),
);

function maskV4(a: string, length: number): string {
  const value = a.split('.').reduce((v, o) => v * 256 + Number(o), 0);
  const masked = length === 0 ? 0 : Number((BigInt(value) >> BigInt(32 - length)) << BigInt(32 - length));
  return `${[24, 16, 8, 0].map((s) => (masked >>> s) & 255).join('.')}/${length}`;
}

const port = fc.integer({ min: 1, max: 65535 });
const interfaceName = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/);

const portRange = fc
  .tuple(port, port)
  .map(([a, b]) => ({ min: Math.min(a, b), max: Math.max(a, b) }))
  .filter((r) => r.min >= 1);

const healthCheck = fc
  .record({
    targets: fc.uniqueArray(usableAddress, { minLength: 1, maxLength: 3 }),
    protocol: fc.constantFrom('ICMP', 'TCP', 'HTTP'),
    port,
    intervalMs: fc.integer({ min: 100, max: 5000 }),
    failureThreshold: fc.integer({ min: 1, max: 5 }),
    successThreshold: fc.integer({ min: 1, max: 5 }),
    maxLossPercent: fc.integer({ min: 0, max: 100 }),
  })
  .chain((check) =>
    fc.integer({ min: 10, max: check.intervalMs - 1 }).map((timeoutMs) => ({
      ...check,
      timeoutMs,
      port: check.protocol === 'ICMP' ? undefined : check.port,
    })),
  );

const uplink = (name: string) =>
  fc.record({
    name: fc.constant(name),
    nodes: fc.option(fc.subarray(['node-1', 'node-2']), { nil: undefined }),
    interface: interfaceName,
    nextHop: fc.option(
      fc.oneof(
        fc.record({ ipv4: usableV4 }),
        fc.record({ ipv6: usableV6 }),
        fc.record({ ipv4: usableV4, ipv6: usableV6 }),
      ),
      { nil: undefined },
    ),
    snat: fc.record({
      addresses: fc.option(fc.uniqueArray(usableAddress, { minLength: 1, maxLength: 4 }), { nil: undefined }),
      ports: portRange,
    }),
    weight: fc.integer({ min: 1, max: 1000 }),
    tier: fc.oneof(fc.integer({ min: 0, max: 2 }), fc.constant(255)),
    healthCheck: fc.option(healthCheck, { nil: undefined }),
  });

const applicationMatch = fc
  .record({
    processName: fc.option(fc.constantFrom('curl', 'python3', 'java', 'wget'), { nil: undefined }),
    executable: fc.option(fc.constantFrom('/usr/bin/curl', '/opt/**/java', '*/python3', '/usr/bin/?get'), {
      nil: undefined,
    }),
    container: fc.option(fc.constantFrom('app', 'sidecar'), { nil: undefined }),
    uid: fc.option(fc.constantFrom(0, 1000), { nil: undefined }),
  })
  .filter((a) => Object.values(a).some((v) => v !== undefined));

const destination = fc.oneof(
  fc.record({ cidr: fc.option(cidr, { nil: undefined }), protocol: fc.constantFrom('ICMP', 'Any') }),
  fc.record({
    cidr: fc.option(cidr, { nil: undefined }),
    protocol: fc.constantFrom('TCP', 'UDP'),
    ports: fc.option(
      fc.array(
        fc.oneof(
          port.map((p) => ({ port: p })),
          fc.tuple(port, port).map(([a, b]) => ({ port: Math.min(a, b), endPort: Math.max(a, b) })),
        ),
        { minLength: 1, maxLength: 4 },
      ),
      { nil: undefined },
    ),
  }),
);

/** Free text in a rule's name: quotes, backslashes, non-ASCII and long names end up in nft comments. */
const ruleText = fc.oneof(
  { weight: 4, arbitrary: fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?$/) },
  { weight: 1, arbitrary: fc.string({ minLength: 1, maxLength: 200, unit: 'grapheme' }) },
  { weight: 1, arbitrary: fc.constantFrom('say "hi"', 'back\\slash', 'new\nline', 'ünïcödé-€', '😀'.repeat(60)) },
);

const ruleUplinks = (names: string[]) => {
  if (!names.length) return fc.constant(undefined);
  return fc
    .tuple(fc.subarray(names), fc.subarray(names), fc.boolean(), fc.boolean())
    .map(([allowed, preferred, withAllowed, withPreferred]) => {
      const a = withAllowed && allowed.length ? allowed : undefined;
      // Every preferred entry must also be allowed (a CEL rule of the API).
      const p = (withPreferred ? preferred : []).filter((n) => !a || a.includes(n));
      if (!a && !p.length) return undefined;
      return { ...(a ? { allowed: a } : {}), ...(p.length ? { preferred: p } : {}) };
    });
};

const rule = (names: string[], index: number) =>
  fc
    .record({
      policy: fc.constantFrom('shop/a', 'shop/b', 'other/c').map((p) => `${p}${index % 2}`),
      rule: ruleText,
      priority: fc.integer({ min: 0, max: 100 }),
      sources: fc.array(prefix, { maxLength: 4 }),
      applications: fc.option(fc.array(applicationMatch, { minLength: 1, maxLength: 3 }), { nil: undefined }),
      destinations: fc.option(fc.array(destination, { minLength: 1, maxLength: 3 }), { nil: undefined }),
      action: fc.constantFrom('Allow', 'Deny'),
      uplinks: ruleUplinks(names),
    })
    .map((r) => (r.action === 'Deny' ? { ...r, uplinks: undefined } : r));

/** A compiled gateway config that the API's rules allow, as JSON (optional fields absent, defaults not applied). */
export const validConfig = fc
  .uniqueArray(objectName, { maxLength: 5 })
  .chain((names) =>
    fc.record({
      version: fc.constant(1),
      gateway: objectName,
      hash: fc.option(fc.constant('sha256:test'), { nil: undefined }),
      sources: fc.array(prefix, { maxLength: 6 }),
      pods: fc.array(
        fc.record({
          namespace: fc.constantFrom('shop', 'other'),
          name: objectName,
          addresses: fc.uniqueArray(address, { minLength: 1, maxLength: 2 }),
        }),
        { maxLength: 4 },
      ),
      bypass: fc.array(prefix, { maxLength: 3 }),
      uplinks: each(names.map(uplink)),
      balancing: fc.oneof(
        fc.record({ mode: fc.constantFrom('Weighted', 'LeastLoaded') }),
        fc.record({
          mode: fc.constant('SourceSticky'),
          stickySeconds: fc.option(fc.integer({ min: 1, max: 86400 }), { nil: undefined }),
        }),
      ),
      timeouts: fc.record({
        tcpEstablishedSeconds: fc.integer({ min: 60, max: 2592000 }),
        tcpTransitorySeconds: fc.integer({ min: 10, max: 3600 }),
        udpSeconds: fc.integer({ min: 10, max: 3600 }),
        icmpSeconds: fc.integer({ min: 10, max: 3600 }),
      }),
      defaultAction: fc.option(fc.constantFrom('Allow', 'Deny'), { nil: undefined }),
      association: fc.option(
        fc.record({
          port: port,
          unassociatedFlows: fc.constantFrom('PodRules', 'Hold'),
          sidecarSources: fc.array(prefix, { maxLength: 3 }),
          strictSources: fc.array(prefix, { maxLength: 3 }),
        }),
        { nil: undefined },
      ),
      rules: fc.integer({ min: 0, max: 6 }).chain((n) => each(Array.from({ length: n }, (_, i) => rule(names, i)))),
    }),
  )
  .map((config) => JSON.parse(JSON.stringify(config)) as Record<string, unknown>);

type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** One way of breaking a valid config, and the field the parser must name for it. */
export interface Breakage {
  what: string;
  /** Text the parser's problem must contain: the path of the broken field. */
  field: string;
  applies: (config: Json) => boolean;
  apply: (config: Json) => void;
}

export const breakages: Breakage[] = [
  {
    what: 'an unknown version',
    field: '/version',
    applies: () => true,
    apply: (c) => (c.version = 2),
  },
  {
    what: 'a source that is no address',
    field: 'sources[0]',
    applies: () => true,
    apply: (c) => c.sources.unshift('10.0.0.300/8'),
  },
  {
    what: 'a prefix longer than its family allows',
    field: 'bypass[0]',
    applies: () => true,
    apply: (c) => c.bypass.unshift('10.0.0.0/33'),
  },
  {
    what: 'an uplink listed twice',
    field: 'uplinks[1].name',
    applies: (c) => c.uplinks.length >= 1,
    apply: (c) => c.uplinks.splice(1, 0, structuredClone(c.uplinks[0])),
  },
  {
    what: 'an IPv6 next hop in the IPv4 field',
    field: 'uplinks[0].nextHop.ipv4',
    applies: (c) => c.uplinks.length >= 1,
    apply: (c) => (c.uplinks[0].nextHop = { ipv4: 'fd00::1' }),
  },
  {
    what: 'a port range upside down',
    field: 'uplinks[0].snat.ports',
    applies: (c) => c.uplinks.length >= 1,
    apply: (c) => (c.uplinks[0].snat.ports = { min: 3000, max: 2000 }),
  },
  {
    what: 'an SNAT address that is none',
    field: 'uplinks[0].snat.addresses[0]',
    applies: (c) => c.uplinks.length >= 1,
    apply: (c) => (c.uplinks[0].snat.addresses = ['isp-a.example']),
  },
  {
    what: 'a probe timeout not below its interval',
    field: 'uplinks[0].healthCheck.timeoutMs',
    applies: (c) => c.uplinks.length >= 1,
    apply: (c) => (c.uplinks[0].healthCheck = { targets: ['192.0.2.1'], intervalMs: 500, timeoutMs: 500 }),
  },
  {
    what: 'a weight of 0',
    field: '/uplinks/0/weight',
    applies: (c) => c.uplinks.length >= 1,
    apply: (c) => (c.uplinks[0].weight = 0),
  },
  {
    what: 'an interface name with a space',
    field: '/uplinks/0/interface',
    applies: (c) => c.uplinks.length >= 1,
    apply: (c) => (c.uplinks[0].interface = 'eth 0'),
  },
  {
    what: 'a rule allowing an uplink that does not exist',
    field: 'rules[0].uplinks.allowed[0]',
    applies: (c) => c.rules.length >= 1,
    apply: (c) => Object.assign(c.rules[0], { action: 'Allow', uplinks: { allowed: ['no-such-uplink'] } }),
  },
  {
    what: 'a rule preferring an uplink that does not exist',
    field: 'rules[0].uplinks.preferred[0]',
    applies: (c) => c.rules.length >= 1,
    apply: (c) => Object.assign(c.rules[0], { action: 'Allow', uplinks: { preferred: ['no-such-uplink'] } }),
  },
  {
    what: 'a Deny rule that names uplinks',
    field: 'rules[0].uplinks',
    applies: (c) => c.rules.length >= 1 && c.uplinks.length >= 1,
    apply: (c) => Object.assign(c.rules[0], { action: 'Deny', uplinks: { allowed: [c.uplinks[0].name] } }),
  },
  {
    what: 'ports without TCP or UDP',
    field: 'rules[0].destinations[0].ports',
    applies: (c) => c.rules.length >= 1,
    apply: (c) => (c.rules[0].destinations = [{ protocol: 'ICMP', ports: [{ port: 80 }] }]),
  },
  {
    what: 'a port range ending before it starts',
    field: 'rules[0].destinations[0].ports[0]',
    applies: (c) => c.rules.length >= 1,
    apply: (c) => (c.rules[0].destinations = [{ protocol: 'TCP', ports: [{ port: 90, endPort: 80 }] }]),
  },
  {
    what: 'an unknown balancing mode',
    field: '/balancing/mode',
    applies: () => true,
    apply: (c) => (c.balancing = { mode: 'RoundRobin' }),
  },
  {
    what: 'a strict source that is no address',
    field: 'association.strictSources[0]',
    applies: () => true,
    apply: (c) =>
      (c.association = { ...(c.association ?? {}), strictSources: ['pod-a', ...(c.association?.strictSources ?? [])] }),
  },
  {
    what: 'a pod address that is a prefix',
    field: 'pods[0].addresses[0]',
    applies: (c) => c.pods.length >= 1,
    apply: (c) => c.pods[0].addresses.unshift('10.0.0.0/8'),
  },
];

/** A valid config with, sometimes, one breakage applied: `[config, breakage or undefined]`. */
export const maybeBrokenConfig = fc
  .tuple(validConfig, fc.option(fc.constantFrom(...breakages), { freq: 3 }))
  .map(([config, breakage]) => {
    const json = config as Json;
    if (!breakage || !breakage.applies(json)) return [config, undefined] as const;
    breakage.apply(json);
    return [config, breakage] as const;
  });

const application = fc.record({
  processName: fc.constantFrom('curl', 'python3', 'java', 'wget', 'nc'),
  executable: fc.constantFrom('/usr/bin/curl', '/opt/jdk/bin/java', '/usr/bin/python3', '/bin/nc'),
  commandLine: fc.constant([]),
  containerName: fc.constantFrom('app', 'sidecar', 'init'),
  containerId: fc.constant(''),
  uid: fc.constantFrom(0, 1000, 65534),
  pid: fc.integer({ min: 1, max: 99999 }),
}) satisfies fc.Arbitrary<Application>;

/**
 * Associations from the config's pods, unique by the kernel's key (address, protocol, port) as
 * the agent keeps them, and stamps of its strict pods.
 */
export function reportsFor(config: { pods: Array<{ addresses: string[] }> }) {
  const addresses = [...new Set(config.pods.flatMap((p) => p.addresses))];
  if (!addresses.length) return fc.constant({ associations: [], stamps: [] });
  return fc.record({
    associations: fc.uniqueArray(
      fc.record({
        transport: fc.constantFrom('tcp' as const, 'udp' as const),
        sourceAddress: fc.constantFrom(...addresses),
        sourcePort: port,
        application,
      }) satisfies fc.Arbitrary<FlowAssociation>,
      { maxLength: 20, selector: (a) => `${a.sourceAddress} ${a.transport} ${a.sourcePort}` },
    ),
    stamps: fc.uniqueArray(
      fc.record({
        address: fc.constantFrom(...addresses),
        stamp: fc.integer({ min: 1, max: 63 }),
        application,
      }) satisfies fc.Arbitrary<StampedApplication>,
      { maxLength: 10, selector: (s) => `${s.address} ${s.stamp}` },
    ),
  });
}

function renderInput(config: GatewayConfig, extra: Partial<RenderInput>): RenderInput {
  return {
    config,
    node: 'node-1',
    ids: allocateUplinkIds(
      new Map(),
      config.uplinks.map((u) => u.name),
      maxUplinkId(uplinkMarks(config)),
      failoverUplinkIds(config),
    ),
    health: new Map(),
    ...extra,
  };
}

/**
 * Sometimes the config with failover addresses, an IPv4 and an IPv6 one on each of its first
 * uplinks, steering (which they need) when it has none, and egress addresses for its pods.
 */
const withFailover = (config: GatewayConfig): fc.Arbitrary<GatewayConfig> =>
  fc.boolean().map((on) => {
    if (!on || !config.uplinks.length) return config;
    const addresses = config.uplinks.slice(0, 4).flatMap((u, k) => [
      { address: `198.18.255.${k + 1}`, uplink: u.name },
      { address: `fd00:ffff::${k + 1}`, uplink: u.name },
    ]);
    const mask = uplinkMarkMask(config);
    const free = [...Array(32).keys()].map((b) => (1 << b) >>> 0).find((bit) => (bit & mask) === 0)!;
    return parseGatewayConfig({
      ...config,
      steering: config.steering ?? { tunnel: { vni: 4242, port: 4789 }, markMask: free, sources: [] },
      failover: { addresses, leaseDurationMs: 600, failback: false, failbackDelaySeconds: 30, nodes: [], draining: [] },
      pods: config.pods.map((pod, i) => {
        const pair = addresses.slice((2 * i) % addresses.length).slice(0, 2);
        return { ...pod, egress: pair.map((a) => a.address) };
      }),
    });
  });

/** Which of the config's failover addresses this node owns. */
const ownedOf = (config: GatewayConfig) =>
  fc.subarray((config.failover?.addresses ?? []).map((a) => canonicalAddress(a.address))).map((a) => new Set(a));

/** Health and load of the config's uplinks, as the probes and the flow table might report them. */
const conditions = (config: GatewayConfig) =>
  fc.record({
    health: fc
      .array(fc.boolean(), { minLength: config.uplinks.length, maxLength: config.uplinks.length })
      .map((up) => new Map(config.uplinks.map((u, i) => [u.name, up[i]!]))),
    load: fc
      .array(fc.nat(5000), { minLength: config.uplinks.length, maxLength: config.uplinks.length })
      .map((n) => new Map(config.uplinks.map((u, i) => [u.name, n[i]!]))),
  });

/** Accepted configs with their reports and uplink conditions. */
export const renderCases = validConfig
  .map((json) => parseGatewayConfig(json))
  .chain(withFailover)
  .chain((config) =>
    fc
      .tuple(reportsFor(config), conditions(config), ownedOf(config))
      .map(([reports, state, owned]) => renderInput(config, { ...reports, ...state, owned })),
  );

/** Two moments of one accepted config: other associations, stamps, health, load and owned failover addresses. */
export const renderPairs = validConfig
  .map((json) => parseGatewayConfig(json))
  .chain(withFailover)
  .chain((config) => {
    const moment = fc
      .tuple(reportsFor(config), conditions(config), ownedOf(config))
      .map(([reports, state, owned]) => renderInput(config, { ...reports, ...state, owned }));
    return fc.tuple(moment, moment);
  });
