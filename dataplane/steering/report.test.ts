import { steeringEntries, steeringStatusPatch } from './report.ts';

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
