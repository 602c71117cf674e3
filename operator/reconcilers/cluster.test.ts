import type { KubernetesObject } from '@kubernetes/client-node';
import type { ChangeHandler } from '../../common/kube/index.ts';
import { operatorSettings } from '../../test/cluster/operator.ts';
import { validate, type EgressGateway } from '../../crds/index.ts';
import type { Caches } from '../caches.ts';
import { parseSettings } from '../settings.ts';
import { clusterCompiler, podFacts } from './cluster.ts';

test("a Node-driven pod's facts carry its uid and its running containers by runtime id, for its node agent", () => {
  const id = (c: string) => c.repeat(64);
  const facts = podFacts({
    metadata: {
      namespace: 'shop',
      name: 'web',
      uid: 'uid-web',
      annotations: { 'naat.dev/association-driver': 'Node' },
    },
    spec: { nodeName: 'worker', containers: [{ name: 'app' }, { name: 'log' }, { name: 'starting' }] },
    status: {
      podIPs: [{ ip: '10.244.1.10' }],
      initContainerStatuses: [
        {
          name: 'setup',
          containerID: `containerd://${id('e')}`,
          image: '',
          imageID: '',
          ready: false,
          restartCount: 0,
        },
      ],
      containerStatuses: [
        { name: 'log', containerID: `cri-o://${id('d')}`, image: '', imageID: '', ready: true, restartCount: 0 },
        { name: 'app', containerID: `containerd://${id('a')}`, image: '', imageID: '', ready: true, restartCount: 1 },
        { name: 'starting', image: '', imageID: '', ready: false, restartCount: 0 },
      ],
    },
  });
  expect(facts.nodeAssociation).toEqual({
    uid: 'uid-web',
    containers: [
      { id: id('a'), name: 'app' },
      { id: id('d'), name: 'log' },
      { id: id('e'), name: 'setup' },
    ],
  });
  expect(podFacts({ metadata: { namespace: 'shop', name: 'web', uid: 'uid-web' } }).nodeAssociation).toBeUndefined();
});

test('a Node-driven strict pod tells its node agent to answer its programs for stamps', () => {
  const pod = (mode: string) =>
    podFacts({
      metadata: {
        namespace: 'shop',
        name: 'web',
        uid: 'uid-web',
        annotations: { 'naat.dev/association-driver': 'Node', 'naat.dev/association-mode': mode },
      },
      spec: { nodeName: 'worker', containers: [{ name: 'app' }] },
    });
  expect(pod('Strict').nodeAssociation).toEqual({ uid: 'uid-web', containers: [], strict: true });
  expect(pod('Strict').strict).toBe(true);
  expect(pod('Observe').nodeAssociation).toEqual({ uid: 'uid-web', containers: [] });
});

const settings = parseSettings(operatorSettings('naat', { metrics: 8080, health: 8081, webhook: 9443 }));

/** A cache as the compiler reads it: its objects, and its handlers called as they change. */
function cache() {
  const objects = new Map<string, KubernetesObject>();
  const handlers: ChangeHandler<KubernetesObject>[] = [];
  return {
    list: () => [...objects.values()],
    get: (key: string) => objects.get(key),
    onChange: (handler: ChangeHandler<KubernetesObject>) => void handlers.push(handler),
    change(object: KubernetesObject & { status?: unknown }) {
      const key = object.metadata!.name!;
      objects.set(key, object);
      for (const handler of handlers) handler(key, object);
    },
  };
}

/** The compiler reads a gateway's spec; the other kinds' fields may all be missing. */
const validated = validate('EgressGateway', {
  apiVersion: 'naat.dev/v1alpha1',
  kind: 'EgressGateway',
  metadata: { name: 'egress' },
  spec: { nodeSelector: { role: 'gateway' }, uplinks: { names: ['isp'] }, namespaceSelector: {} },
});
if (!validated.ok) throw new Error(validated.errors.join('; '));
const gateway = validated.value as EgressGateway & KubernetesObject;

const kinds = ['gateways', 'uplinks', 'policies', 'pods', 'namespaces', 'nodes'] as const;

function setUp() {
  const caches = Object.fromEntries(kinds.map((kind) => [kind, cache()])) as Record<
    (typeof kinds)[number],
    ReturnType<typeof cache>
  >;
  return { caches, compile: clusterCompiler(caches as unknown as Caches, settings) };
}

describe('the cluster compiler', () => {
  test('compiles once while nothing it reads changes', () => {
    const { compile } = setUp();
    expect(compile()).toBe(compile());
  });

  test.each(kinds)('compiles again once a change of %s reached the cache, not for its status', (kind) => {
    const { caches, compile } = setUp();
    const before = compile();
    const object = kind === 'gateways' ? gateway : { metadata: { name: 'changed' } };
    caches[kind].change(object);
    const after = compile();
    expect(after).not.toBe(before);
    expect(compile()).toBe(after);
    // What the operator writes of an object, not what it compiles from.
    caches[kind].change({ ...object, status: { conditions: [{ type: 'Written' }] } });
    expect(compile()).toBe(after);
  });
});
