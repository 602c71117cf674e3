import { describeConflict, gatewayNodeConflicts, relayConflicts, type PortClaimant } from './host-ports.ts';

const agentPorts = { health: 9091, metrics: 9090 };
const claimant = (gateway: string, created: string, associationPort = 7740): PortClaimant => ({
  gateway,
  created,
  associationPort,
});
const old = claimant('b-old', '2026-01-01T00:00:00Z');
const young = claimant('a-young', '2026-06-01T00:00:00Z');

describe('gatewayNodeConflicts', () => {
  it("keeps a node shared by two gateways' nodeSelectors for the older gateway, whatever the names", () => {
    const nodes = new Map([
      ['b-old', ['gw-1', 'gw-2']],
      ['a-young', ['gw-2', 'gw-3']],
    ]);
    const lost = gatewayNodeConflicts([young, old], nodes, agentPorts);
    expect(lost.get('b-old')).toEqual([]);
    // The chart's health port is every gateway agent's: two agents on one node always clash.
    expect(lost.get('a-young')).toEqual([{ node: 'gw-2', port: 9091, heldBy: 'b-old', holder: 'gateway agent' }]);
  });

  it('orders gateways created at the same second by name, and leaves disjoint gateways alone', () => {
    const same = [claimant('b', '2026-01-01T00:00:00Z'), claimant('a', '2026-01-01T00:00:00Z', 7750)];
    const lost = gatewayNodeConflicts(
      same,
      new Map([
        ['a', ['n1']],
        ['b', ['n1', 'n2']],
      ]),
      agentPorts,
    );
    expect(lost.get('a')).toEqual([]);
    expect(lost.get('b')).toEqual([{ node: 'n1', port: 9091, heldBy: 'a', holder: 'gateway agent' }]);
    const apart = gatewayNodeConflicts(
      same,
      new Map([
        ['a', ['n1']],
        ['b', ['n2']],
      ]),
      agentPorts,
    );
    expect([...apart.values()].flat()).toEqual([]);
  });
});

describe('relayConflicts', () => {
  it("never takes a gateway agent's port: a pod of another gateway on its node is not relayed there", () => {
    // The young gateway's agent runs on w-1; the old gateway's pod landed there later.
    const lost = relayConflicts(
      [old, young],
      new Map([
        ['b-old', ['gw-1']],
        ['a-young', ['w-1']],
      ]),
      new Map([['b-old', ['w-1', 'w-2']]]),
      agentPorts,
    );
    expect(lost.get('b-old')).toEqual([{ node: 'w-1', port: 7740, heldBy: 'a-young', holder: 'gateway agent' }]);
    expect(lost.get('a-young')).toEqual([]);
  });

  it('gives a port two relays of one node want to the older gateway, and both when their ports differ', () => {
    const gatewayNodes = new Map([
      ['b-old', ['gw-1']],
      ['a-young', ['gw-2']],
    ]);
    const sources = new Map([
      ['b-old', ['w-1']],
      ['a-young', ['w-1', 'w-2']],
    ]);
    const lost = relayConflicts([young, old], gatewayNodes, sources, agentPorts);
    expect(lost.get('b-old')).toEqual([]);
    expect(lost.get('a-young')).toEqual([{ node: 'w-1', port: 7740, heldBy: 'b-old', holder: 'relay' }]);
    const apart = relayConflicts([{ ...young, associationPort: 7741 }, old], gatewayNodes, sources, agentPorts);
    expect([...apart.values()].flat()).toEqual([]);
  });

  it("refuses an association port that is a gateway agent's health port on the node", () => {
    const lost = relayConflicts(
      [old, { ...young, associationPort: 9091 }],
      new Map([
        ['b-old', ['gw-1']],
        ['a-young', ['gw-2']],
      ]),
      new Map([['a-young', ['gw-1']]]),
      agentPorts,
    );
    expect(lost.get('a-young')).toEqual([{ node: 'gw-1', port: 9091, heldBy: 'b-old', holder: 'gateway agent' }]);
  });
});

test('a conflict in words names the node, the other gateway, what listens and the port', () => {
  expect(describeConflict({ node: 'w-1', port: 7740, heldBy: 'b-old', holder: 'relay' })).toBe(
    "node w-1 relays the association streams of EgressGateway b-old's pods at port 7740",
  );
  expect(describeConflict({ node: 'gw-2', port: 9091, heldBy: 'b-old', holder: 'gateway agent' })).toBe(
    'node gw-2 runs the agent of EgressGateway b-old, which listens at port 9091',
  );
});
