import type { Cluster } from '../cluster/cluster.ts';

export default async function globalTeardown(): Promise<void> {
  await (globalThis as { naatCluster?: Cluster }).naatCluster?.stop();
}
