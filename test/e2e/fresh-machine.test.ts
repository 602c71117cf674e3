// The first-run path on a fresh machine of the kind the project runs on: a minimal Debian root
// (debootstrap's minbase, from the Debian archive) with only Go and kubectl added, as the README
// states them, and none of the packages the tests and the lab need. The project's setup step runs
// in it as a user would run it: as a user other than root it installs nothing and names every
// package to install by hand; as root it installs exactly the missing packages, saying so in one
// line, after which their tools work; a second run has nothing left to do.
import { execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { requirements } from '../setup/requirements.ts';

const run = promisify(execFile);
const repo = join(import.meta.dirname, '..', '..');
const cache = join(homedir(), '.cache', 'naat', 'fresh-machine');
const image = join(cache, 'bookworm-minbase.tar');
const packages = requirements.map((r) => r.package);

/** The archive this machine installs from, so that the fresh root comes from the same place. */
async function mirror(): Promise<string> {
  const sources = await readFile('/etc/apt/sources.list.d/debian.sources', 'utf8').catch(() => '');
  return /^URIs:\s*(\S+\/debian)\s*$/m.exec(sources)?.[1] ?? 'http://deb.debian.org/debian';
}

async function which(command: string): Promise<string> {
  return (await run('sh', ['-c', `command -v ${command}`])).stdout.trim();
}

let root: string;
/** The required packages the fresh root lacks: all but what minbase itself brings. */
let missing: string[];

beforeAll(async () => {
  if (!existsSync(image)) {
    await mkdir(cache, { recursive: true });
    // The format named: mmdebstrap guesses it from the target's extension, and `.part` would make a directory.
    await run('mmdebstrap', ['--variant=minbase', '--format=tar', 'bookworm', `${image}.part`, await mirror()], {
      maxBuffer: 1 << 26,
    });
    await rename(`${image}.part`, image);
  }
  root = await mkdtemp(join(tmpdir(), 'naat-fresh-'));
  await run('tar', ['-xf', image, '-C', root]);
  await copyFile('/etc/resolv.conf', join(root, 'etc/resolv.conf'));
  const present = await installedInRoot();
  missing = packages.filter((p) => !present.includes(p));
}, 600_000);

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

interface Result {
  code: number | null;
  output: string;
}

/**
 * Runs the setup step in the fresh root, in a mount namespace of its own: the checkout read-only
 * at /naat, the project's Node.js runtime, the machine's Go and kubectl.
 */
async function setupInRoot(user?: string): Promise<Result> {
  const goRoot = (await run('go', ['env', 'GOROOT'])).stdout.trim();
  const kubectl = await which('kubectl');
  const node = dirname(
    dirname(await run('readlink', ['-f', join(repo, 'node_modules/.bin/node')]).then((r) => r.stdout.trim())),
  );
  const script = [
    'set -e',
    `mount --rbind /dev "$R/dev"`,
    `mount -t proc proc "$R/proc"`,
    `mkdir -p "$R/naat" "$R/opt/node" "$R/usr/local/go" "$R/root"`,
    `mount --bind "${repo}" "$R/naat" && mount -o remount,bind,ro "$R/naat"`,
    `mount --bind "${node}" "$R/opt/node"`,
    `mount --bind "${goRoot}" "$R/usr/local/go"`,
    `touch "$R/usr/bin/kubectl" && mount --bind "${kubectl}" "$R/usr/bin/kubectl"`,
    `chmod 1777 "$R/tmp"`,
    `exec chroot ${user ? `--userspec=${user}` : ''} "$R" /usr/bin/env -i HOME=/tmp GOTOOLCHAIN=local ` +
      `PATH=/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin /opt/node/bin/node /naat/test/setup/main.ts`,
  ].join('\n');
  return new Promise((resolve) => {
    const child = spawn('unshare', ['--mount', '--fork', 'sh', '-c', script], { env: { ...process.env, R: root } });
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d));
    child.stderr.on('data', (d: Buffer) => (output += d));
    child.on('exit', (code) => resolve({ code, output }));
  });
}

async function installedInRoot(): Promise<string[]> {
  const { stdout } = await run('chroot', [
    root,
    'dpkg-query',
    '-W',
    '-f',
    '${Package} ${db:Status-Status}\n',
    ...packages,
  ]).catch((error: { stdout: string }) => ({ stdout: error.stdout }));
  return stdout
    .split('\n')
    .filter((line) => line.endsWith(' installed'))
    .map((line) => line.split(' ')[0]!);
}

test('the fresh root lacks the packages the tests and the lab need', () => {
  expect(missing.length).toBeGreaterThanOrEqual(packages.length - 1);
});

test('not root: nothing is installed, and the error names every package to install by hand', async () => {
  const result = await setupInRoot('65534:65534');
  expect(result.code).toBe(1);
  expect(result.output).toMatch(/root/);
  expect(result.output).toContain(`apt-get install ${missing.join(' ')}`);
  expect(result.output).not.toMatch(/^\s+at /m);
  expect((await installedInRoot()).sort()).toEqual(packages.filter((p) => !missing.includes(p)).sort());
}, 120_000);

test('as root: the missing packages are installed with one line naming them, and their tools work', async () => {
  const result = await setupInRoot();
  expect(result.code).toBe(0);
  expect(result.output.split('\n')[0]).toMatch(
    new RegExp(`^Installing ${missing.length} missing Debian packages .*: ${missing.join(' ')}$`),
  );
  expect((await installedInRoot()).sort()).toEqual([...packages].sort());
  const tools = await run('chroot', [
    root,
    'sh',
    '-c',
    'nft --version && conntrack --version && ip -V && gcc --version',
  ]);
  expect(tools.stdout).toMatch(/nftables v\d/);
}, 900_000);

test('a second run has nothing to install and says nothing', async () => {
  expect(await setupInRoot()).toEqual({ code: 0, output: '' });
}, 120_000);
