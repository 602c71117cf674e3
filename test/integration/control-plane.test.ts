// Proves the test control plane is a working Kubernetes: the pinned version answers, CRDs are
// served with their schema enforced, and DaemonSets get Running pods on kwok nodes.
import { kubectl } from '../cluster/cluster.ts';
import { testNodes } from './global-setup.ts';

const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);

test('the apiserver runs the pinned Kubernetes version', async () => {
  const version = JSON.parse(await k(['version', '-o', 'json']));
  expect(version.serverVersion.gitVersion).toBe('v1.33.13');
});

describe('a custom resource definition', () => {
  const crd = {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: 'probes.harness.naat.dev' },
    spec: {
      group: 'harness.naat.dev',
      scope: 'Namespaced',
      names: { plural: 'probes', singular: 'probe', kind: 'Probe' },
      versions: [
        {
          name: 'v1',
          served: true,
          storage: true,
          schema: {
            openAPIV3Schema: {
              type: 'object',
              properties: {
                spec: {
                  type: 'object',
                  required: ['port'],
                  properties: { port: { type: 'integer', minimum: 1, maximum: 65535 } },
                },
              },
            },
          },
        },
      ],
    },
  };
  const probe = (port: number) =>
    JSON.stringify({
      apiVersion: 'harness.naat.dev/v1',
      kind: 'Probe',
      metadata: { name: `port-${port}`, namespace: 'default' },
      spec: { port },
    });

  beforeAll(async () => {
    await k(['apply', '-f', '-'], JSON.stringify(crd));
    await k(['wait', '--for=condition=Established', '--timeout=30s', 'crd/probes.harness.naat.dev']);
  });
  afterAll(() => k(['delete', 'crd', 'probes.harness.naat.dev', '--wait=false']));

  test('accepts a valid object and serves it back', async () => {
    await k(['apply', '-f', '-'], probe(8080));
    const stored = JSON.parse(await k(['get', 'probe', 'port-8080', '-n', 'default', '-o', 'json']));
    expect(stored.spec.port).toBe(8080);
  });

  test('rejects an object that breaks the schema, naming the field', async () => {
    await expect(k(['apply', '-f', '-'], probe(70000))).rejects.toThrow(/spec\.port: Invalid value: 70000/);
  });
});

test('a DaemonSet gets one Running pod on each kwok node', async () => {
  const name = `ds-${process.pid}`;
  const daemonSet = {
    apiVersion: 'apps/v1',
    kind: 'DaemonSet',
    metadata: { name, namespace: 'default' },
    spec: {
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: { containers: [{ name: 'agent', image: 'naat/dataplane:test' }] },
      },
    },
  };
  await k(['apply', '-f', '-'], JSON.stringify(daemonSet));
  const placed = async () => {
    const pods = JSON.parse(await k(['get', 'pods', '-n', 'default', '-l', `app=${name}`, '-o', 'json']));
    return pods.items
      .map(
        (pod: { spec: { nodeName?: string }; status: { phase: string } }) => `${pod.spec.nodeName}=${pod.status.phase}`,
      )
      .sort();
  };
  const expected = testNodes.map((node) => `${node.name}=Running`).sort();
  try {
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline && JSON.stringify(await placed()) !== JSON.stringify(expected)) {
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    expect(await placed()).toEqual(expected);
  } finally {
    await k(['delete', 'daemonset', name, '-n', 'default', '--wait=false']);
  }
});
