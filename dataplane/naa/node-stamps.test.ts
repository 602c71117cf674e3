import {
  closeSync,
  constants,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  fdMountId,
  hostPidOf,
  innermostPid,
  listenForAll,
  listenInPod,
  mountPointsOf,
  resolveWithin,
} from './node-stamps.ts';

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

test('a mount table gives each mount point by its id, escapes undone', () => {
  const points = mountPointsOf(
    [
      '27 1 254:0 / / rw,relatime - ext4 /dev/vda rw',
      '812 27 0:96 / /run/naat rw,nosuid - tmpfs naat-run rw',
      '813 27 0:97 /pods/x /my\\040folder rw - tmpfs t rw',
      '',
    ].join('\n'),
  );
  expect(points).toEqual(
    new Map([
      [27, '/'],
      [812, '/run/naat'],
      [813, '/my folder'],
    ]),
  );
  expect(fdMountId('pos:\t0\nflags:\t02300000\nmnt_id:\t27\nino:\t10839759\n')).toBe(27);
  expect(fdMountId('pos:\t0\n')).toBeUndefined();
});

describe('listenInPod', () => {
  /** The real mount of a folder of this machine, as its own fdinfo names it. */
  const mountOf = (path: string) => {
    const fd = openSync(path, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      return fdMountId(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))!;
    } finally {
      closeSync(fd);
    }
  };
  const folder = () => join(proc, '100', 'root', 'run', 'naat');
  const request = (path: string) =>
    new Promise<string>((resolve, reject) =>
      connect(path)
        .on('data', (data) => resolve(String(data)))
        .on('error', reject),
    );

  it("binds in the folder when the process's own mount table has a mount there, and the socket goes with the server", async () => {
    mkdirSync(folder(), { recursive: true });
    writeFileSync(join(proc, '100', 'mountinfo'), `${mountOf(folder())} 1 0:96 / /run/naat rw - tmpfs naat-run rw\n`);
    writeFileSync(join(folder(), 'stamp.sock'), 'left by the pod');
    const server = createServer((socket) => socket.end('stamp'));
    const path = await listenInPod(server, proc, [200, 100], '/run/naat', 'stamp.sock');
    expect(path).toBe(join(folder(), 'stamp.sock'));
    expect(await request(path!)).toBe('stamp');
    await new Promise((resolve) => server.close(resolve));
    expect(existsSync(join(folder(), 'stamp.sock'))).toBe(false);
  });

  it('refuses a folder whose mount is not mounted at that folder in the process (another mount, or its own files)', async () => {
    mkdirSync(folder(), { recursive: true });
    const elsewhere = `${mountOf(folder())} 1 0:96 / /elsewhere rw - tmpfs t rw\n`;
    writeFileSync(join(proc, '100', 'mountinfo'), `1 0 0:1 / / rw - ext4 x rw\n${elsewhere}`);
    const server = createServer();
    expect(await listenInPod(server, proc, [100], '/run/naat', 'stamp.sock')).toBeUndefined();
    expect(existsSync(join(folder(), 'stamp.sock'))).toBe(false);
    expect(server.listening).toBe(false);
  });
});
