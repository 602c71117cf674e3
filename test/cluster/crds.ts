// naat's CRDs in a test cluster: applied from crds/ and established before anything uses them.
import { join } from 'node:path';
import { definitions, group } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { kubectl } from './cluster.ts';

export async function installCrds(kubeconfig: string): Promise<void> {
  const files = definitions.map((definition) => join(root, 'crds', `${group}_${definition.plural}.yaml`));
  await kubectl(kubeconfig, ['apply', '--server-side', '--force-conflicts', ...files.flatMap((file) => ['-f', file])]);
  await kubectl(kubeconfig, [
    'wait',
    '--for=condition=Established',
    '--timeout=60s',
    ...definitions.map((definition) => `crd/${definition.plural}.${group}`),
  ]);
}
