import { containerIdFromCgroup } from './processes.ts';

test('finds the container id in the cgroup paths of containerd, CRI-O and cgroupfs', () => {
  const id = 'a'.repeat(32) + '0123456789abcdef'.repeat(2);
  expect(containerIdFromCgroup(`0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-${id}.scope\n`)).toBe(id);
  expect(containerIdFromCgroup(`0::/kubepods.slice/crio-${id}.scope\n`)).toBe(id);
  expect(containerIdFromCgroup(`12:memory:/kubepods/burstable/pod1/${id}\n`)).toBe(id);
  expect(containerIdFromCgroup('0::/user.slice/session-1.scope\n')).toBe('');
});
