import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ConfigError, parseGatewayConfig, type GatewayConfig } from './config.ts';

const sample = JSON.parse(
  await readFile(join(import.meta.dirname, '..', '..', 'dataplane', 'testdata', 'gateway.json'), 'utf8'),
) as Record<string, unknown>;

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

  it.each([
    ['an unknown version', (c: GatewayConfig) => ((c as { version: number }).version = 2), /^\/version: /],
    [
      'a source that is not an address',
      (c: GatewayConfig) => c.sources.push('10.0.0.300'),
      /^sources\[3\]: "10.0.0.300" is not/,
    ],
    ['a CIDR with a bad length', (c: GatewayConfig) => c.bypass.push('10.0.0.0/33'), /^bypass\[2\]: /],
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
      /snat.ports: min is greater/,
    ],
    [
      'a probe timeout not below its interval',
      (c: GatewayConfig) => (c.uplinks[0]!.healthCheck!.timeoutMs = 200),
      /timeoutMs: must be less/,
    ],
    [
      'a rule naming a missing uplink',
      (c: GatewayConfig) => (c.rules[2]!.uplinks!.allowed = ['nope']),
      /rules\[2\].uplinks.allowed\[0\]: no uplink named nope/,
    ],
    [
      'ports on ICMP',
      (c: GatewayConfig) => (c.rules[0]!.destinations![0]!.protocol = 'ICMP'),
      /rules\[0\].destinations\[0\].ports: ports require/,
    ],
    [
      'a pod address that is not an address',
      (c: GatewayConfig) => c.pods[0]!.addresses.push('10.244.1.300'),
      /^pods\[0\].addresses\[2\]: "10.244.1.300" is not an IP address/,
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
});
