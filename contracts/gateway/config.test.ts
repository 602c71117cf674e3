import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { definitions, rulesWithin } from '../../crds/index.ts';
import { ConfigError, GatewayConfig, parseGatewayConfig, uplinkMarkMask } from './config.ts';

const sample = JSON.parse(
  await readFile(join(import.meta.dirname, '..', '..', 'dataplane', 'testdata', 'gateway.json'), 'utf8'),
) as Record<string, unknown>;

const failover: NonNullable<GatewayConfig['failover']> = {
  addresses: [],
  leaseDurationMs: 600,
  failback: false,
  failbackDelaySeconds: 30,
  nodes: [],
  draining: [],
};

function problems(change: (config: GatewayConfig) => void): string[] {
  const config = structuredClone(sample) as GatewayConfig;
  change(config);
  try {
    parseGatewayConfig(config);
    return [];
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).problems;
  }
}

describe('parseGatewayConfig', () => {
  it('accepts the sample and fills in the API defaults', () => {
    const config = parseGatewayConfig(sample);
    expect(config.uplinks[2]!.weight).toBe(1);
    expect(config.uplinks[1]!.snat.ports).toEqual({ min: 1024, max: 65535 });
    expect(config.timeouts).toEqual({
      tcpEstablishedSeconds: 7440,
      tcpTransitorySeconds: 240,
      udpSeconds: 120,
      icmpSeconds: 60,
    });
  });

  it('puts uplink ids in the low four bits unless marks.uplinks says otherwise', () => {
    expect(uplinkMarkMask(parseGatewayConfig(sample))).toBe(0x0000000f);
    expect(parseGatewayConfig({ ...sample, marks: {} }).marks).toEqual({ uplinks: 0x0000000f });
    expect(uplinkMarkMask(parseGatewayConfig({ ...sample, marks: { uplinks: 0x00000f00 } }))).toBe(0x00000f00);
  });

  it.each([
    ['an unknown version', (c: GatewayConfig) => ((c as { version: number }).version = 2), /^\/version: /],
    [
      'a source that is not an address',
      (c: GatewayConfig) => c.sources.push('10.0.0.300'),
      /^sources\[3\]: "10.0.0.300" is not/,
    ],
    ['a CIDR with a bad length', (c: GatewayConfig) => c.bypass.push('10.0.0.0/33'), /^bypass\[2\]: /],
    [
      "a source with a zone, which names one host's link and no network",
      (c: GatewayConfig) => c.sources.push('fe80::1%eth0/64'),
      /^sources\[3\]: "fe80::1%eth0\/64" is not an IP address or CIDR/,
    ],
    [
      'an uplink listed twice',
      (c: GatewayConfig) => c.uplinks.push({ ...c.uplinks[0]! }),
      /^uplinks\[3\].name: isp-a is listed twice/,
    ],
    [
      'a next hop of the wrong family',
      (c: GatewayConfig) => (c.uplinks[0]!.nextHop!.ipv4 = 'fd00::1'),
      /uplinks\[0\].nextHop.ipv4/,
    ],
    [
      'an inverted port range',
      (c: GatewayConfig) => (c.uplinks[0]!.snat.ports = { min: 3000, max: 2000 }),
      /^uplinks\[0\].snat.ports: snat.ports.min must be less than or equal to snat.ports.max$/,
    ],
    [
      'a probe timeout not below its interval',
      (c: GatewayConfig) => (c.uplinks[0]!.healthCheck!.timeoutMs = 200),
      /^uplinks\[0\].healthCheck.timeoutMs: healthCheck.timeoutMs must be less than healthCheck.intervalMs$/,
    ],
    [
      'a rule naming a missing uplink',
      (c: GatewayConfig) => (c.rules[2]!.uplinks!.allowed = ['nope']),
      /rules\[2\].uplinks.allowed\[0\]: no uplink named nope/,
    ],
    [
      'ports on ICMP',
      (c: GatewayConfig) => (c.rules[0]!.destinations![0]!.protocol = 'ICMP'),
      /^rules\[0\].destinations\[0\].ports: destinations ports require protocol TCP or UDP$/,
    ],
    [
      'a destination CIDR with host bits',
      (c: GatewayConfig) => (c.rules[0]!.destinations![0]!.cidr = '198.51.100.7/24'),
      /^rules\[0\].destinations\[0\].cidr: destinations cidr must not have bits set after its prefix length/,
    ],
    [
      'a loopback SNAT address',
      (c: GatewayConfig) => (c.uplinks[0]!.snat.addresses = ['127.0.0.1']),
      /^uplinks\[0\].snat.addresses\[0\]: each snat.addresses entry must be an IPv4 or IPv6 address \(not unspecified or loopback\)/,
    ],
    [
      'a relative executable',
      (c: GatewayConfig) => (c.rules[1]!.applications = [{ executable: 'bin/curl' }]),
      /^rules\[1\].applications\[0\].executable: executable must be an absolute path or a glob starting with \/ or \*$/,
    ],
    [
      'an application that sets nothing',
      (c: GatewayConfig) => (c.rules[1]!.applications = [{}]),
      /^rules\[1\].applications\[0\]: each applications entry must set at least one of processName, executable, container, uid$/,
    ],
    [
      'a preferred uplink that is not allowed',
      (c: GatewayConfig) => (c.rules[2]!.uplinks = { allowed: ['isp-a'], preferred: ['isp-b'] }),
      /^rules\[2\].uplinks.preferred: every uplinks.preferred entry must also be listed in uplinks.allowed$/,
    ],
    [
      'uplinks on a Deny rule',
      (c: GatewayConfig) => (c.rules[0]!.uplinks = { allowed: ['isp-a'] }),
      /^rules\[0\].uplinks: rules uplinks can only be set when action is Allow$/,
    ],
    [
      'stickySeconds without SourceSticky',
      (c: GatewayConfig) => (c.balancing = { mode: 'Weighted', stickySeconds: 60 }),
      /^balancing.stickySeconds: balancing.stickySeconds is only valid when balancing.mode is SourceSticky$/,
    ],
    [
      'a pod address that is not an address',
      (c: GatewayConfig) => c.pods[0]!.addresses.push('10.244.1.300'),
      /^pods\[0\].addresses\[2\]: "10.244.1.300" is not an IP address/,
    ],
    [
      'uplink id mark bits in two runs',
      (c: GatewayConfig) => (c.marks = { uplinks: 0x00000505 }),
      /^marks.uplinks: 0x00000505 is not one run of bits$/,
    ],
    [
      'more uplinks than their mark bits hold',
      (c: GatewayConfig) => (c.marks = { uplinks: 0x00000010 }),
      /^marks.uplinks: 0x00000010 has room for 1 uplink, too few for the 3 listed; give it more bits$/,
    ],
    [
      'more uplinks than the default mark bits hold',
      (c: GatewayConfig) => {
        for (let n = 0; n < 13; n++) c.uplinks.push({ ...c.uplinks[0]!, name: `extra-${n}` });
      },
      /^marks.uplinks: 0x0000000f has room for 15 uplinks, too few for the 16 listed; give it more bits$/,
    ],
    [
      'uplink id mark bits that overlap the tunnel-reply bits',
      (c: GatewayConfig) => {
        c.marks = { uplinks: 0x0000001f };
        c.steering = { tunnel: { vni: 7, port: 4789 }, markMask: 0x00000010, sources: [] };
      },
      /^marks.uplinks: 0x0000001f overlaps steering.markMask 0x00000010$/,
    ],
    [
      'a failover address on an uplink the config does not have',
      (c: GatewayConfig) => {
        c.failover = { ...failover, addresses: [{ address: '203.0.113.10', uplink: 'nowhere' }] };
      },
      /^failover.addresses\[0\].uplink: no uplink named nowhere$/,
    ],
    [
      'a failover address listed twice, written two ways',
      (c: GatewayConfig) => {
        const uplink = c.uplinks[0]!.name;
        c.failover = {
          ...failover,
          addresses: [
            { address: '2001:db8::a', uplink },
            { address: '2001:DB8:0::A', uplink },
          ],
        };
      },
      /^failover.addresses\[1\]: 2001:DB8:0::A is listed twice$/,
    ],
    [
      "a pod's egress address that is not a failover address",
      (c: GatewayConfig) => {
        c.failover = { ...failover, addresses: [{ address: '203.0.113.10', uplink: c.uplinks[0]!.name }] };
        c.pods = [{ namespace: 'shop', name: 'web', addresses: ['10.244.1.10'], egress: ['203.0.113.11'] }];
      },
      /^pods\[0\].egress\[0\]: "203.0.113.11" is not one of failover.addresses$/,
    ],
    [
      'an unknown balancing mode',
      (c: GatewayConfig) => ((c.balancing as { mode: string }).mode = 'Random'),
      /^\/balancing\/mode: /,
    ],
  ])('rejects %s, naming the field', (_what, change, message) => {
    const found = problems(change);
    expect(found.some((p) => message.test(p))).toBe(true);
  });

  // The rules of the API that a compiled config never holds the subject of: the compiler
  // resolves selectors and the gateway's uplink choice to addresses and a list of uplinks.
  const notInTheConfig = [
    { message: 'uplinks must set exactly one of names or selector', why: 'the config lists the chosen uplinks' },
    { message: 'spec must set podSelector, namespaceSelector or both', why: 'selectors are resolved to sources' },
    { message: 'association.sidecar must set podSelector, namespaceSelector or both', why: 'the webhook injects' },
    { message: 'values must be non-empty for operators In and NotIn', why: 'selectors are resolved to sources' },
  ];

  it('enforces every CEL rule of the API whose subject the compiled config holds', () => {
    const enforced = rulesWithin(GatewayConfig);
    const api = new Set(definitions.flatMap((d) => [...rulesWithin(d.spec), ...rulesWithin(d.status)]));
    expect(api.size).toBeGreaterThanOrEqual(25);
    for (const rule of api) {
      expect({ rule: rule.rule, holds: typeof rule.holds }).toEqual({ rule: rule.rule, holds: 'function' });
      const outside = notInTheConfig.some(({ message }) => rule.message.startsWith(message));
      expect({ message: rule.message, enforced: enforced.has(rule) }).toEqual({
        message: rule.message,
        enforced: !outside,
      });
    }
  });
});
