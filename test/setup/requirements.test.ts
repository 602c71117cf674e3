import {
  compareVersions,
  installedFromDpkg,
  parseGoVersion,
  parseKubectlVersion,
  planSetup,
  requiredGo,
  requirements,
  testsNeedMachine,
  type Machine,
} from './requirements.ts';

const all = new Set(requirements.map((r) => r.package));
const ready: Machine = {
  root: true,
  debian: true,
  installed: all,
  go: '1.26.8',
  goRequired: '1.26.0',
  kubectl: '1.32.3',
};
const without = (...packages: string[]) => new Set([...all].filter((p) => !packages.includes(p)));

test('a machine with everything needs nothing done', () => {
  expect(planSetup(ready)).toEqual({ errors: [] });
});

test.each(requirements.map((r) => r.package))('a fresh Debian machine as root installs a missing %s, named', (p) => {
  const plan = planSetup({ ...ready, installed: without(p) });
  expect(plan.errors).toEqual([]);
  expect(plan.install!.packages).toEqual([p]);
  expect(plan.install!.message).toMatch(new RegExp(`^Installing 1 missing Debian package \\(.+\\): ${p}$`));
});

test('a fresh Debian machine with none of the packages installs them all in one step', () => {
  const plan = planSetup({ ...ready, installed: new Set() });
  expect(plan.install!.packages).toEqual(requirements.map((r) => r.package));
  expect(plan.install!.message).toContain(`Installing ${requirements.length} missing Debian packages`);
});

test('not root: an error names the missing packages and the command to install them, and nothing is installed', () => {
  const plan = planSetup({ ...ready, root: false, installed: without('vsftpd', 'iperf3') });
  expect(plan.install).toBeUndefined();
  expect(plan.errors).toEqual([expect.stringMatching(/as root, run: apt-get install iperf3 vsftpd$/)]);
});

test('not Debian-like: an error names each missing package and what it provides', () => {
  const plan = planSetup({ ...ready, debian: false, installed: without('nftables', 'libc6-dev') });
  expect(plan.install).toBeUndefined();
  expect(plan.errors).toEqual([
    expect.stringMatching(/no apt-get and dpkg.*: nftables \(nft\), libc6-dev \(\/usr\/include\/stdio.h\)$/),
  ]);
});

test('Go missing, too old to switch, or old enough to fetch the required toolchain', () => {
  expect(planSetup({ ...ready, go: undefined }).errors).toEqual([
    expect.stringMatching(/^Go is not on the PATH; .* need Go 1\.26\.0 or newer/),
  ]);
  expect(planSetup({ ...ready, go: '1.20.14' }).errors).toEqual([
    expect.stringMatching(/^Go 1\.20\.14 is older than 1\.26\.0, .* install Go 1\.26\.0 or newer/),
  ]);
  const plan = planSetup({ ...ready, go: '1.24.3' });
  expect(plan.errors).toEqual([]);
  expect(plan.goToolchain).toEqual({
    name: 'go1.26.0',
    message: expect.stringContaining('fetching go1.26.0 through the Go module proxy'),
  });
  expect(planSetup({ ...ready, go: '1.26.0' }).goToolchain).toBeUndefined();
});

test('kubectl missing comes from the control plane build when Go can build it, else is an error that says what to install', () => {
  for (const go of ['1.26.8', '1.24.3']) {
    const plan = planSetup({ ...ready, go, kubectl: undefined });
    expect(plan.errors).toEqual([]);
    expect(plan.kubectl!.message).toContain('using the kubectl built with the test control plane');
  }
  for (const go of [undefined, '1.20.14']) {
    const plan = planSetup({ ...ready, go, kubectl: undefined });
    expect(plan.kubectl).toBeUndefined();
    expect(plan.errors).toEqual([
      expect.stringMatching(/^Go /),
      expect.stringMatching(/install Go 1\.26\.0 or newer, or kubectl 1\.32 or 1\.33$/),
    ]);
  }
  expect(planSetup(ready).kubectl).toBeUndefined();
});

test('every problem of a fresh machine is reported at once', () => {
  const plan = planSetup({
    root: false,
    debian: true,
    installed: new Set(),
    go: undefined,
    goRequired: '1.26.0',
    kubectl: undefined,
  });
  expect(plan.errors).toHaveLength(3);
});

test('dpkg status lines: only installed packages count, architecture suffixes dropped', () => {
  const output = 'nftables installed\nvsftpd not-installed\ncurl config-files\nlibc6-dev:amd64 installed\n\n';
  expect([...installedFromDpkg(output)]).toEqual(['nftables', 'libc6-dev']);
});

test('the required Go is the highest go directive of the pinned modules', () => {
  const mod = (v: string) => `module x\n\ngo ${v}\n\nrequire (\n\tgithub.com/a/go 1.2.3\n)\n`;
  expect(requiredGo([mod('1.24.0'), mod('1.26.0'), mod('1.25.4')])).toBe('1.26.0');
  expect(() => requiredGo(['module x\n'])).toThrow('no go directive');
});

test('Go versions parse and compare numerically', () => {
  expect(parseGoVersion('go1.26.8\n')).toBe('1.26.8');
  expect(parseGoVersion('go1.24rc1')).toBe('1.24');
  expect(parseGoVersion('devel +abc')).toBeUndefined();
  expect(compareVersions('1.9.0', '1.10.0')).toBeLessThan(0);
  expect(compareVersions('1.26', '1.26.0')).toBe(0);
});

test('only a run of the unit or fuzz projects alone skips the machine set-up', () => {
  expect(testsNeedMachine([])).toBe(true);
  expect(testsNeedMachine(['--selectProjects', 'unit'])).toBe(false);
  expect(testsNeedMachine(['dataplane', '--selectProjects=unit'])).toBe(false);
  expect(testsNeedMachine(['--selectProjects', 'unit', 'fuzz'])).toBe(false);
  expect(testsNeedMachine(['--selectProjects', 'unit', 'integration'])).toBe(true);
  expect(testsNeedMachine(['test/e2e/lab.test.ts', '--selectProjects', 'integration', '-t', 'x'])).toBe(true);
});

test('a kubectl older than 1.32 is replaced by the one built with the control plane, saying which it found', () => {
  const plan = planSetup({ ...ready, kubectl: '1.28.4' });
  expect(plan.kubectl!.message).toBe(
    'kubectl 1.28.4 is older than 1.32.0; using the kubectl built with the test control plane from the pinned modules',
  );
  expect(planSetup({ ...ready, kubectl: '1.33.0' }).kubectl).toBeUndefined();
});

test("kubectl's client version is read from its JSON; anything else is no version", () => {
  expect(parseKubectlVersion('{"clientVersion":{"gitVersion":"v1.32.3","major":"1"}}')).toBe('1.32.3');
  expect(parseKubectlVersion('{"clientVersion":{"gitVersion":"v1.32.4-dispatcher"}}')).toBe('1.32.4');
  expect(parseKubectlVersion('error: unknown flag')).toBeUndefined();
});
