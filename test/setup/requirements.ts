// What the tests and the lab need from the machine, and what to do about what it lacks: pure
// decisions from what setup.ts reads (dpkg's status lines, `go env GOVERSION`, the pinned go.mod
// files, whether kubectl is on the PATH). Nothing here touches the machine.

export interface Requirement {
  /** The Debian package. */
  package: string;
  /** A command it puts on the PATH, or an absolute file it installs: how a machine without dpkg is checked. */
  probe: string;
}

/**
 * Kernel tools for the dataplane (iptables for the CNI masquerades the steering tests set up),
 * traffic tools for the end-to-end tests (arping for announcing a failover address taken over), openssl for the test control plane's certificates, gcc
 * and libc headers for the sidecar's strict-mode stamping library; for the real node, its container
 * runtime (containerd, runc, the CNI plugins) and what builds the images without a Docker engine
 * (buildah, and mmdebstrap for their Debian base, which also makes the first-run test's fresh root).
 */
export const requirements: readonly Requirement[] = [
  { package: 'nftables', probe: 'nft' },
  { package: 'iproute2', probe: 'ip' },
  { package: 'conntrack', probe: 'conntrack' },
  { package: 'iptables', probe: 'iptables-legacy' },
  { package: 'iperf3', probe: 'iperf3' },
  { package: 'iputils-ping', probe: 'ping' },
  { package: 'iputils-arping', probe: 'arping' },
  { package: 'libndp-tools', probe: 'ndptool' },
  { package: 'curl', probe: 'curl' },
  { package: 'vsftpd', probe: 'vsftpd' },
  { package: 'python3', probe: 'python3' },
  { package: 'openssl', probe: 'openssl' },
  { package: 'procps', probe: 'pkill' },
  { package: 'psmisc', probe: 'fuser' },
  { package: 'kmod', probe: 'modprobe' },
  { package: 'gcc', probe: 'gcc' },
  { package: 'libc6-dev', probe: '/usr/include/stdio.h' },
  { package: 'containerd', probe: 'containerd' },
  { package: 'runc', probe: 'runc' },
  { package: 'containernetworking-plugins', probe: '/usr/lib/cni/bridge' },
  { package: 'buildah', probe: 'buildah' },
  { package: 'mmdebstrap', probe: 'mmdebstrap' },
];

const why =
  'kernel tools for the dataplane, traffic tools for the end-to-end tests, openssl for the test ' +
  "control plane's certificates, gcc for the sidecar's stamping library, a container runtime for the " +
  'real node, buildah and mmdebstrap for its images and the first-run test';

/** The oldest Go that can fetch a newer toolchain itself (the `toolchain` switch, GOTOOLCHAIN). */
export const toolchainSwitchSince = '1.21.0';

/** Packages installed according to `dpkg-query -W -f '${Package} ${db:Status-Status}\n' …`. */
export function installedFromDpkg(output: string): Set<string> {
  const installed = new Set<string>();
  for (const line of output.split('\n')) {
    const [name, status] = line.trim().split(/\s+/);
    if (name && status === 'installed') installed.add(name.replace(/:.*$/, ''));
  }
  return installed;
}

/** Numeric comparison of dotted versions (`1.26.0`, `1.24`): negative, zero or positive. */
export function compareVersions(a: string, b: string): number {
  const [x, y] = [a, b].map((v) => v.split('.').map(Number));
  for (let i = 0; i < Math.max(x!.length, y!.length); i++) {
    const d = (x![i] ?? 0) - (y![i] ?? 0);
    if (d !== 0) return d;
  }
  return 0;
}

/** `go1.26.8` or `go1.24rc1` (from `go env GOVERSION`) → `1.26.8`, `1.24`; undefined when unreadable. */
export function parseGoVersion(text: string): string | undefined {
  return /^go(\d+\.\d+(?:\.\d+)?)/.exec(text.trim())?.[1];
}

/** The client version `kubectl version --client -o json` prints (`v1.32.3` → `1.32.3`). */
export function parseKubectlVersion(json: string): string | undefined {
  try {
    const version = (JSON.parse(json) as { clientVersion?: { gitVersion?: string } }).clientVersion?.gitVersion;
    return /^v(\d+\.\d+\.\d+)/.exec(version ?? '')?.[1];
  } catch {
    return undefined;
  }
}

/** The Go the pinned modules need: the highest `go` directive among their go.mod files. */
export function requiredGo(goMods: readonly string[]): string {
  const versions = goMods.flatMap((text) => [...text.matchAll(/^go (\d+\.\d+(?:\.\d+)?)\s*$/gm)].map((m) => m[1]!));
  if (versions.length === 0) throw new Error('no go directive in the pinned go.mod files');
  return versions.reduce((a, b) => (compareVersions(a, b) >= 0 ? a : b));
}

/** What setup.ts found on the machine. */
export interface Machine {
  root: boolean;
  /** apt-get and dpkg are there. */
  debian: boolean;
  /** Packages of `requirements` found installed (by dpkg, or by their probe without it). */
  installed: ReadonlySet<string>;
  /** `go env GOVERSION`'s version, undefined when go is not on the PATH. */
  go: string | undefined;
  /** requiredGo of the pinned modules. */
  goRequired: string;
  /** `kubectl version --client`'s version (e.g. `1.32.3`), undefined when kubectl is not on the PATH. */
  kubectl: string | undefined;
}

/** The oldest kubectl the tests and the lab drive the 1.33 control plane with (one minor version of skew). */
export const oldestKubectl = '1.32.0';

export interface SetupPlan {
  /** Packages to install with apt-get, and the line that says so. */
  install?: { packages: string[]; message: string };
  /** A toolchain to fetch through the Go module proxy (e.g. `go1.26.0`), and the line that says so. */
  goToolchain?: { name: string; message: string };
  /** kubectl is to come from the control plane's build (test/cluster/build.sh), and the line that says so. */
  kubectl?: { message: string };
  /** What setup cannot fix: each a line naming what to do by hand. Non-empty means stop. */
  errors: string[];
}

/** Decides what to install, what to fetch and what to ask of the user, given the machine. */
export function planSetup(machine: Machine): SetupPlan {
  const plan: SetupPlan = { errors: [] };
  const missing = requirements.map((r) => r.package).filter((p) => !machine.installed.has(p));
  if (missing.length > 0) {
    const list = missing.join(' ');
    if (!machine.debian) {
      const named = requirements.filter((r) => missing.includes(r.package)).map((r) => `${r.package} (${r.probe})`);
      plan.errors.push(
        `This machine has no apt-get and dpkg; install by hand what these Debian packages provide (${why}): ${named.join(', ')}`,
      );
    } else if (!machine.root) {
      plan.errors.push(`Missing Debian packages (${why}); as root, run: apt-get install ${list}`);
    } else {
      plan.install = {
        packages: missing,
        message: `Installing ${missing.length} missing Debian package${missing.length > 1 ? 's' : ''} (${why}): ${list}`,
      };
    }
  }
  const need = machine.goRequired;
  const goUsable =
    machine.go !== undefined &&
    (compareVersions(machine.go, need) >= 0 || compareVersions(machine.go, toolchainSwitchSince) >= 0);
  if (machine.go === undefined) {
    plan.errors.push(
      `Go is not on the PATH; the test control plane is built from pinned Go modules that need Go ${need} or newer (https://go.dev/dl/)`,
    );
  } else if (!goUsable) {
    plan.errors.push(
      `Go ${machine.go} is older than ${need}, which the pinned Go modules need, and too old to fetch a newer toolchain itself; install Go ${need} or newer (https://go.dev/dl/)`,
    );
  } else if (compareVersions(machine.go, need) < 0) {
    plan.goToolchain = {
      name: `go${need}`,
      message: `Go ${machine.go} is older than ${need}, which the pinned Go modules need; fetching go${need} through the Go module proxy (GOTOOLCHAIN) for the build`,
    };
  }
  if (!machine.kubectl || compareVersions(machine.kubectl, oldestKubectl) < 0) {
    // The pinned modules build kubectl with the control plane (one build, one cache), so a usable
    // Go is all a machine without kubectl, or with one too old, needs.
    const found = machine.kubectl
      ? `kubectl ${machine.kubectl} is older than ${oldestKubectl}`
      : 'kubectl is not on the PATH';
    if (goUsable) {
      plan.kubectl = {
        message: `${found}; using the kubectl built with the test control plane from the pinned modules`,
      };
    } else {
      plan.errors.push(
        `${found}, and without a usable Go a newer one cannot be built with the test control plane: install Go ${need} or newer, or kubectl 1.32 or 1.33`,
      );
    }
  }
  return plan;
}

/** The jest projects that need neither root, nor Go, nor the Debian packages. */
const projectsWithoutMachine = new Set(['unit', 'fuzz']);

/**
 * Whether `npm test` with these jest arguments needs the machine set up: only the unit and fuzz
 * projects run without.
 */
export function testsNeedMachine(jestArgs: readonly string[]): boolean {
  const projects: string[] = [];
  for (let i = 0; i < jestArgs.length; i++) {
    const arg = jestArgs[i]!;
    if (arg.startsWith('--selectProjects=')) projects.push(...arg.slice('--selectProjects='.length).split(','));
    else if (arg === '--selectProjects') {
      while (i + 1 < jestArgs.length && !jestArgs[i + 1]!.startsWith('-')) projects.push(jestArgs[++i]!);
    }
  }
  return projects.length === 0 || projects.some((p) => !projectsWithoutMachine.has(p));
}
