import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseGatewayConfig } from '../contracts/gateway/index.ts';
import type { EgressGateway, Uplink } from '../crds/index.ts';
import { renderView } from './output.ts';
import { gatewayStatus, statusView, type StatusInput } from './status.ts';

const config = parseGatewayConfig({
  ...JSON.parse(await readFile(join(import.meta.dirname, '../dataplane/testdata/gateway.json'), 'utf8')),
  gateway: 'corp',
});
const now = new Date('2026-12-04T12:00:00Z');
const condition = (type: string, status: 'True' | 'False', message = '') => ({
  type,
  status,
  reason: status === 'True' ? 'Ok' : 'Failed',
  message,
  lastTransitionTime: '2026-12-04T10:00:00Z',
});

const gateway = {
  apiVersion: 'naat.dev/v1alpha1',
  kind: 'EgressGateway',
  metadata: { name: 'corp' },
  spec: {},
  status: {
    desiredNodes: 2,
    readyNodes: 1,
    configHash: 'sha256:abc',
    conditions: [
      condition('Accepted', 'True'),
      condition('Ready', 'True'),
      condition('SteeringReady', 'False', '1 of 2 nodes steer'),
    ],
    steering: {
      nodes: [
        { node: 'worker-2', ready: false, reason: 'ApplyFailed', message: 'no route', since: '2026-12-04T11:58:00Z' },
        { node: 'worker-1', ready: true, reason: 'Applied', since: '2026-12-04T09:00:00Z' },
      ],
    },
  },
} as unknown as EgressGateway;

const uplink = (name: string, nodes: object[]) =>
  ({
    apiVersion: 'naat.dev/v1alpha1',
    kind: 'Uplink',
    metadata: { name },
    spec: {},
    status: { nodes },
  }) as unknown as Uplink;
const report = (node: string, healthy: boolean, since: string) => ({
  node,
  healthy,
  since,
  activeFlows: 3,
  portUtilisationPercent: 0.5,
});

const input: StatusInput = {
  gateways: [gateway],
  uplinks: [
    uplink('isp-a', [report('gw-1', false, '2026-12-04T11:55:00Z'), report('gw-2', true, '2026-12-04T08:00:00Z')]),
    uplink('isp-b', [report('gw-1', true, '2026-12-04T11:30:00Z')]),
  ],
  configs: new Map([['corp', config]]),
  agents: [
    { gateway: 'corp', node: 'gw-2', pod: 'naat-gw-corp-b', ready: true },
    { gateway: 'corp', node: 'gw-1', pod: 'naat-gw-corp-a', ready: false },
  ],
  now,
  failoverWindowMs: 3600_000,
};

describe('gatewayStatus', () => {
  const status = gatewayStatus(input);

  it('summarises each gateway from its status and its compiled uplinks', () => {
    expect(status.gateways).toEqual([
      {
        name: 'corp',
        ready: 'True',
        accepted: 'True',
        steeringReady: 'False',
        readyNodes: 1,
        desiredNodes: 2,
        uplinks: ['isp-a', 'isp-b', 'backup'],
        configHash: 'sha256:abc',
        message: 'SteeringReady: 1 of 2 nodes steer',
      },
    ]);
    expect(status.nodes.map((n) => n.node)).toEqual(['gw-1', 'gw-2']);
  });

  it("gives each uplink's health on every gateway node, unknown where its agent has not reported", () => {
    expect(status.uplinks.map((u) => [u.uplink, u.node, u.healthy])).toEqual([
      ['isp-a', 'gw-1', false],
      ['isp-a', 'gw-2', true],
      ['isp-b', 'gw-1', true],
      ['isp-b', 'gw-2', undefined],
      ['backup', 'gw-1', undefined],
      ['backup', 'gw-2', undefined],
    ]);
  });

  it('names the nodes that translate to each egress address: those where its uplink is healthy', () => {
    expect(status.addresses).toEqual([
      { address: '100.64.1.2', uplink: 'isp-a', gateway: 'corp', owners: ['gw-2'] },
      { address: 'fd00:64:1::2', uplink: 'isp-a', gateway: 'corp', owners: ['gw-2'] },
      { address: '100.64.2.2', uplink: 'isp-b', gateway: 'corp', owners: ['gw-1'] },
      { address: '100.64.2.3', uplink: 'isp-b', gateway: 'corp', owners: ['gw-1'] },
      { address: 'interface up3', uplink: 'backup', gateway: 'corp', owners: [] },
    ]);
  });

  it('lists the health changes of the window as failovers, the latest first, and steering per node', () => {
    expect(status.failovers).toEqual([
      { at: '2026-12-04T11:55:00Z', uplink: 'isp-a', node: 'gw-1', healthy: false },
      { at: '2026-12-04T11:30:00Z', uplink: 'isp-b', node: 'gw-1', healthy: true },
    ]);
    expect(status.steering.map((s) => [s.node, s.ready, s.reason])).toEqual([
      ['worker-1', true, 'Applied'],
      ['worker-2', false, 'ApplyFailed'],
    ]);
  });

  it('prints a table per part, and the whole status as JSON', () => {
    const text = renderView(statusView(status, now), 'table');
    expect(text).toContain(
      'UPLINK   GATEWAY   NODE   HEALTHY   SINCE   FLOWS   PORTS %\nisp-a    corp      gw-1   no        5m      3       0.5',
    );
    expect(text).toContain('RECENT FAILOVERS\nAGE   UPLINK   NODE   BECAME\n5m    isp-a    gw-1   unhealthy');
    expect(JSON.parse(renderView(statusView(status, now), 'json'))).toEqual(JSON.parse(JSON.stringify(status)));
  });

  it('says so when there is nothing to show', () => {
    const empty = gatewayStatus({ ...input, gateways: [], agents: [], uplinks: [] });
    expect(renderView(statusView(empty, now), 'table')).toContain('GATEWAYS\nNo EgressGateways.\n');
  });
});
