import { failoverAnnotations } from '../../contracts/gateway/index.ts';
import { failoverLeaseBody, nodeLease } from './lease.ts';

test("a node's failover Lease says what it owns, its healthy uplinks and whether it drains, and reads back so", () => {
  const claim = { address: '203.0.113.10', at: '2026-12-05T03:00:00.000Z', reason: 'Released' as const, from: 'g2' };
  const body = failoverLeaseBody(
    'naat-system',
    'egress',
    'g1',
    {
      owned: ['203.0.113.11', '203.0.113.10'],
      healthyUplinks: ['isp2', 'isp1'],
      draining: false,
      replicaReady: false,
      leaseDurationMs: 600,
    },
    claim,
  );
  expect(body.metadata).toEqual({
    name: 'naat-fo-egress-g1',
    namespace: 'naat-system',
    labels: expect.objectContaining({ 'naat.dev/gateway': 'egress', 'naat.dev/failover-node': 'g1' }),
    annotations: {
      [failoverAnnotations.addresses]: '203.0.113.10,203.0.113.11',
      [failoverAnnotations.uplinks]: 'isp1,isp2',
      [failoverAnnotations.draining]: 'false',
      [failoverAnnotations.replicaReady]: 'false',
      [failoverAnnotations.durationMs]: '600',
      [failoverAnnotations.lastClaim]: JSON.stringify(claim),
    },
  });
  expect(body.spec).toMatchObject({ holderIdentity: 'g1', leaseDurationSeconds: 1 });
  expect(nodeLease(body, 42)).toEqual({
    node: 'g1',
    addresses: ['203.0.113.10', '203.0.113.11'],
    healthyUplinks: ['isp1', 'isp2'],
    draining: false,
    replicaReady: false,
    observedAt: 42,
  });
  const empty = failoverLeaseBody(
    'naat-system',
    'egress',
    'g1',
    { owned: [], healthyUplinks: [], draining: true, replicaReady: true, leaseDurationMs: 600 },
    undefined,
  );
  expect(nodeLease(empty, 0)).toMatchObject({ addresses: [], healthyUplinks: [], draining: true, replicaReady: true });
  // A Lease that does not say (an agent of a version before it did) counts as complete.
  delete empty.metadata!.annotations![failoverAnnotations.replicaReady];
  expect(nodeLease(empty, 0)?.replicaReady).toBe(true);
  expect(nodeLease({ metadata: {}, spec: {} }, 0)).toBeUndefined();
});
