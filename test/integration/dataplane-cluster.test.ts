// The dataplane's two ties to the cluster, against the real apiserver: nodes report their view of
// an uplink into its status (each owns its entry of status.nodes), and an agent follows its
// gateway's ConfigMap through a watch.
import { KubeConfig } from '@kubernetes/client-node';
import { join } from 'node:path';
import { apiVersion, group } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { watchConfigMap } from '../../dataplane/config-source.ts';
import { UplinkStatusReporter } from '../../dataplane/report.ts';
import { kubectl } from '../cluster/cluster.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const name = `report-${process.pid}`;

function report(node: string, healthy: boolean, activeFlows: number): AgentReport {
  return {
    node,
    uplinks: [
      {
        name,
        id: 1,
        interface: 'up1',
        healthy,
        since: '2026-11-25T08:00:00.000Z',
        latencyMs: 1.234,
        lossPercent: 0,
        activeFlows,
        portUtilisationPercent: 12.5,
      },
    ],
    flows: activeFlows,
    associations: 0,
  };
}

beforeAll(async () => {
  await k(['apply', '--server-side', '--force-conflicts', '-f', join(root, 'crds', `${group}_uplinks.yaml`)]);
  await k(['wait', '--for=condition=Established', '--timeout=60s', `crd/uplinks.${group}`]);
  await k(
    ['apply', '--server-side', '-f', '-'],
    JSON.stringify({ apiVersion, kind: 'Uplink', metadata: { name }, spec: { interface: 'up1', snat: {} } }),
  );
});

afterAll(() => k(['delete', 'uplink', name, '--ignore-not-found']));

async function nodes(): Promise<Array<Record<string, unknown>>> {
  const uplink = JSON.parse(await k(['get', 'uplink', name, '-o', 'json'])) as { status?: { nodes?: [] } };
  return uplink.status?.nodes ?? [];
}

test('each node applies its own status entry, and a change of one leaves the other alone', async () => {
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  const a = new UplinkStatusReporter(kubeConfig);
  const b = new UplinkStatusReporter(kubeConfig);
  await a.report(report('gateway-a', true, 3));
  await b.report(report('gateway-b', true, 5));
  expect(await nodes()).toEqual([
    {
      node: 'gateway-a',
      healthy: true,
      since: '2026-11-25T08:00:00.000Z',
      latencyMs: 1.23,
      lossPercent: 0,
      activeFlows: 3,
      portUtilisationPercent: 12.5,
    },
    expect.objectContaining({ node: 'gateway-b', activeFlows: 5 }),
  ]);
  await a.report(report('gateway-a', false, 0));
  const after = await nodes();
  expect(after.find((n) => n.node === 'gateway-a')).toMatchObject({ healthy: false, activeFlows: 0 });
  expect(after.find((n) => n.node === 'gateway-b')).toMatchObject({ healthy: true, activeFlows: 5 });
  await expect(
    a.report({ ...report('gateway-a', true, 1), uplinks: [{ ...report('x', true, 1).uplinks[0]!, name: 'missing' }] }),
  ).resolves.toBeUndefined();
});

test('follows its ConfigMap as it changes, says when the key is missing, and knows when the ConfigMap is deleted', async () => {
  const namespace = `naat-cm-${process.pid}`;
  await k(['create', 'namespace', namespace]);
  try {
    const configMap = (text: string, key = 'config.json') =>
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'ConfigMap',
        metadata: { name: 'gw', namespace },
        data: { [key]: text },
      });
    await k(['apply', '-f', '-'], configMap('one'));
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(process.env.KUBECONFIG!);
    const texts: string[] = [];
    const errors: string[] = [];
    const source = await watchConfigMap(
      kubeConfig,
      namespace,
      'gw',
      'config.json',
      (t) => texts.push(t),
      (e) => errors.push(e.message),
      1000,
    );
    const until = async (done: () => boolean) => {
      for (let i = 0; i < 100 && !done(); i++) await new Promise((r) => setTimeout(r, 50));
      return done();
    };
    try {
      expect(await until(() => texts.length === 1)).toBe(true);
      const changedAt = Date.now();
      await k(['apply', '-f', '-'], configMap('two'));
      expect(await until(() => texts.length === 2)).toBe(true);
      console.log(`the agent saw its ConfigMap change ${Date.now() - changedAt} ms after kubectl apply returned`);
      // Past a resync the same text is not delivered again.
      await new Promise((r) => setTimeout(r, 1500));
      expect(texts).toEqual(['one', 'two']);
      await k(['replace', '-f', '-'], configMap('three', 'other'));
      expect(await until(() => errors.some((e) => e.includes('has no config.json')))).toBe(true);
      expect(source.deleted()).toBe(false);
      // The gateway agent takes its rules away at SIGTERM only when its config was deleted.
      await k(['delete', 'configmap', 'gw', '-n', namespace]);
      expect(await until(() => source.deleted())).toBe(true);
      await k(['apply', '-f', '-'], configMap('four'));
      expect(await until(() => !source.deleted())).toBe(true);
      expect(texts).toEqual(['one', 'two', 'four']);
    } finally {
      source.stop();
    }
  } finally {
    await k(['delete', 'namespace', namespace, '--wait=false']);
  }
});
