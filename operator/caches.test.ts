import type { V1Node, V1Pod } from '@kubernetes/client-node';
import { internalAddresses } from './agent-signer.ts';
import { nodeProjection, podProjection } from './caches.ts';
import { nodeFacts, podFacts } from './reconcilers/cluster.ts';
import { associationCondition, steeredCondition } from './status.ts';

const condition = (type: string) => ({ type, status: 'True', lastTransitionTime: new Date(0) });

const pod: V1Pod = {
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: {
    name: 'web-0',
    namespace: 'shop',
    uid: '5b7c8a1e-0000-4000-8000-000000000001',
    resourceVersion: '42',
    labels: { app: 'web' },
    annotations: {
      'naat.dev/association-driver': 'Node',
      'naat.dev/association-mode': 'Strict',
      'kubectl.kubernetes.io/restartedAt': '2026-12-05T00:00:00Z',
    },
    managedFields: [{ manager: 'kubelet', operation: 'Update', fieldsType: 'FieldsV1', fieldsV1: {} }],
    ownerReferences: [{ apiVersion: 'apps/v1', kind: 'StatefulSet', name: 'web', uid: 'x' }],
  },
  spec: {
    nodeName: 'worker-a',
    initContainers: [
      { name: 'naat-stamp-init', image: 'naat', command: ['stamp-init'] },
      { name: 'log-shipper', image: 'shipper', restartPolicy: 'Always', env: [{ name: 'LEVEL', value: 'debug' }] },
    ],
    containers: [
      {
        name: 'app',
        image: 'app:1',
        env: [{ name: 'A', value: 'b' }],
        volumeMounts: [{ name: 'data', mountPath: '/d' }],
      },
    ],
    volumes: [{ name: 'data', emptyDir: {} }],
  },
  status: {
    phase: 'Running',
    podIPs: [{ ip: '10.244.1.5' }, { ip: 'fd00:244::5' }],
    hostIP: '192.0.2.10',
    conditions: [condition('Ready'), condition(steeredCondition), condition(associationCondition)],
    initContainerStatuses: [
      {
        name: 'log-shipper',
        containerID: `containerd://${'b'.repeat(64)}`,
        image: 'shipper',
        imageID: '',
        ready: true,
        restartCount: 0,
      },
    ],
    containerStatuses: [
      {
        name: 'app',
        containerID: `containerd://${'a'.repeat(64)}`,
        image: 'app:1',
        imageID: 'sha',
        ready: true,
        restartCount: 3,
      },
    ],
  },
};

describe('podProjection', () => {
  it('keeps every fact the compiler reads of a pod', () => {
    expect(podFacts(podProjection(pod))).toEqual(podFacts(pod));
    expect(podFacts(pod).nodeAssociation?.containers).toHaveLength(2);
  });

  it("keeps naat's conditions, the object's identity and version, and drops the rest", () => {
    const projected = podProjection(pod);
    expect(projected.status?.conditions?.map((c) => c.type)).toEqual([steeredCondition, associationCondition]);
    expect(projected.metadata).toEqual({
      name: 'web-0',
      namespace: 'shop',
      uid: pod.metadata!.uid,
      resourceVersion: '42',
      labels: { app: 'web' },
      annotations: { 'naat.dev/association-driver': 'Node', 'naat.dev/association-mode': 'Strict' },
    });
    expect(JSON.stringify(projected)).not.toMatch(/managedFields|volume|env|hostIP|imageID|restartCount|restartedAt/);
  });

  it('takes a pod that has no spec or status yet', () => {
    expect(podProjection({ metadata: { name: 'p', namespace: 'n' } })).toEqual({
      metadata: { name: 'p', namespace: 'n' },
    });
  });
});

describe('nodeProjection', () => {
  const node: V1Node = {
    metadata: {
      name: 'gw-1',
      uid: 'u',
      resourceVersion: '7',
      labels: { 'naat.dev/gateway': 'a' },
      annotations: { x: 'y' },
    },
    spec: { unschedulable: true, podCIDRs: ['10.244.1.0/24'], taints: [{ key: 'k', effect: 'NoSchedule' }] },
    status: {
      addresses: [
        { type: 'InternalIP', address: '192.0.2.1' },
        { type: 'InternalIP', address: '2001:db8::1' },
        { type: 'Hostname', address: 'gw-1' },
      ],
      images: [{ names: ['registry.example/app:1'], sizeBytes: 1 }],
      conditions: [{ type: 'Ready', status: 'True' }],
    },
  };

  it('keeps every fact the reconcilers read of a node, and drops the rest', () => {
    const projected = nodeProjection(node);
    expect(nodeFacts(projected)).toEqual(nodeFacts(node));
    expect(nodeFacts(node)).toMatchObject({ unschedulable: true, addresses: ['192.0.2.1', '2001:db8::1'] });
    expect(internalAddresses(projected)).toEqual(internalAddresses(node));
    expect(projected.spec?.podCIDRs).toEqual(['10.244.1.0/24']);
    expect(JSON.stringify(projected)).not.toMatch(/images|taints|Ready|annotations/);
  });
});
