import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Action } from '../../proto/index.ts';
import { parseGatewayConfig } from '../../contracts/gateway/index.ts';
import { effectivePolicy } from './policy.ts';

const config = parseGatewayConfig(
  JSON.parse(await readFile(join(import.meta.dirname, '..', 'testdata', 'gateway.json'), 'utf8')),
);

describe('effectivePolicy', () => {
  it("lists the rules whose sources hold one of the pod's addresses, with their application classes", () => {
    const policy = effectivePolicy(config, ['10.244.1.2', 'fd00:244:1::2']);
    expect(policy.configHash).toBe('sha256:golden');
    expect(policy.defaultAction).toBe(Action.ACTION_ALLOW);
    expect(policy.rules).toEqual([
      {
        rule: 'shop/no-telnet#deny-telnet',
        priority: 10,
        applicationClasses: [],
        destinations: ['any TCP 23'],
        action: Action.ACTION_DENY,
        uplinks: [],
      },
      {
        rule: 'shop/curl#no-curl-to-docs',
        priority: 20,
        applicationClasses: [1],
        destinations: ['198.51.100.0/24 TCP 443,8000-8080'],
        action: Action.ACTION_DENY,
        uplinks: [],
      },
    ]);
    expect(policy.classes).toEqual([
      { id: 1, matches: [{ processName: 'curl', executableGlob: '', containerName: '' }] },
    ]);
  });

  it('gives a pod that no rule selects only the default action', () => {
    const policy = effectivePolicy(config, ['10.9.9.9']);
    expect(policy.rules).toEqual([]);
    expect(policy.defaultAction).toBe(Action.ACTION_ALLOW);
  });
});
