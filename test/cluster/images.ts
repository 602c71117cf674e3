// The operator, dataplane and sidecar images for the real node, built by images/build.sh from the
// Dockerfile of the published images.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const components = ['operator', 'dataplane', 'sidecar'] as const;
export type Component = (typeof components)[number];

/** The name an image is imported under (`imagePullPolicy: Never` finds it on the node). */
export const imageRepository = (component: Component) => `naat.dev/naat-${component}`;
export const imageTag = 'test';

/** helm's `--set` arguments that install the chart with these images, never pulled. */
export const helmImageValues: readonly string[] = components.flatMap((component) => [
  '--set',
  `images.${component}.repository=${imageRepository(component)}`,
  '--set',
  `images.${component}.tag=${imageTag}`,
  '--set',
  `images.${component}.pullPolicy=Never`,
]);

/** Builds the images if what goes into them changed; resolves with the archive of each. */
export async function buildImages(): Promise<Record<Component, string>> {
  const { stdout } = await run('bash', [join(import.meta.dirname, '..', '..', 'images', 'build.sh')], {
    maxBuffer: 1 << 24,
  });
  const dir = stdout.trim().split('\n').pop()!;
  return Object.fromEntries(components.map((c) => [c, join(dir, `${c}.tar`)])) as Record<Component, string>;
}
