// A real Kubernetes node for tests: containerd, kubelet and kube-proxy, each run under
// `nsenter --net` in a network namespace of the node's own, joined to the machine by a veth pair.
// Whatever runs on the node (host-network DaemonSets included) programs that namespace's kernel
// state, never the machine's. The node's containers get their own network namespaces from the CNI
// bridge plugin, on a pod network that the machine routes to the node.
//
// Only one real node can run on a machine at a time: runc's state, kubelet's device-plugin folder
// and the kubepods cgroups have fixed, machine-wide names. A lock file holding its owner's pid
// serialises them; whoever finds the lock's owner dead removes what that run left before starting.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, readFile, rm, rmdir, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { sleep, terminate, waitFor } from './processes.ts';

const run = promisify(execFile);

/** The node's name, addresses and namespace: fixed, since only one real node runs at a time. */
export const realNode = {
  name: 'naat-node',
  netns: 'naat-node',
  /** The machine's end of the veth pair; the apiserver listens here so that the node reaches it. */
  hostAddress: '172.30.250.1',
  /** The node's InternalIP, its end of the veth pair. */
  address: '172.30.250.2',
  /** The link's prefix: room for addresses a test adds to the node's end (an uplink's, say). */
  linkPrefix: 29,
  podCidr: '172.30.244.0/24',
  hostLink: 'naat-node0',
} as const;

const lockFile = '/run/naat-real-node.lock';
/** The node's state (containerd's images and snapshots, kubelet's pods) and its runtime files. */
const stateDir = '/var/lib/naat-node';
const runDir = '/run/naat-node';
/** Where runc keeps the state of containerd's containers: its fixed default. */
const runcRoot = '/run/containerd/runc';
const cgroupRoot = '/sys/fs/cgroup';
const pauseImage = 'naat.dev/naat-pause:1';

export interface RealNode {
  name: string;
  address: string;
  /** Imports docker or OCI archives into the node's containerd, where kubelet finds them. */
  importImages(archives: string[]): Promise<void>;
  /** Runs a command in the node's network namespace; resolves with stdout. */
  exec(command: string, args: string[]): Promise<string>;
  /** Stops the node and removes everything it made, then releases the lock. */
  stop(): Promise<void>;
}

export interface RealNodeOptions {
  /** The folder with kubelet and kube-proxy (build.sh's output). */
  bin: string;
  /** Where to keep the node's configuration and logs. */
  dir: string;
  server: string;
  caFile: string;
  /** A token of user system:node:<name> in group system:nodes, for kubelet. */
  nodeToken: string;
  /** A token kube-proxy may watch Services and EndpointSlices with. */
  proxyToken: string;
}

/**
 * Takes the machine's real-node lock (waiting while another live run holds it), removes what a
 * crashed run left, and makes the node's network namespace and veth pair, so that the apiserver
 * can listen on `realNode.hostAddress` before the node starts.
 */
export async function prepareRealNode(timeoutMs = 15 * 60_000): Promise<void> {
  await lock(timeoutMs);
  try {
    await removeLeftovers();
    const { netns, hostLink, hostAddress, address, podCidr, linkPrefix } = realNode;
    await ip(['netns', 'add', netns]);
    await ip(['link', 'add', hostLink, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    await ip(['addr', 'add', `${hostAddress}/${linkPrefix}`, 'dev', hostLink]);
    await ip(['link', 'set', hostLink, 'up']);
    const inNode = (args: string[]) => ip(['-n', netns, ...args]);
    await inNode(['addr', 'add', `${address}/${linkPrefix}`, 'dev', 'eth0']);
    await inNode(['link', 'set', 'eth0', 'up']);
    await inNode(['link', 'set', 'lo', 'up']);
    await inNode(['route', 'add', 'default', 'via', hostAddress]);
    // The apiserver calls webhooks at their pods' addresses (--enable-aggregator-routing).
    await ip(['route', 'add', podCidr, 'via', address, 'dev', hostLink]);
    for (const [key, value] of [
      ['net.ipv4.ip_forward', '1'],
      ['net.ipv6.conf.all.forwarding', '1'],
      // Pod to Service to a pod on the same bridge: kube-proxy's DNAT must see bridged packets.
      ['net.bridge.bridge-nf-call-iptables', '1'],
    ]) {
      await run('nsenter', [`--net=/run/netns/${netns}`, 'sysctl', '-qw', `${key}=${value}`]).catch(() => undefined);
    }
  } catch (error) {
    await removeLeftovers();
    await unlink(lockFile).catch(() => undefined);
    throw error;
  }
}

/** Starts containerd, kubelet and kube-proxy in the namespace prepareRealNode made. */
export async function startRealNode(options: RealNodeOptions): Promise<RealNode> {
  const { dir } = options;
  await mkdir(join(dir, 'logs'), { recursive: true });
  const children: ChildProcess[] = [];
  let stopping = false;
  const start = (name: string, command: string, args: string[]) => {
    const child = spawn('nsenter', [`--net=/run/netns/${realNode.netns}`, command, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const log = createWriteStream(join(dir, 'logs', `${name}.log`), { flags: 'a' });
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    children.push(child);
    return child;
  };
  const socket = join(runDir, 'containerd', 'containerd.sock');
  const ctr = (args: string[]) => run('ctr', ['--address', socket, '--namespace', 'k8s.io', ...args]);
  const stop = async () => {
    for (const child of children.reverse()) await terminate(child);
    await removeLeftovers();
    await unlink(lockFile).catch(() => undefined);
  };
  try {
    await writeConfigs(options);
    start('containerd', 'containerd', ['--config', join(dir, 'containerd.toml')]);
    await waitFor('containerd', async () => (await ctr(['version']), true));
    await ctr(['images', 'import', await pauseArchive(dir)]);
    start('kubelet', join(options.bin, 'kubelet'), [
      `--config=${join(dir, 'kubelet.yaml')}`,
      `--kubeconfig=${join(dir, 'kubelet.kubeconfig')}`,
      `--root-dir=${join(stateDir, 'kubelet')}`,
      `--hostname-override=${realNode.name}`,
      `--node-ip=${realNode.address}`,
    ]);
    start('kube-proxy', join(options.bin, 'kube-proxy'), [
      `--kubeconfig=${join(dir, 'kube-proxy.kubeconfig')}`,
      `--hostname-override=${realNode.name}`,
      '--proxy-mode=nftables',
      `--cluster-cidr=${realNode.podCidr}`,
      // Leave the machine-wide conntrack settings alone.
      '--conntrack-max-per-core=0',
      '--conntrack-tcp-timeout-established=0',
      '--conntrack-tcp-timeout-close-wait=0',
      '--healthz-bind-address=127.0.0.1:10256',
      '--metrics-bind-address=127.0.0.1:10249',
    ]);
    for (const child of children) {
      child.once('exit', (code, signal) => {
        if (!stopping) console.error(`Real node: ${child.spawnargs[2]} exited (${code ?? signal})`);
      });
    }
  } catch (error) {
    await stop();
    throw error;
  }
  return {
    name: realNode.name,
    address: realNode.address,
    async importImages(archives) {
      for (const archive of archives) await ctr(['images', 'import', archive]);
    },
    async exec(command, args) {
      return (await run('nsenter', [`--net=/run/netns/${realNode.netns}`, command, ...args], { maxBuffer: 1 << 26 }))
        .stdout;
    },
    async stop() {
      stopping = true;
      await stop();
    },
  };
}

/**
 * Removes what prepareRealNode made, and releases the lock: for a start that failed between
 * prepareRealNode and startRealNode. Throws if another live process holds the lock.
 */
export async function removeRealNodeLeftovers(): Promise<void> {
  await lock(0);
  await removeLeftovers();
  await unlink(lockFile).catch(() => undefined);
}

async function lock(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await writeFile(lockFile, String(process.pid), { flag: 'wx' });
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const owner = Number(await readFile(lockFile, 'utf8').catch(() => '0'));
    if (!alive(owner) || owner === process.pid) {
      await unlink(lockFile).catch(() => undefined);
      continue;
    }
    if (Date.now() >= deadline) throw new Error(`A real node of process ${owner} runs on this machine (${lockFile})`);
    await sleep(1000);
  }
}

function alive(pid: number): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Kills every process of a real node (those in its network namespace, and containers in the
 * kubepods cgroups), unmounts what containerd and kubelet mounted, deletes the pods' and the
 * node's network namespaces (the veth pair, the bridge and the machine's route go with them),
 * the kubepods cgroups and the node's folders. Idempotent; reads only the machine, so it works
 * after a crash of the process that started the node.
 */
async function removeLeftovers(): Promise<void> {
  for (let round = 0; round < 5; round++) {
    const pids = new Set([...(await netnsPids(realNode.netns)), ...(await cgroupPids())]);
    pids.delete(process.pid);
    if (pids.size === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
    await sleep(300);
  }
  const mountPoints = (await readFile('/proc/self/mountinfo', 'utf8'))
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((point): point is string => point !== undefined)
    .map((point) => point.replace(/\\040/g, ' '))
    .filter((point) => [stateDir, runDir, runcRoot, '/run/netns/cni-'].some((prefix) => point.startsWith(prefix)));
  for (const point of mountPoints.sort((a, b) => b.length - a.length)) {
    await run('umount', ['--lazy', point]).catch(() => undefined);
  }
  const { stdout } = await run('ip', ['netns', 'list']);
  for (const name of stdout.split('\n').map((line) => line.split(' ')[0])) {
    // The CNI plugins name pod namespaces cni-<uuid>; only a real node makes them here.
    if (name === realNode.netns || name?.startsWith('cni-')) await ip(['netns', 'delete', name]).catch(() => undefined);
  }
  await ip(['link', 'delete', realNode.hostLink]).catch(() => undefined);
  for (const controller of await readdir(cgroupRoot).catch(() => [] as string[])) {
    await removeCgroup(join(cgroupRoot, controller, 'kubepods'));
  }
  for (const folder of [stateDir, runDir, runcRoot]) await rm(folder, { recursive: true, force: true });
}

async function netnsPids(netns: string): Promise<number[]> {
  const { stdout } = await run('ip', ['netns', 'pids', netns]).catch(() => ({ stdout: '' }));
  return stdout.split('\n').filter(Boolean).map(Number);
}

async function cgroupPids(): Promise<number[]> {
  const pids: number[] = [];
  const walk = async (path: string) => {
    const text = await readFile(join(path, 'cgroup.procs'), 'utf8').catch(() => '');
    pids.push(...text.split('\n').filter(Boolean).map(Number));
    for (const entry of await readdir(path, { withFileTypes: true }).catch(() => [])) {
      if (entry.isDirectory()) await walk(join(path, entry.name));
    }
  };
  await walk(join(cgroupRoot, 'pids', 'kubepods'));
  await walk(join(cgroupRoot, 'memory', 'kubepods'));
  return pids;
}

async function removeCgroup(path: string): Promise<void> {
  for (const entry of await readdir(path, { withFileTypes: true }).catch(() => [])) {
    if (entry.isDirectory()) await removeCgroup(join(path, entry.name));
  }
  await rmdir(path).catch(() => undefined);
}

async function writeConfigs(options: RealNodeOptions): Promise<void> {
  const { dir } = options;
  const cni = join(dir, 'cni');
  await mkdir(cni, { recursive: true });
  await writeFile(
    join(dir, 'containerd.toml'),
    `version = 2
root = "${join(stateDir, 'containerd')}"
state = "${join(runDir, 'containerd')}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "${join(runDir, 'containerd', 'containerd.sock')}"
[ttrpc]
  address = "${join(runDir, 'containerd', 'containerd.sock.ttrpc')}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${pauseImage}"
  # This machine's root may not lower oom_score_adj (no CAP_SYS_RESOURCE); without this runc fails
  # every sandbox with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${cni}"
`,
  );
  await writeFile(
    join(cni, '10-naat-node.conflist'),
    JSON.stringify({
      cniVersion: '0.4.0',
      name: 'naat-node',
      plugins: [
        {
          type: 'bridge',
          bridge: 'cni0',
          isGateway: true,
          hairpinMode: true,
          ipam: {
            type: 'host-local',
            ranges: [[{ subnet: realNode.podCidr }]],
            routes: [{ dst: '0.0.0.0/0' }],
            // Not the machine-wide /var/lib/cni: the node's own state, removed with it.
            dataDir: join(stateDir, 'cni'),
          },
        },
      ],
    }),
  );
  await writeFile(
    join(dir, 'kubelet.yaml'),
    JSON.stringify({
      apiVersion: 'kubelet.config.k8s.io/v1beta1',
      kind: 'KubeletConfiguration',
      containerRuntimeEndpoint: `unix://${join(runDir, 'containerd', 'containerd.sock')}`,
      // This machine has cgroup v1 and no systemd.
      cgroupDriver: 'cgroupfs',
      failCgroupV1: false,
      failSwapOn: false,
      makeIPTablesUtilChains: false,
      address: realNode.address,
      healthzBindAddress: '127.0.0.1',
      readOnlyPort: 0,
      podLogsDir: join(stateDir, 'pod-logs'),
      authentication: {
        anonymous: { enabled: false },
        webhook: { enabled: true },
        x509: { clientCAFile: options.caFile },
      },
      authorization: { mode: 'Webhook' },
      // A shared test machine's disk is not the node's to guard: no evictions for disk pressure.
      evictionHard: { 'memory.available': '100Mi', 'nodefs.available': '0%', 'imagefs.available': '0%' },
      imageGCHighThresholdPercent: 100,
      imageGCLowThresholdPercent: 99,
      nodeStatusUpdateFrequency: '2s',
      syncFrequency: '10s',
    }),
  );
  const kubeconfig = (token: string) =>
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'c', cluster: { server: options.server, 'certificate-authority': options.caFile } }],
      users: [{ name: 'u', user: { token } }],
      contexts: [{ name: 'c', context: { cluster: 'c', user: 'u' } }],
      'current-context': 'c',
    });
  await writeFile(join(dir, 'kubelet.kubeconfig'), kubeconfig(options.nodeToken), { mode: 0o600 });
  await writeFile(join(dir, 'kube-proxy.kubeconfig'), kubeconfig(options.proxyToken), { mode: 0o600 });
}

/**
 * The sandbox image: pause.c compiled statically, in a one-layer OCI archive written here (no
 * image tooling needed for a single file).
 */
async function pauseArchive(dir: string): Promise<string> {
  const work = join(dir, 'pause');
  await mkdir(join(work, 'rootfs'), { recursive: true });
  await run('gcc', ['-static', '-O2', '-o', join(work, 'rootfs', 'pause'), join(import.meta.dirname, 'pause.c')]);
  await run('tar', ['-cf', join(work, 'layer.tar'), '-C', join(work, 'rootfs'), '--owner=0', '--group=0', 'pause']);
  const layout = join(work, 'layout');
  await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
  const blob = async (content: Buffer | string, mediaType: string) => {
    const digest = createHash('sha256').update(content).digest('hex');
    await writeFile(join(layout, 'blobs', 'sha256', digest), content);
    return { mediaType, digest: `sha256:${digest}`, size: Buffer.byteLength(content) };
  };
  const layer = await blob(await readFile(join(work, 'layer.tar')), 'application/vnd.oci.image.layer.v1.tar');
  const config = await blob(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Entrypoint: ['/pause'] },
      rootfs: { type: 'layers', diff_ids: [layer.digest] },
    }),
    'application/vnd.oci.image.config.v1+json',
  );
  const manifest = await blob(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config,
      layers: [layer],
    }),
    'application/vnd.oci.image.manifest.v1+json',
  );
  await writeFile(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ ...manifest, annotations: { 'io.containerd.image.name': pauseImage } }],
    }),
  );
  await run('tar', ['-cf', join(work, 'pause.tar'), '-C', layout, '.']);
  return join(work, 'pause.tar');
}

function ip(args: string[]) {
  return run('ip', args);
}
