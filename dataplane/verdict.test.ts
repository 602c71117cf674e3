import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseGatewayConfig } from '../contracts/gateway/index.ts';
import type { Packet } from './nft/trace.ts';
import { maxUplinkId, render, uplinkMarks, type FlowAssociation } from './render.ts';
import { allocateUplinkIds } from './uplink-ids.ts';
import { FlowVerdicts, traceVerdict } from './verdict.ts';

const config = parseGatewayConfig(
  JSON.parse(await readFile(join(import.meta.dirname, 'testdata', 'gateway.json'), 'utf8')),
);
const ids = allocateUplinkIds(
  new Map(),
  config.uplinks.map((u) => u.name),
  maxUplinkId(uplinkMarks(config)),
);
const names = new Map([...ids].map(([name, id]) => [id, name]));
const uplinkName = (id: number) => names.get(id);

// The testdata's policy denies curl from 10.244.1.2 to 198.51.100.5:8080; the pod's rules allow the rest.
const curl: FlowAssociation = {
  transport: 'tcp',
  sourceAddress: '10.244.1.2',
  sourcePort: 40000,
  application: {
    processName: 'curl',
    executable: '/usr/bin/curl',
    commandLine: ['curl'],
    containerName: 'app',
    containerId: '',
    uid: 1000,
    pid: 42,
  },
};

const tcp = (saddr: string, daddr: string, dport: number, sport: number): Packet => ({
  family: 4,
  saddr,
  daddr,
  protocol: 'tcp',
  sport,
  dport,
});

describe('FlowVerdicts', () => {
  it('gives every flow the verdict its trace gives, flows of an association apart from those that differ only in source port', () => {
    const { table } = render({ config, node: 'node-1', ids, health: new Map(), associations: [curl] });
    const verdicts = new FlowVerdicts(table, uplinkMarks(config), uplinkName);
    const flows = [
      tcp('10.244.1.2', '198.51.100.5', 8080, 40001),
      tcp('10.244.1.2', '198.51.100.5', 8080, 40000),
      tcp('10.244.1.2', '198.51.100.5', 8080, 40002),
      tcp('10.244.1.7', '203.0.113.10', 23, 40000),
      tcp('10.244.1.7', '203.0.113.10', 443, 40000),
    ];
    for (const flow of [...flows, ...flows]) {
      expect([flow, verdicts.of(flow)]).toEqual([flow, traceVerdict(table, flow, uplinkMarks(config), uplinkName)]);
    }
    expect(verdicts.of(flows[1]!).allowed).toBe(false);
    expect(verdicts.of(flows[2]!).allowed).toBe(true);
  });

  it('stays right past `limit` kinds of flows, which it forgets and traces again', () => {
    const { table } = render({ config, node: 'node-1', ids, health: new Map() });
    const verdicts = new FlowVerdicts(table, uplinkMarks(config), uplinkName, 2);
    const destinations = ['203.0.113.10', '203.0.113.11', '203.0.113.12', '203.0.113.10'];
    for (const daddr of destinations) {
      const flow = tcp('10.244.1.7', daddr, 443, 40000);
      expect(verdicts.of(flow)).toEqual(traceVerdict(table, flow, uplinkMarks(config), uplinkName));
    }
  });
});
