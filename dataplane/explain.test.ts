import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseGatewayConfig } from '../contracts/gateway/index.ts';
import { explainFlow } from './explain.ts';

const config = parseGatewayConfig(
  JSON.parse(await readFile(join(import.meta.dirname, 'testdata', 'gateway.json'), 'utf8')),
);
const curl = {
  processName: 'curl',
  executable: '/usr/bin/curl',
  commandLine: [],
  containerName: 'app',
  containerId: '',
  uid: 0,
  pid: 7,
};
const to = (source: string, destination: string, port: number, application?: typeof curl) => ({
  transport: 'tcp' as const,
  source,
  destination,
  port,
  ...(application ? { application } : {}),
});

describe('explainFlow', () => {
  it("names the rule that denies an application, which the pod's other programs do not meet", () => {
    expect(explainFlow(config, 'gw-1', to('10.244.1.2', '198.51.100.5', 8080, curl))).toEqual({
      allowed: false,
      rule: 'shop/curl#no-curl-to-docs',
      candidates: [],
    });
    expect(explainFlow(config, 'gw-1', to('10.244.1.2', '198.51.100.5', 8080))).toEqual({
      allowed: true,
      balanced: true,
      candidates: ['isp-a', 'isp-b'],
    });
  });

  it('lists every uplink a balanced flow may take, and the one a rule or the health leaves', () => {
    expect(explainFlow(config, 'gw-1', to('10.244.1.2', '203.0.113.10', 443, curl)).candidates).toEqual([
      'isp-a',
      'isp-b',
    ]);
    expect(explainFlow(config, 'gw-1', to('10.244.2.2', '192.0.2.9', 443))).toEqual({
      allowed: true,
      uplink: 'isp-b',
      rule: 'shop/backups#via-b',
      candidates: ['isp-b'],
    });
    const down = new Map([['isp-a', false]]);
    expect(explainFlow(config, 'gw-1', to('10.244.1.2', '203.0.113.10', 443), down)).toEqual({
      allowed: true,
      uplink: 'isp-b',
      candidates: ['isp-b'],
    });
  });

  it('denies by protocol and port for every program of the pod', () => {
    expect(explainFlow(config, 'gw-1', to('10.244.1.2', '203.0.113.10', 23))).toEqual({
      allowed: false,
      rule: 'shop/no-telnet#deny-telnet',
      candidates: [],
    });
  });
});
