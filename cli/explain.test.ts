import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseGatewayConfig } from '../contracts/gateway/index.ts';
import {
  explainPodFlow,
  explainView,
  parseDestination,
  serves,
  type ExplainQuestion,
  type GatewayFacts,
} from './explain.ts';
import { renderView } from './output.ts';

const config = parseGatewayConfig({
  ...JSON.parse(await readFile(join(import.meta.dirname, '../dataplane/testdata/gateway.json'), 'utf8')),
  gateway: 'corp',
  pods: [{ namespace: 'shop', name: 'web-1', addresses: ['10.244.1.2', 'fd00:244:1::2'] }],
});
const web = { namespace: 'shop', name: 'web-1', addresses: ['10.244.1.2', 'fd00:244:1::2'] };
const facts = (nodes: string[], health = new Map<string, Map<string, boolean>>()): Map<string, GatewayFacts> =>
  new Map([['corp', { config, nodes, health }]]);

test('parseDestination takes ADDRESS:PORT with an optional protocol, IPv6 in brackets', () => {
  expect(parseDestination('198.51.100.5:443')).toEqual({ destination: '198.51.100.5', port: 443, transport: 'tcp' });
  expect(parseDestination('[2001:db8::1]:53/udp')).toEqual({ destination: '2001:db8::1', port: 53, transport: 'udp' });
  expect(parseDestination('198.51.100.5')).toBeUndefined();
  expect(parseDestination('198.51.100.5:70000')).toBeUndefined();
  expect(parseDestination('2001:db8::1:53')).toBeUndefined();
});

test('a gateway serves the pods it lists and the addresses of its sources', () => {
  expect(serves(config, web)).toBe(true);
  expect(serves(config, { namespace: 'other', name: 'x', addresses: ['10.244.1.9'] })).toBe(true);
  expect(serves(config, { namespace: 'other', name: 'y', addresses: ['10.9.0.1'] })).toBe(false);
});

describe('explainPodFlow', () => {
  const question: ExplainQuestion = {
    pod: web,
    destination: '198.51.100.5',
    port: 8080,
    transport: 'tcp',
    application: { processName: 'curl' },
  };

  it("gives the rule that decides the application's flow on every node of the gateway", () => {
    const flows = explainPodFlow(question, facts(['gw-2', 'gw-1']));
    expect(flows).toEqual([
      {
        gateway: 'corp',
        node: 'gw-1',
        source: '10.244.1.2',
        allowed: false,
        rule: 'shop/curl#no-curl-to-docs',
        candidates: [],
      },
      {
        gateway: 'corp',
        node: 'gw-2',
        source: '10.244.1.2',
        allowed: false,
        rule: 'shop/curl#no-curl-to-docs',
        candidates: [],
      },
    ]);
    expect(renderView(explainView(question, flows), 'table').split('\n')[1]).toBe(
      'corp      gw-1   Deny      shop/curl#no-curl-to-docs   <none>',
    );
  });

  it("follows each node's uplink health as its agent reported it", () => {
    const health = new Map([['gw-1', new Map([['isp-a', false]])]]);
    const pod: ExplainQuestion = { pod: web, destination: '198.51.100.5', port: 8080, transport: 'tcp' };
    const flows = explainPodFlow(pod, facts(['gw-1', 'gw-2'], health));
    expect(flows.map((f) => [f.node, f.uplink, f.candidates])).toEqual([
      ['gw-1', 'isp-b', ['isp-b']],
      ['gw-2', undefined, ['isp-a', 'isp-b']],
    ]);
    expect(renderView(explainView(pod, flows), 'table').split('\n')[2]).toBe(
      'corp      gw-2   Allow     <default action>   balanced over isp-a,isp-b',
    );
  });

  it('takes the address of the destination family, and says when the pod has none or no gateway serves it', () => {
    const v6 = explainPodFlow({ ...question, destination: '2001:db8::1', port: 443 }, facts(['gw-1']));
    expect(v6[0]!.source).toBe('fd00:244:1::2');
    const single = { ...question, pod: { ...web, addresses: ['10.244.1.2'] }, destination: '2001:db8::1' };
    expect(() => explainPodFlow(single, facts(['gw-1']))).toThrow('pod shop/web-1 has no IPv6 address');
    const stranger = { ...question, pod: { namespace: 'other', name: 'y', addresses: ['10.9.0.1'] } };
    expect(renderView(explainView(stranger, explainPodFlow(stranger, facts(['gw-1']))), 'table')).toBe(
      'No gateway serves pod other/y: its flows leave as the cluster sends them.\n',
    );
  });
});
