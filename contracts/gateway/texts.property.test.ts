// Properties of the content hashes: equal configs hash alike, whether their parts are the objects
// hashed before (whose texts are kept) or copies; a config that differs in anything, a pod's or a
// rule's field included, hashes differently; and a part's text is its JSON.
import fc from 'fast-check';
import { validConfig } from '../../test/arbitraries.ts';
import { parseGatewayConfig, type GatewayConfig } from './config.ts';
import type { NodeConfig } from './steering.ts';
import { configHash, jsonText, nodeConfigHash } from './texts.ts';

const any = validConfig.map((json) => parseGatewayConfig(json));

/** The config with one field of one of its pods or rules (or of itself) changed, as a new object. */
function changed(config: GatewayConfig, pick: number): GatewayConfig {
  const parts = [
    ...config.pods.map((_, i) => ['pod', i] as const),
    ...config.rules.map((_, i) => ['rule', i] as const),
  ];
  if (!parts.length) return { ...config, gateway: `${config.gateway}x` };
  const [kind, i] = parts[pick % parts.length]!;
  if (kind === 'pod') {
    return { ...config, pods: config.pods.with(i, { ...config.pods[i]!, name: `${config.pods[i]!.name}x` }) };
  }
  return { ...config, rules: config.rules.with(i, { ...config.rules[i]!, rule: `${config.rules[i]!.rule}x` }) };
}

describe('configHash', () => {
  it('hashes equal configs alike, kept texts or not, and a changed pod, rule or field apart', () => {
    fc.assert(
      fc.property(any, fc.nat(), (config, pick) => {
        const first = configHash(config);
        expect(configHash(config)).toBe(first);
        expect(configHash(structuredClone(config))).toBe(first);
        expect(configHash(changed(config, pick))).not.toBe(first);
      }),
      { numRuns: 200 },
    );
  });

  it("gives each part's JSON as its text", () => {
    fc.assert(
      fc.property(any, (config) => {
        for (const part of [...config.pods, ...config.rules]) expect(jsonText(part)).toBe(JSON.stringify(part));
      }),
      { numRuns: 50 },
    );
  });
});

describe('nodeConfigHash', () => {
  const node = (bypass: string[], peer: string): NodeConfig => ({
    version: 1,
    node: 'worker-a',
    markMask: 0xe0,
    gateways: [
      {
        gateway: 'egress',
        tunnel: { vni: 7, port: 4789 },
        selection: 'Pod',
        associationPort: 7740,
        healthPort: 9091,
        bypass,
        pods: [{ namespace: 'shop', name: 'web-1', addresses: ['10.244.1.5'] }],
        peers: [{ node: peer, addresses: ['192.0.2.1'] }],
      },
    ],
  });

  it('hashes equal node configs alike and tells a changed bypass or peer apart', () => {
    const base = nodeConfigHash(node(['10.96.0.0/12'], 'gw-1'));
    expect(nodeConfigHash(node(['10.96.0.0/12'], 'gw-1'))).toBe(base);
    expect(nodeConfigHash(node(['10.96.0.0/12', '10.244.0.0/16'], 'gw-1'))).not.toBe(base);
    expect(nodeConfigHash(node(['10.96.0.0/12'], 'gw-2'))).not.toBe(base);
    expect(nodeConfigHash({ ...node(['10.96.0.0/12'], 'gw-1'), markMask: 0xf0 })).not.toBe(base);
  });
});
