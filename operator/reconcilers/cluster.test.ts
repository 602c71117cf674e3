import { podFacts } from './cluster.ts';

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
