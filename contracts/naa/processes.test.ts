import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { containerIdFromCgroup, descriptorCounter, podOfCgroup } from './processes.ts';

test('finds the container id in the cgroup paths of containerd, CRI-O and cgroupfs', () => {
  const id = 'a'.repeat(32) + '0123456789abcdef'.repeat(2);
  expect(containerIdFromCgroup(`0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-${id}.scope\n`)).toBe(id);
  expect(containerIdFromCgroup(`0::/kubepods.slice/crio-${id}.scope\n`)).toBe(id);
  expect(containerIdFromCgroup(`12:memory:/kubepods/burstable/pod1/${id}\n`)).toBe(id);
  expect(containerIdFromCgroup('0::/user.slice/session-1.scope\n')).toBe('');
});

describe("a process's pod and container from its cgroup", () => {
  const uid = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
  const id = 'b'.repeat(32) + '0123456789abcdef'.repeat(2);

  test.each([
    [
      'cgroup v1, cgroupfs driver, BestEffort',
      `12:memory:/kubepods/besteffort/pod${uid}/${id}\n11:pids:/kubepods/besteffort/pod${uid}/${id}\n`,
    ],
    ['cgroup v1, cgroupfs driver, Guaranteed', `4:cpu,cpuacct:/kubepods/pod${uid}/${id}\n`],
    [
      'cgroup v2, systemd driver, containerd',
      `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${uid.replaceAll('-', '_')}.slice/cri-containerd-${id}.scope\n`,
    ],
    [
      'cgroup v2, systemd driver, CRI-O',
      `0::/kubepods.slice/kubepods-pod${uid.replaceAll('-', '_')}.slice/crio-${id}.scope\n`,
    ],
    ['a cgroup the container made below its own', `0::/kubepods/burstable/pod${uid}/${id}/worker\n`],
  ])('%s', (_what, cgroup) => {
    expect(podOfCgroup(cgroup)).toEqual({ podUid: uid, containerId: id });
  });

  test.each([
    ['a host process', '0::/user.slice/session-1.scope\n'],
    ["a pod's own cgroup, no container", `0::/kubepods/besteffort/pod${uid}\n`],
    ['a path that only looks like a pod outside kubepods', `0::/system.slice/pod${uid}/${id}\n`],
  ])('%s has no pod', (_what, cgroup) => {
    expect(podOfCgroup(cgroup)).toBeUndefined();
  });
});

test("counts a process's open descriptors with one stat of the real /proc, and nothing from a folder that is not a procfs", () => {
  const count = descriptorCounter('/proc');
  // The kernel here is 6.2 or later: it counts.
  expect(count).toBeDefined();
  const before = count!(process.pid)!;
  expect(before).toBeGreaterThan(0);
  const fds = [openSync('/proc/self/stat', 'r'), openSync('/proc/self/status', 'r')];
  expect(count!(process.pid)).toBe(before + 2);
  fds.forEach((fd) => closeSync(fd));
  expect(count!(process.pid)).toBe(before);
  expect(count!(2 ** 22 + 1)).toBeUndefined();

  const fake = mkdtempSync(join(tmpdir(), 'naat-proc-'));
  try {
    expect(descriptorCounter(fake)).toBeUndefined();
  } finally {
    rmSync(fake, { recursive: true });
  }
});
