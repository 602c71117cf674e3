import type { V1Node } from '@kubernetes/client-node';
import type { EgressGateway } from '../../crds/index.ts';
import { agentNames } from './agent-certificate.ts';

const node = (name: string, labels: Record<string, string>, addresses: Array<[string, string]> = []): V1Node => ({
  metadata: { name, labels: { 'kubernetes.io/os': 'linux', ...labels } },
  status: { addresses: addresses.map(([type, address]) => ({ type, address })) },
});
const gateway = (nodeSelector: Record<string, string>) => ({ spec: { nodeSelector } }) as unknown as EgressGateway;

describe("the gateway agents' certificate", () => {
  test('names every node a gateway runs on, by name and InternalIP, and no other node', () => {
    const nodes = [
      node('gw-2', { edge: 'a' }, [
        ['InternalIP', '10.0.0.2'],
        ['InternalIP', 'fd00::2'],
        ['ExternalIP', '203.0.113.2'],
        ['Hostname', 'gw-2.example'],
      ]),
      node('gw-1', { edge: 'b' }, [['InternalIP', '10.0.0.1']]),
      node('worker', {}, [['InternalIP', '10.0.0.9']]),
      {
        ...node('windows', { edge: 'a' }),
        metadata: { name: 'windows', labels: { 'kubernetes.io/os': 'windows', edge: 'a' } },
      },
    ];
    expect(agentNames([gateway({ edge: 'a' }), gateway({ edge: 'b' })], nodes)).toEqual([
      '10.0.0.1',
      '10.0.0.2',
      'fd00::2',
      'gw-1',
      'gw-2',
    ]);
    expect(agentNames([gateway({ edge: 'a' })], nodes)).toEqual(['10.0.0.2', 'fd00::2', 'gw-2']);
    expect(agentNames([], nodes)).toEqual([]);
  });
});
