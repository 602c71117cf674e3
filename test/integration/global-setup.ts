// Starts one real control plane for the whole integration run; tests reach it through KUBECONFIG.
import { startCluster, type Cluster } from '../cluster/cluster.ts';

export const testNodes = [
  { name: 'gateway-a', labels: { 'naat.dev/gateway': 'true' } },
  { name: 'gateway-b', labels: { 'naat.dev/gateway': 'true' } },
  { name: 'worker-a' },
];

export default async function globalSetup(): Promise<void> {
  const cluster = await startCluster({
    workloads: true,
    nodes: testNodes,
    progress: (line) => process.stderr.write(`  ${line}\n`),
  });
  process.env.KUBECONFIG = cluster.kubeconfig;
  process.env.NAAT_TEST_CLUSTER_DIR = cluster.dir;
  (globalThis as { naatCluster?: Cluster }).naatCluster = cluster;
}
