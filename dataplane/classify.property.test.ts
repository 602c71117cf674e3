// The compiled rules decide as the ordered rules do: for any config and any new flow of a served
// pod, the rendered table, traced, gives the verdict, the deciding rule and an uplink of the
// choice that the first matching rule in the config's order gives; and the compiler's boxes are
// disjoint.
import fc from 'fast-check';
import { each, renderCases } from '../test/arbitraries.ts';
import { contains, valueOf, type CompiledRule, type GatewayConfig } from '../contracts/gateway/index.ts';
import { matchesApplication } from '../contracts/index.ts';
import type { Application } from '../proto/index.ts';
import { rulesCompiler } from './classify.ts';
import { addressText, prefixInterval, type Interval } from './nft/intervals.ts';
import type { Family, L4 } from './nft/model.ts';
import { trace, type Packet } from './nft/trace.ts';
import { carries, chooseCandidates, localUplinks, render, ruleName, uplinkMarks, type RenderInput } from './render.ts';

const familyOf = (address: string): Family => (address.includes(':') ? 6 : 4);

/** An address in the prefix (a CIDR, with host bits or not, or an address). */
const addressIn = (prefix: string) => {
  const f = familyOf(prefix);
  const [first, last] = prefixInterval(prefix, f);
  return fc.bigInt({ min: first, max: last }).map((value) => addressText(value, f));
};

/**
 * Configs whose rules overlap a lot: sources, destination networks and ports from small pools of
 * nested and touching ones, so that the first matching rule is often not the only one.
 */
const denseCases = renderCases.chain((input) => {
  const network = (pool: string[]) => fc.option(fc.constantFrom(...pool), { nil: undefined });
  const networks = ['192.0.2.0/24', '192.0.2.128/25', '192.0.2.7', '0.0.0.0/1', '2001:db8::/32', '2001:db8::1'];
  const destination = fc.oneof(
    fc.record({ cidr: network(networks), protocol: fc.constantFrom('ICMP' as const, 'Any' as const) }),
    fc.record({
      cidr: network(networks),
      protocol: fc.constantFrom('TCP' as const, 'UDP' as const),
      ports: fc.option(fc.subarray(densePorts, { minLength: 1 }), { nil: undefined }),
    }),
  );
  const rule = fc.record({
    sources: fc.subarray(denseSources, { minLength: 1 }),
    destinations: fc.option(fc.array(destination, { minLength: 1, maxLength: 3 }), { nil: undefined }),
  });
  // The associations' flows come from the rules' sources, so that application rules and the pod
  // rules before them meet.
  const from = fc.constantFrom('10.1.2.3', '10.1.2.1', '10.1.7.7', '10.9.9.9', 'fd00::1', 'fd00::9');
  const associated = each((input.associations ?? []).map(() => from));
  return fc.tuple(each(input.config.rules.map(() => rule)), associated).map(([shapes, addresses]): RenderInput => ({
    ...input,
    associations: uniqueFlows((input.associations ?? []).map((a, i) => ({ ...a, sourceAddress: addresses[i]! }))),
    config: {
      ...input.config,
      sources: denseSources,
      rules: input.config.rules.map((r, i) => {
        const shape = shapes[i]!;
        return { ...r, sources: shape.sources, destinations: shape.destinations };
      }),
    },
  }));
});
/** One association per flow (address, protocol, port), as the agent keeps them. */
const uniqueFlows = <A extends { sourceAddress: string; transport: string; sourcePort: number }>(list: A[]) => [
  ...new Map(list.map((a) => [`${a.sourceAddress} ${a.transport} ${a.sourcePort}`, a])).values(),
];
const denseSources = ['10.0.0.0/8', '10.1.0.0/16', '10.1.2.3', '10.1.2.0/30', 'fd00::/8', 'fd00::1'];
const densePorts = [{ port: 22 }, { port: 80, endPort: 90 }, { port: 85 }, { port: 443 }, { port: 1, endPort: 1000 }];

/** New flows of served pods and others: sources and destinations in and around the rules' networks. */
const cases = fc.oneof({ weight: 1, arbitrary: renderCases }, { weight: 3, arbitrary: denseCases }).chain((input) => {
  const { config } = input;
  const sources = [...config.sources, ...config.rules.flatMap((r) => r.sources)];
  const networks = config.rules.flatMap((r) => (r.destinations ?? []).flatMap((d) => (d.cidr ? [d.cidr] : [])));
  const ports = config.rules.flatMap((r) =>
    (r.destinations ?? []).flatMap((d) => (d.ports ?? []).flatMap((p) => [p.port - 1, p.port, p.endPort ?? p.port])),
  );
  const pick = (prefixes: string[], other: fc.Arbitrary<string>) =>
    prefixes.length
      ? fc.oneof(
          { weight: 6, arbitrary: fc.constantFrom(...prefixes).chain(addressIn) },
          { weight: 1, arbitrary: other },
        )
      : other;
  const source = pick(sources, fc.oneof(fc.ipV4(), fc.ipV6()));
  const association = input.associations?.length
    ? fc.option(fc.constantFrom(...input.associations), { nil: undefined })
    : fc.constant(undefined);
  return fc
    .record({
      association,
      saddr: source,
      daddrOf: fc.tuple(
        pick(
          networks.filter((n) => familyOf(n) === 4),
          fc.ipV4(),
        ),
        pick(
          networks.filter((n) => familyOf(n) === 6),
          fc.ipV6(),
        ),
      ),
      protocol: fc.constantFrom('tcp', 'udp', 'icmp'),
      dport: ports.length
        ? fc.oneof(fc.constantFrom(...ports.filter((p) => p >= 0)), fc.integer({ min: 0, max: 65535 }))
        : fc.integer({ min: 0, max: 65535 }),
      sport: fc.integer({ min: 1, max: 65535 }),
    })
    .map(({ association, saddr, daddrOf, protocol, dport, sport }) => {
      const from = association?.sourceAddress ?? saddr;
      const f = familyOf(from);
      const l4: L4 = association?.transport ?? (protocol === 'icmp' && f === 6 ? 'icmpv6' : protocol);
      const packet: Packet = {
        family: f,
        saddr: from,
        daddr: f === 4 ? daddrOf[0] : daddrOf[1],
        protocol: l4,
        ...(l4 === 'tcp' || l4 === 'udp' ? { dport, sport: association?.sourcePort ?? sport } : {}),
      };
      return { input, packet };
    });
});

/** What a new flow's packet gets by the ordered rules, read off the config directly. */
interface Outcome {
  verdict: 'accept' | 'drop';
  rule?: string;
  /** The uplinks the flow may take; undefined when it takes none (not classified). */
  uplinks?: string[];
}

function ordered(input: RenderInput, packet: Packet): Outcome {
  const { config } = input;
  const f = packet.family;
  const inAny = (prefixes: readonly string[], address: string) => prefixes.some((p) => contains(p, address));
  if (!inAny(config.sources, packet.saddr) || inAny(config.bypass, packet.daddr)) return { verdict: 'accept' };
  const association = input.associations?.find(
    (a) => contains(a.sourceAddress, packet.saddr) && a.transport === packet.protocol && a.sourcePort === packet.sport,
  );
  const hold = config.association?.unassociatedFlows === 'Hold';
  // Hold: a flow of a pod with the sidecar that no association names waits.
  if (hold && !association && inAny(config.association!.sidecarSources, packet.saddr)) {
    return { verdict: 'drop' };
  }
  const rule = config.rules.find(
    (r) => (!r.applications || (association && appliesTo(r, association.application))) && matches(r, packet),
  );
  if (rule?.action === 'Deny' || (!rule && config.defaultAction === 'Deny')) {
    return { verdict: 'drop', ...(rule ? { rule: ruleName(rule) } : {}) };
  }
  const healthy = localUplinks(config, input.node).filter((u) => input.health.get(u.name) !== false && carries(u, f));
  const uplinks = chooseCandidates(healthy, rule?.uplinks?.allowed, rule?.uplinks?.preferred).map((u) => u.name);
  return {
    verdict: uplinks.length ? 'accept' : 'drop',
    ...(rule ? { rule: ruleName(rule) } : {}),
    uplinks,
  };
}

const appliesTo = (rule: CompiledRule, application: Application) =>
  rule.applications?.some((m) => matchesApplication(m, application)) ?? false;

function matches(rule: CompiledRule, packet: Packet): boolean {
  if (!rule.sources.some((s) => contains(s, packet.saddr))) return false;
  return (rule.destinations ?? [{ protocol: 'Any' as const }]).some((d) => {
    if (d.cidr && !contains(d.cidr, packet.daddr)) return false;
    const protocol = { TCP: ['tcp'], UDP: ['udp'], ICMP: [packet.family === 4 ? 'icmp' : 'icmpv6'], Any: undefined }[
      d.protocol
    ];
    if (protocol && !protocol.includes(packet.protocol)) return false;
    return !d.ports || d.ports.some((p) => packet.dport! >= p.port && packet.dport! <= (p.endPort ?? p.port));
  });
}

/** What the rendered table does with the packet, traced through prerouting. */
function traced(input: RenderInput, packet: Packet): Outcome {
  const { table } = render(input);
  const result = trace(table, 'prerouting', packet, { random: () => 0, hash: () => 0 });
  const id = valueOf(uplinkMarks(input.config), result.ctMark);
  const uplink = [...input.ids].find(([, n]) => n === id)?.[0];
  return {
    verdict: result.verdict,
    ...(result.rule ? { rule: result.rule } : {}),
    ...(uplink ? { uplinks: [uplink] } : {}),
  };
}

describe('the compiled rules, for any config and any new flow', () => {
  it('give the verdict, the rule and an uplink of the choice of the first matching rule in order', () => {
    fc.assert(
      fc.property(cases, ({ input, packet }) => {
        const want = ordered(input, packet);
        const got = traced(input, packet);
        expect({ verdict: got.verdict, rule: got.rule }).toEqual({ verdict: want.verdict, rule: want.rule });
        if (want.verdict === 'accept' && want.uplinks) expect(want.uplinks).toContain(got.uplinks?.[0]);
        if (want.verdict === 'accept' && !want.uplinks) expect(got.uplinks).toBeUndefined();
      }),
      { numRuns: 2000 },
    );
  });
});

describe('rulesCompiler, for any rules', () => {
  const overlap = (a: Interval, b: Interval) => a[0] <= b[1] && b[0] <= a[1];
  it('cuts each family and protocol into disjoint boxes', () => {
    fc.assert(
      fc.property(fc.oneof(renderCases, denseCases), ({ config }: { config: GatewayConfig }) => {
        for (const { boxes } of rulesCompiler().compile(config.rules)) {
          boxes.forEach((a, i) =>
            boxes.slice(i + 1).forEach((b) => {
              const both = overlap(a.source, b.source) && overlap(a.destination, b.destination);
              expect(both && (!a.ports || !b.ports || overlap(a.ports, b.ports))).toBe(false);
            }),
          );
        }
      }),
      { numRuns: 300 },
    );
  });
});
