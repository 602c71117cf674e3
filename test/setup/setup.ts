// Sets up the machine for the tests and the lab: reads it, lets requirements.ts decide, then
// installs the missing Debian packages, fetches a newer Go toolchain when the local Go can, and
// throws with every line of what must be done by hand. When all is present it only reads, in a few
// tens of milliseconds, since `npm test` runs it each time.
import { execFile, spawn } from 'node:child_process';
import { access, readdir, readFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { buildBinaries } from '../cluster/cluster.ts';
import {
  installedFromDpkg,
  parseGoVersion,
  planSetup,
  requiredGo,
  requirements,
  type Machine,
} from './requirements.ts';

const run = promisify(execFile);
const cluster = join(import.meta.dirname, '..', 'cluster');

async function onPath(probe: string): Promise<boolean> {
  const candidates = probe.startsWith('/')
    ? [probe]
    : (process.env.PATH ?? '')
        .split(delimiter)
        .filter(Boolean)
        .map((dir) => join(dir, probe));
  for (const file of candidates) {
    if (
      await access(file).then(
        () => true,
        () => false,
      )
    )
      return true;
  }
  return false;
}

async function goMods(): Promise<string[]> {
  const modules = join(cluster, 'modules');
  const files = [...(await readdir(modules)).map((m) => join(modules, m, 'go.mod')), join(cluster, 'helm', 'go.mod')];
  return Promise.all(files.map((file) => readFile(file, 'utf8')));
}

async function readMachine(): Promise<Machine> {
  const [apt, dpkg, kubectl] = await Promise.all(['apt-get', 'dpkg-query', 'kubectl'].map(onPath));
  const debian = apt! && dpkg!;
  const packages = requirements.map((r) => r.package);
  const installed = debian
    ? installedFromDpkg(
        // dpkg-query exits 1 when a package is unknown to it, and still lists the others.
        await run('dpkg-query', ['-W', '-f', '${Package} ${db:Status-Status}\n', ...packages]).then(
          (r) => r.stdout,
          (error: { stdout?: string }) => error.stdout ?? '',
        ),
      )
    : new Set(
        (await Promise.all(requirements.map(async (r) => ((await onPath(r.probe)) ? r.package : undefined)))).filter(
          (p) => p !== undefined,
        ),
      );
  const go = await run('go', ['env', 'GOVERSION'], { env: { ...process.env, GOTOOLCHAIN: 'local' } }).then(
    (r) => parseGoVersion(r.stdout),
    () => undefined,
  );
  return {
    root: process.getuid?.() === 0,
    debian,
    installed,
    go,
    goRequired: requiredGo(await goMods()),
    kubectl: kubectl!,
  };
}

function inherit(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'inherit', env });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${command} ${args[0]} exited ${code}`))));
  });
}

/**
 * Makes the machine ready for the tests and the lab, or throws an error whose message lists what to
 * do by hand. On return, process.env.PATH leads to a Go the pinned modules accept, for the
 * processes started after it (the control plane's build reads it with GOTOOLCHAIN=local), and to
 * a kubectl: the machine's own, or else the one built with the test control plane.
 */
export async function setUpMachine(say: (line: string) => void = (line) => console.error(line)): Promise<void> {
  const plan = planSetup(await readMachine());
  if (plan.errors.length > 0)
    throw new Error(`The machine is not ready:\n${plan.errors.map((e) => `  - ${e}`).join('\n')}`);
  if (plan.install) {
    say(plan.install.message);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
    await inherit('apt-get', ['update', '-qq'], env);
    await inherit('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...plan.install.packages], env);
  }
  if (plan.goToolchain) {
    say(plan.goToolchain.message);
    // Go ≥ 1.21 downloads the named toolchain as a module (golang.org/toolchain) and runs it; its
    // GOROOT is where that toolchain now lies in the module cache.
    const { stdout } = await run('go', ['env', 'GOROOT'], {
      env: { ...process.env, GOTOOLCHAIN: plan.goToolchain.name },
    });
    process.env.PATH = `${join(stdout.trim(), 'bin')}${delimiter}${process.env.PATH ?? ''}`;
  }
  if (plan.kubectl) {
    say(plan.kubectl.message);
    // The build is cached; only its first run on a machine takes minutes, and it says so as it goes.
    process.env.PATH = `${await buildBinaries()}${delimiter}${process.env.PATH ?? ''}`;
  }
}
