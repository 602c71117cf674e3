import { parseNodeConfig } from '../../contracts/gateway/index.ts';
import { steeringEntries, steeringStates, steeringStatusPatch } from './report.ts';

const t0 = new Date('2026-12-01T10:00:00Z');
const t1 = new Date('2026-12-01T10:05:00Z');

test('since stays while ready does not change, and moves when it does', () => {
  const first = steeringEntries('worker-a', [{ gateway: 'edge', ready: false, reason: 'ApplyFailed' }], new Map(), t0);
  expect(first.get('edge')).toEqual({ node: 'worker-a', ready: false, reason: 'ApplyFailed', since: t0.toISOString() });
  const same = steeringEntries('worker-a', [{ gateway: 'edge', ready: false, reason: 'Waiting' }], first, t1);
  expect(same.get('edge')).toMatchObject({ reason: 'Waiting', since: t0.toISOString() });
  const flipped = steeringEntries('worker-a', [{ gateway: 'edge', ready: true, hash: 'sha256:x' }], same, t1);
  expect(flipped.get('edge')).toEqual({ node: 'worker-a', ready: true, hash: 'sha256:x', since: t1.toISOString() });
});

test('a long message is cut to what the schema allows', () => {
  const [entry] = steeringEntries(
    'n',
    [{ gateway: 'g', ready: false, message: 'x'.repeat(5000) }],
    new Map(),
    t0,
  ).values();
  expect(entry!.message).toHaveLength(1024);
});

test('the apply body holds the entry, or an empty list that removes it', () => {
  const entry = { node: 'worker-a', ready: true, since: t0.toISOString() };
  expect(steeringStatusPatch('edge', entry)).toEqual({
    apiVersion: 'naat.dev/v1alpha1',
    kind: 'EgressGateway',
    metadata: { name: 'edge' },
    status: { steering: { nodes: [entry] } },
  });
  expect(steeringStatusPatch('edge', undefined).status).toEqual({ steering: { nodes: [] } });
});

describe('steeringStates', () => {
  const config = parseNodeConfig({
    version: 1,
    node: 'worker-1',
    hash: 'sha256:a',
    markMask: 0xe0,
    gateways: ['egress', 'batch'].map((gateway, i) => ({
      gateway,
      tunnel: { vni: 10 + i, port: 7790 },
      associationPort: 7740,
      healthPort: 9091,
      peers: [{ node: `${gateway}-gw`, addresses: ['192.168.0.10'] }],
    })),
  });
  const synced = { at: '2026-12-04T10:00:00.000Z', durationMs: 3 };
  const peers = (up: boolean) => [
    { gateway: 'egress', node: 'egress-gw', id: 1, up },
    { gateway: 'batch', node: 'batch-gw', id: 2, up: true },
  ];

  test('ready per gateway once applied with a gateway node that takes flows', () => {
    const states = steeringStates(config, {
      appliedHash: 'sha256:a',
      lastSync: synced,
      peers: peers(true),
      problems: {},
    });
    expect(states).toEqual([
      { gateway: 'egress', ready: true, reason: 'Applied', hash: 'sha256:a' },
      { gateway: 'batch', ready: true, reason: 'Applied', hash: 'sha256:a' },
    ]);
  });

  test('not ready, and why: no gateway node up, a problem of one gateway, a failed or pending apply', () => {
    const down = steeringStates(config, {
      appliedHash: 'sha256:a',
      lastSync: synced,
      peers: peers(false),
      problems: {},
    });
    expect(down.map((s) => [s.gateway, s.ready, s.reason])).toEqual([
      ['egress', false, 'NoGatewayNode'],
      ['batch', true, 'Applied'],
    ]);
    const problem = steeringStates(config, {
      appliedHash: 'sha256:a',
      lastSync: synced,
      peers: peers(true),
      problems: { batch: 'port 7740 is taken' },
    });
    expect(problem[1]).toMatchObject({ ready: false, reason: 'ApplyFailed', message: 'port 7740 is taken' });
    const failed = steeringStates(config, { lastSync: { ...synced, error: 'nft: boom' }, peers: [], problems: {} });
    expect(failed.map((s) => s.reason)).toEqual(['ApplyFailed', 'ApplyFailed']);
    const stale = steeringStates(config, {
      appliedHash: 'sha256:old',
      lastSync: synced,
      peers: peers(true),
      problems: {},
    });
    expect(stale.map((s) => [s.ready, s.reason])).toEqual([
      [false, 'Applying'],
      [false, 'Applying'],
    ]);
  });
});
