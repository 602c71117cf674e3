// Which streams a gateway agent takes for a pod, by the node the pod runs on, the address the
// stream comes from and the agent certificate it was made with, and for a node-driven stream also
// by the pod's driver (the pure part of TokenReviewAuthenticator; test/integration/naa-relay.test.ts
// runs it against the real apiserver).
import type { V1Pod } from '@kubernetes/client-node';
import { nodeDrivenRefusal, nodeRefusal, peerAddress } from './auth.ts';

const pod = (nodeName: string | undefined, hostIPs: string[], driver?: string): V1Pod => ({
  metadata: {
    namespace: 'shop',
    name: 'web-1',
    ...(driver && { annotations: { 'naat.dev/association-driver': driver } }),
  },
  spec: { containers: [], ...(nodeName && { nodeName }) },
  status: { hostIP: hostIPs[0], hostIPs: hostIPs.map((ip) => ({ ip })) },
});

test('a pod on the gateway’s own node is taken from any address', () => {
  expect(nodeRefusal(pod('gw-a', ['192.0.2.1']), 'gw-a', { address: '10.0.0.5' }, false)).toBeUndefined();
  expect(nodeRefusal(pod('gw-a', ['192.0.2.1']), 'gw-a', {}, false)).toBeUndefined();
});

test('a pod on another node is taken only from an address of that node, in either family', () => {
  const worker = pod('worker-1', ['192.0.2.7', '2001:db8::7']);
  expect(nodeRefusal(worker, 'gw-a', { address: '192.0.2.7' }, false)).toBeUndefined();
  expect(nodeRefusal(worker, 'gw-a', { address: '2001:db8:0:0::7' }, false)).toBeUndefined();
  expect(nodeRefusal(worker, 'gw-a', { address: '192.0.2.8' }, false)).toBe(
    'pod shop/web-1 runs on node worker-1, not on gw-a, so its stream must come through the node agent of ' +
      'worker-1 (from 192.0.2.7 or 2001:db8::7), and this one comes from 192.0.2.8',
  );
  expect(nodeRefusal(worker, 'gw-a', {}, false)).toMatch(/and this one comes from an unknown address$/);
  expect(nodeRefusal(pod('worker-1', []), 'gw-a', { address: '192.0.2.7' }, false)).toMatch(
    /\(from an address the pod does not report yet\)/,
  );
  expect(nodeRefusal(pod(undefined, []), 'gw-a', { address: '192.0.2.7' }, false)).toBe(
    'pod shop/web-1 is not scheduled on a node, and this is gw-a',
  );
});

test('over TLS a relayed stream must also carry the agent certificate of the pod’s node', () => {
  const worker = pod('worker-1', ['192.0.2.7']);
  expect(nodeRefusal(worker, 'gw-a', { address: '192.0.2.7', agentNode: 'worker-1' }, true)).toBeUndefined();
  expect(nodeRefusal(worker, 'gw-a', { address: '192.0.2.7', agentNode: 'worker-2' }, true)).toBe(
    'pod shop/web-1 runs on node worker-1, not on gw-a, so its stream must come through the node agent of worker-1 ' +
      '(with its agent certificate), and this one was made with the certificate of node worker-2',
  );
  expect(nodeRefusal(worker, 'gw-a', { address: '192.0.2.7' }, true)).toMatch(
    /and this one was made with no agent certificate the CA issued$/,
  );
  expect(nodeRefusal(worker, 'gw-a', { address: '192.0.2.8', agentNode: 'worker-1' }, true)).toMatch(
    /and this one comes from 192\.0\.2\.8$/,
  );
  // The pod's own node needs no certificate: a sidecar has none.
  expect(nodeRefusal(pod('gw-a', ['192.0.2.1']), 'gw-a', { address: '10.0.0.5' }, true)).toBeUndefined();
});

describe('a node-driven stream', () => {
  const worker = pod('worker-1', ['192.0.2.7'], 'Node');
  const relayOf = (node: string | undefined) => ({ address: '192.0.2.7', agentNode: node });

  test('is taken from the relay of the pod’s node with that node’s agent certificate', () => {
    expect(nodeDrivenRefusal(worker, 'gw-a', relayOf('worker-1'))).toBeUndefined();
  });

  test('is refused from another node, or without an agent certificate, whatever its address', () => {
    expect(nodeDrivenRefusal(worker, 'gw-a', relayOf('worker-2'))).toBe(
      'pod shop/web-1 runs on node worker-1, not on gw-a, so its stream must come through the node agent of worker-1 ' +
        '(with its agent certificate), and this one was made with the certificate of node worker-2',
    );
    expect(nodeDrivenRefusal(worker, 'gw-a', relayOf(undefined))).toMatch(
      /and this one was made with no agent certificate the CA issued$/,
    );
    expect(nodeDrivenRefusal(worker, 'gw-a', { address: '192.0.2.8', agentNode: 'worker-1' })).toMatch(
      /and this one comes from 192\.0\.2\.8$/,
    );
    expect(nodeDrivenRefusal(worker, 'gw-a', { local: true })).toBe(
      'pod shop/web-1 runs on node worker-1, and this stream comes from the gateway agent of node gw-a',
    );
  });

  test('of a pod of the gateway’s own node is taken only from the gateway agent itself', () => {
    const near = pod('gw-a', ['192.0.2.1'], 'Node');
    expect(nodeDrivenRefusal(near, 'gw-a', { local: true })).toBeUndefined();
    expect(nodeDrivenRefusal(near, 'gw-a', { address: '192.0.2.1', agentNode: 'gw-a' })).toBe(
      'pod shop/web-1 runs on this gateway node gw-a, whose gateway agent drives it from within itself only, ' +
        'and this stream comes from 192.0.2.1',
    );
  });

  test('is refused for a pod that is not node-driven or not scheduled', () => {
    expect(nodeDrivenRefusal(pod('worker-1', ['192.0.2.7']), 'gw-a', relayOf('worker-1'))).toBe(
      "pod shop/web-1 is not node-driven (its annotation naat.dev/association-driver is not set, not 'Node'), " +
        'so only its own driver speaks for it, with its token',
    );
    expect(nodeDrivenRefusal(pod('worker-1', ['192.0.2.7'], 'Sidecar'), 'gw-a', relayOf('worker-1'))).toMatch(
      /^pod shop\/web-1 is not node-driven \(its annotation naat.dev\/association-driver is 'Sidecar', not 'Node'\)/,
    );
    expect(nodeDrivenRefusal(pod(undefined, [], 'Node'), 'gw-a', relayOf('worker-1'))).toBe(
      'pod shop/web-1 is not scheduled on a node, so no node agent drives it',
    );
  });
});

test.each([
  ['192.0.2.7:50123', '192.0.2.7'],
  ['2001:db8::7:50123', '2001:db8::7'],
  ['[2001:db8::7]:50123', '2001:db8::7'],
  ['::ffff:192.0.2.7:50123', '192.0.2.7'],
  ['::1:8080', '::1'],
  ['192.0.2.7', '192.0.2.7'],
  ['unix:/run/naa.sock', undefined],
  ['unknown', undefined],
])('the peer %s is the address %s', (peer, address) => {
  expect(peerAddress(peer)).toBe(address);
});
