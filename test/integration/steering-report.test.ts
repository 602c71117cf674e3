// Node agents report their steering into the EgressGateway's status against the real apiserver:
// each node owns its entry of status.steering.nodes (its own field manager), entries of two nodes
// live side by side, and a gateway leaving one node's config takes away that node's entry only.
import { KubeConfig } from '@kubernetes/client-node';
import { join } from 'node:path';
import { apiVersion, group } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { SteeringStatusReporter, type SteeringNodeEntry } from '../../dataplane/steering/report.ts';
import { kubectl } from '../cluster/cluster.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const gateways = [`steer-a-${process.pid}`, `steer-b-${process.pid}`];

beforeAll(async () => {
  await k(['apply', '--server-side', '--force-conflicts', '-f', join(root, 'crds', `${group}_egressgateways.yaml`)]);
  await k(['wait', '--for=condition=Established', '--timeout=60s', `crd/egressgateways.${group}`]);
  for (const name of gateways) {
    await k(
      ['apply', '--server-side', '-f', '-'],
      JSON.stringify({
        apiVersion,
        kind: 'EgressGateway',
        metadata: { name },
        spec: { nodeSelector: { 'naat.dev/gateway': 'true' }, uplinks: { names: ['isp1'] }, namespaceSelector: {} },
      }),
    );
  }
});

afterAll(() => k(['delete', 'egressgateway', ...gateways, '--ignore-not-found']));

interface Status {
  status?: { steering?: { nodes?: SteeringNodeEntry[] } };
  metadata: { managedFields?: Array<{ manager: string; subresource?: string }> };
}

async function gateway(name: string): Promise<Status> {
  return JSON.parse(await k(['get', 'egressgateway', name, '-o', 'json', '--show-managed-fields'])) as Status;
}
const entries = async (name: string) =>
  ((await gateway(name)).status?.steering?.nodes ?? []).sort((a, b) => a.node.localeCompare(b.node));

test('two nodes keep their own entries, and a gateway leaving one node takes away only that entry', async () => {
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  const t0 = new Date('2026-12-01T10:00:00Z');
  let now = t0;
  const a = new SteeringStatusReporter(kubeConfig, 'worker-a', () => now);
  const b = new SteeringStatusReporter(kubeConfig, 'worker-b', () => now);
  const [first, second] = gateways as [string, string];

  await a.report([
    { gateway: first, ready: true, reason: 'Applied', hash: 'sha256:a1' },
    { gateway: second, ready: true, reason: 'Applied', hash: 'sha256:a1' },
  ]);
  await b.report([{ gateway: first, ready: false, reason: 'ApplyFailed', message: 'nft: no such device' }]);
  expect(await entries(first)).toEqual([
    { node: 'worker-a', ready: true, reason: 'Applied', hash: 'sha256:a1', since: t0.toISOString() },
    { node: 'worker-b', ready: false, reason: 'ApplyFailed', message: 'nft: no such device', since: t0.toISOString() },
  ]);
  expect(await entries(second)).toEqual([expect.objectContaining({ node: 'worker-a' })]);
  const managers = (await gateway(first)).metadata.managedFields?.filter((f) => f.subresource === 'status');
  expect(managers?.map((f) => f.manager).sort()).toEqual(['naat-node-worker-a', 'naat-node-worker-b']);

  // worker-b recovers: its entry changes and its since moves; worker-a's stays as it was.
  now = new Date('2026-12-01T10:05:00Z');
  await b.report([{ gateway: first, ready: true, reason: 'Applied', hash: 'sha256:b2' }]);
  expect(await entries(first)).toEqual([
    expect.objectContaining({ node: 'worker-a', since: t0.toISOString() }),
    { node: 'worker-b', ready: true, reason: 'Applied', hash: 'sha256:b2', since: now.toISOString() },
  ]);

  // The first gateway leaves worker-a's node config.
  await a.report([{ gateway: second, ready: true, reason: 'Applied', hash: 'sha256:a2' }]);
  expect((await entries(first)).map((e) => e.node)).toEqual(['worker-b']);
  expect(await entries(second)).toEqual([
    { node: 'worker-a', ready: true, reason: 'Applied', hash: 'sha256:a2', since: t0.toISOString() },
  ]);

  // A gateway that does not exist is skipped, and the rest is still reported.
  await expect(
    b.report([
      { gateway: 'no-such-gateway', ready: true },
      { gateway: first, ready: true, reason: 'Applied', hash: 'sha256:b3' },
    ]),
  ).resolves.toBeUndefined();
  expect(await entries(first)).toEqual([expect.objectContaining({ node: 'worker-b', hash: 'sha256:b3' })]);
});
