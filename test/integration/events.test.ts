// The operator's Events against the real apiserver: an Event about a pod is created once for one
// change, and one named for its change once however often it is told; one for a pod whose namespace is
// being deleted (which the apiserver refuses with 403) is dropped quietly, since its reader goes
// with the namespace, while any other refusal is an error.
import { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from '../../common/index.ts';
import { EventRecorder } from '../../operator/events.ts';
import { kubectl } from '../cluster/cluster.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const live = `events-live-${process.pid}`;
const ending = `events-ending-${process.pid}`;
const hold = {
  apiVersion: 'v1',
  kind: 'ConfigMap',
  metadata: { name: 'hold', namespace: ending, finalizers: ['naat.dev/test-hold'] },
};

const logged: Array<{ level: keyof Logger; message: string }> = [];
const log: Logger = {
  debug: (message) => logged.push({ level: 'debug', message }),
  info: (message) => logged.push({ level: 'info', message }),
  warn: (message) => logged.push({ level: 'warn', message }),
  error: (message) => logged.push({ level: 'error', message }),
};

let kubeConfig: KubeConfig;
let recorder: EventRecorder;

beforeAll(async () => {
  await k(['create', 'namespace', live]);
  await k(['create', 'namespace', ending]);
  // A finalizer the test removes keeps the namespace in Terminating for as long as it needs.
  await k(['create', '-f', '-'], JSON.stringify(hold));
  await k(['delete', 'namespace', ending, '--wait=false']);
  await k(['wait', '--for=jsonpath={.status.phase}=Terminating', `namespace/${ending}`, '--timeout=30s']);
  kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  recorder = new EventRecorder({ kubeConfig, identity: 'events-test', log });
});

afterAll(async () => {
  await k(['patch', 'configmap', 'hold', '-n', ending, '--type=merge', '-p', '{"metadata":{"finalizers":null}}']);
  await k(['delete', 'namespace', live, '--ignore-not-found', '--wait=false']);
});

const pod = (namespace: string) => ({ metadata: { name: 'app', namespace } });
const events = async (namespace: string) =>
  JSON.parse(await k(['get', 'events.events.k8s.io', '-n', namespace, '-o', 'json'])).items as Array<{
    reason: string;
    note: string;
    regarding: { kind: string; name: string };
  }>;

test('an Event about a pod is created once for one change', async () => {
  await recorder.record('Pod', pod(live), 'Normal', 'Steered', 'Steer', 'steered to gateway g');
  await recorder.record('Pod', pod(live), 'Normal', 'Steered', 'Steer', 'steered to gateway g');
  expect(await events(live)).toEqual([
    expect.objectContaining({
      reason: 'Steered',
      note: 'steered to gateway g',
      regarding: expect.objectContaining({ kind: 'Pod', name: 'app' }),
    }),
  ]);
  expect(logged).toEqual([]);
});

test('an Event named for its change is created once, however often and by whichever recorder it is told', async () => {
  const named = { metadata: { name: 'named', namespace: live } };
  const change = { name: 'named.change-1', type: 'Warning' as const, reason: 'NotSteered', action: 'Steer' };
  const other = new EventRecorder({ kubeConfig, identity: 'events-test-2', log });
  expect(await recorder.recordOnce('Pod', named, { ...change, note: 'no gateway node' })).toBe('created');
  expect(await other.recordOnce('Pod', named, { ...change, note: 'no gateway node' })).toBe('exists');
  expect(await recorder.recordOnce('Pod', named, { ...change, name: 'named.change-2', note: 'back' })).toBe('created');
  const told = (await events(live)).filter((event) => event.regarding.name === 'named');
  expect(told.map((event) => event.note).sort()).toEqual(['back', 'no gateway node']);
  expect(logged).toEqual([]);
});

test("an Event refused because its pod's namespace is being deleted is dropped without an error", async () => {
  await recorder.record('Pod', pod(ending), 'Normal', 'Steered', 'Steer', 'steered to gateway g');
  expect(await events(ending)).toEqual([]);
  expect(logged).toEqual([{ level: 'debug', message: 'Dropped an Event for a namespace being deleted' }]);
});

test('an Event refused for any other reason is an error', async () => {
  logged.length = 0;
  await recorder.record('Pod', pod(`events-missing-${process.pid}`), 'Normal', 'Steered', 'Steer', 'steered');
  expect(logged).toEqual([{ level: 'error', message: 'Failed to record an Event' }]);
});
