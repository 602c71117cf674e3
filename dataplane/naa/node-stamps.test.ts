import { lstatSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hostPidOf, innermostPid, listenForAll, resolveWithin } from './node-stamps.ts';

test('the innermost pid is the last field of NSpid', () => {
  expect(innermostPid('Name:\tcurl\nPid:\t4242\nNSpid:\t4242\t17\t1\nNSpgid:\t4242\n')).toBe(1);
  expect(innermostPid('Name:\tcurl\nNSpid:\t4242\n')).toBe(4242);
  expect(innermostPid('Name:\tcurl\nPid:\t4242\n')).toBeUndefined();
});

let proc: string;
/** A process of the fake procfs: its pid namespace link and its NSpid line. */
function processAt(hostPid: number, pidNamespace: string, nsPids: number[]): void {
  mkdirSync(join(proc, String(hostPid), 'ns'), { recursive: true });
  symlinkSync(pidNamespace, join(proc, String(hostPid), 'ns', 'pid'));
  writeFileSync(join(proc, String(hostPid), 'status'), `Name:\tp\nNSpid:\t${nsPids.join('\t')}\n`);
}
beforeEach(() => {
  proc = mkdtempSync(join(tmpdir(), 'naat-proc-'));
  processAt(100, 'pid:[1]', [100, 1]); // a container's first process
  processAt(101, 'pid:[1]', [101, 7]);
  processAt(200, 'pid:[2]', [200, 7]); // another container, its own pid namespace
  processAt(300, 'pid:[9]', [300]); // the host's
});
afterEach(() => rmSync(proc, { recursive: true, force: true }));

test("a program is found among the pod's processes by its pid namespace and its pid there", () => {
  const pod = [100, 101, 200];
  expect(hostPidOf(proc, pod, { pid: 7, pidNamespace: 'pid:[1]' })).toBe(101);
  expect(hostPidOf(proc, pod, { pid: 7, pidNamespace: 'pid:[2]' })).toBe(200);
  expect(hostPidOf(proc, pod, { pid: 1, pidNamespace: 'pid:[1]' })).toBe(100);
  // Not one of the pod's processes, whatever it claims.
  expect(hostPidOf(proc, pod, { pid: 300, pidNamespace: 'pid:[9]' })).toBeUndefined();
  expect(hostPidOf(proc, pod, { pid: 8, pidNamespace: 'pid:[1]' })).toBeUndefined();
  // A pid alone (an older library) tells no namespace; a process that is gone is no one.
  expect(hostPidOf(proc, pod, { pid: 7 })).toBeUndefined();
  expect(hostPidOf(proc, [100, 404], { pid: 5, pidNamespace: 'pid:[1]' })).toBeUndefined();
});

test("a container's folder is found by following its links within its own root, never above it", () => {
  const root = join(proc, '100', 'root');
  mkdirSync(join(root, 'run', 'naat'), { recursive: true });
  mkdirSync(join(root, 'var'), { recursive: true });
  symlinkSync('/run', join(root, 'var', 'run')); // as Debian's images have it
  symlinkSync('../../../..', join(root, 'run', 'up'));
  symlinkSync('loop', join(root, 'loop'));
  expect(resolveWithin(root, '/var/run/naat')).toBe(join(root, 'run', 'naat'));
  expect(resolveWithin(root, '/run/up/run/naat')).toBe(join(root, 'run', 'naat'));
  expect(resolveWithin(root, '/loop/naat')).toBeUndefined();
  expect(resolveWithin(root, '/var/missing/naat')).toBeUndefined();
});

describe('listenForAll', () => {
  it('binds a socket every user may connect to, without a chmod, and leaves the process umask as it was', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'naat-listen-'));
    const server = createServer();
    const before = process.umask();
    try {
      await listenForAll(server, join(dir, 'stamp.sock'));
      const stat = lstatSync(join(dir, 'stamp.sock'));
      expect(stat.isSocket()).toBe(true);
      expect(stat.mode & 0o777).toBe(0o666);
      expect(process.umask()).toBe(before);
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a path something already holds, a link included, rather than follow it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'naat-listen-'));
    const victim = join(dir, 'agent-file');
    writeFileSync(victim, 'x', { mode: 0o600 });
    symlinkSync(victim, join(dir, 'stamp.sock'));
    const server = createServer();
    try {
      await expect(listenForAll(server, join(dir, 'stamp.sock'))).rejects.toThrow(/EADDRINUSE/);
      expect(lstatSync(victim).mode & 0o777).toBe(0o600);
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
