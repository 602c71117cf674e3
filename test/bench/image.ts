// What an image of images/Dockerfile runs, built here without an image: the compiled tree its build
// stage makes, and its runtime stage's command and environment. The benchmarks measure the
// programs as they run in a cluster: compiled JavaScript costs less memory than the TypeScript
// sources run through Node's type stripping.
import { execFileSync } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..', '..');

export interface ImageBuild {
  /** What the image holds in its working directory: dist/, package.json, node_modules. */
  app: string;
  /** The stage's ENTRYPOINT, `node` first. */
  command: string[];
  /** The stage's NODE_OPTIONS, '' when it sets none. */
  nodeOptions: string;
  /** The ENV of the runtime stage every component's stage builds on (NODE_ENV). */
  env: Record<string, string>;
}

/** The ENV lines of a stage of the Dockerfile, each `ENV NAME=VALUE` (quoted or not). */
function stageEnv(stage: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [, name, quoted, plain] of stage.matchAll(/^ENV (\w+)=(?:"([^"]*)"|(\S*))$/gm)) {
    env[name!] = quoted ?? plain ?? '';
  }
  return env;
}

/**
 * Builds what the image of `stage` holds in its working directory (the `npm run build` output,
 * package.json and the modules) into a temporary directory, and reads from images/Dockerfile how
 * the image starts it. The caller removes `app`.
 */
export async function buildImage(stage: 'sidecar' | 'dataplane' | 'operator'): Promise<ImageBuild> {
  const dockerfile = await readFile(join(root, 'images', 'Dockerfile'), 'utf8');
  const stageText = (name: string) =>
    new RegExp(`^FROM \\S+ AS ${name}$([\\s\\S]*?)(?=^FROM |$(?![\\s\\S]))`, 'm').exec(dockerfile)?.[1] ?? '';
  const own = stageText(stage);
  const command = /^ENTRYPOINT (\[.*\])$/m.exec(own)?.[1];
  if (!command) throw new Error(`images/Dockerfile has no ${stage} stage with an ENTRYPOINT`);
  const { NODE_OPTIONS: nodeOptions = '', ...env } = { ...stageEnv(stageText('runtime')), ...stageEnv(own) };
  const app = await mkdtemp(join(tmpdir(), 'naat-bench-app-'));
  try {
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
    // Emitting only: type checking is `npm run typecheck`'s job.
    const build = ['-p', join(root, 'tsconfig.build.json'), '--outDir', join(app, 'dist'), '--noCheck'];
    execFileSync(process.execPath, [tsc, ...build], { stdio: 'inherit' });
    await copyFile(join(root, 'package.json'), join(app, 'package.json'));
    await symlink(join(root, 'node_modules'), join(app, 'node_modules'));
  } catch (error) {
    await rm(app, { recursive: true, force: true });
    throw error;
  }
  return { app, command: JSON.parse(command) as string[], nodeOptions, env };
}

/** The image's command with this Node.js binary for `node` (the one the image pins, as here). */
export function imageArgv(image: ImageBuild): string[] {
  const [node, ...args] = image.command;
  if (node !== 'node') throw new Error(`the image runs ${node}, not node`);
  return [process.execPath, ...args];
}
