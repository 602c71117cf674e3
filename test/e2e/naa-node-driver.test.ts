// The node agent as a pod's NAA driver (association.driver Node): no sidecar in the pod. Real
// programs run in the pod's network namespace and in the cgroup the kubelet would give its
// container (cgroup v1, /kubepods/besteffort/pod<uid>/<container id>); the node agent finds them
// from the host's /proc and streams, node-driven and without any token, to its relay in its own
// process; the relay carries the stream with its node's agent certificate to a gateway node's NAA
// server over TLS, which takes it because the certificate names the node the pod runs on (as the
// real apiserver says) and the pod is node-driven. The gateway gets each flow of the pod with its
// program and container; a program in the same namespace that is not one of the pod's is no one's,
// and a pod that leaves the node config loses its stream. A UDP flow, which no count of the node's
// TCP sockets shows, is seen at the pod's next quiet look. A pod's process with a pid that a host
// process had at the agent's last listing is found within a quiet interval.
import { KubeConfig } from '@kubernetes/client-node';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../../common/index.ts';
import type { NodeConfig } from '../../contracts/gateway/index.ts';
import { agentChannelCredentials, naaServerCredentials, TlsDir } from '../../dataplane/link-tls.ts';
import { TokenReviewAuthenticator } from '../../dataplane/naa/auth.ts';
import { NodeDriver, nodeAgentPods } from '../../dataplane/naa/node-driver.ts';
import { NaaRelay } from '../../dataplane/naa/relay.ts';
import { NaaServer } from '../../dataplane/naa/server.ts';
import { kubectl } from '../cluster/cluster.ts';
import { eventually } from '../eventually.ts';
import { makePod, type TestPod } from '../integration/naa-fixtures.ts';
import { makeTestCa, writeTlsDir } from '../tls.ts';
import { ContainerCgroup, markNodeDriven } from './node-driven.ts';
import { stopProcess } from './topology.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const namespace = `naa-node-${process.pid}`;
const ns = `naat-node-${process.pid}`;
/** The relay's node: its connections to the gateway node (127.0.0.2) leave from 127.0.0.1. */
const relayNodeAddress = '127.0.0.1';
const silent: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

let web: TestPod;
let server: NaaServer;
let relay: NaaRelay;
let driver: NodeDriver;
let dir: string;
/** The agents' certificates: the gateway node's, and the relay's node's. */
let tls: TlsDir[] = [];
const containerId = randomBytes(32).toString('hex');
/** Its container's cgroup, once the pod has a uid. */
let container: ContainerCgroup | undefined;
const programs: ChildProcess[] = [];

const gateway = (pods: NodeConfig['gateways'][number]['pods']): NodeConfig => ({
  version: 1,
  node: 'worker-a',
  markMask: 0xe0,
  gateways: [
    {
      gateway: 'egress',
      tunnel: { vni: 7, port: 4789 },
      selection: 'Pod',
      associationPort: 7740,
      healthPort: 7741,
      bypass: [],
      pods,
      peers: [{ node: 'gateway-a', addresses: ['127.0.0.2'] }],
    },
  ],
});

/** The node agent's pods of a node config with `pods`, streamed to their gateway's relay. */
const drivenPods = (pods: NodeConfig['gateways'][number]['pods']) => nodeAgentPods(gateway(pods), (g) => g.gateway);

/** The node agent's pods when the node config lists the pod `web`, its one container `app`. */
const drivenWeb = () =>
  drivenPods([
    {
      namespace,
      name: 'web',
      addresses: [web.ip],
      association: { uid: web.ref.uid, containers: [{ id: containerId, name: 'app' }] },
    },
  ]);

/**
 * A program in the pod's network namespace, in the container's cgroup when `inContainer`, once it
 * printed its port.
 */
async function program(script: string, inContainer: boolean): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn('ip', ['netns', 'exec', ns, 'python3', '-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  programs.push(child);
  if (inContainer) container!.place(child.pid!);
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout!.once('data', (data: Buffer) => resolve(Number(data.toString().trim())));
    child.once('exit', (code) => reject(new Error(`exited with ${code} before it was ready`)));
  });
  return { child, port };
}

/** Connects to the listener from the pod's address, says its source port, and holds the connection. */
const connect = (destination: string) => `import socket,time
c=socket.create_connection(('${destination}',443),source_address=('${'$'}POD',0))
print(c.getsockname()[1],flush=True); time.sleep(600)`;

/**
 * The host's /proc as the agent sees it, made under `name`, but for the node's socket counts,
 * which stand still there, and for its processes, which are those linked into it.
 */
async function standingProc(name: string): Promise<string> {
  const proc = join(dir, name);
  await mkdir(join(proc, 'net'), { recursive: true });
  await writeFile(join(proc, 'net', 'sockstat'), await readFile('/proc/net/sockstat'));
  return proc;
}

/** A node agent that reads `proc`, looks at a quiet pod every 300 ms, and reads every process's place every `rereadMs`. */
const quietDriver = (proc: string, rereadMs?: number) =>
  new NodeDriver({
    proc,
    open: () => relay.openLocal(),
    version: 'test',
    stampDir: join(dir, 'stamps'),
    scanIntervalMs: 50,
    quietIntervalMs: 300,
    ...(rereadMs === undefined ? {} : { rereadMs }),
    log: silent,
  });

/** Sends a datagram to 203.0.113.10 from the pod's address, says its source port, and keeps the socket. */
const datagram = () => `import socket,time
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('${web.ip}',0)); s.connect(('203.0.113.10',53)); s.send(b'?')
print(s.getsockname()[1],flush=True); time.sleep(600)`;

beforeAll(async () => {
  await k(['create', 'namespace', namespace]);
  await k(['create', 'serviceaccount', 'app', '-n', namespace]);
  web = await makePod(namespace, 'web', 'worker-a');
  // As the webhook marks a pod whose gateway gives it the Node driver.
  await markNodeDriven(process.env.KUBECONFIG!, namespace, 'web', relayNodeAddress);

  // The pod's network namespace, with its address and a destination to connect to.
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  execFileSync('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0']);
  execFileSync('ip', ['-n', ns, 'addr', 'add', `${web.ip}/32`, 'dev', 'eth0']);
  execFileSync('ip', ['-n', ns, 'addr', 'add', '203.0.113.10/32', 'dev', 'eth0']);
  for (const link of ['eth0', 'peer0']) execFileSync('ip', ['-n', ns, 'link', 'set', link, 'up']);
  container = new ContainerCgroup(web.ref.uid, containerId);

  dir = await mkdtemp(join(tmpdir(), 'naat-node-driver-'));
  const ca = makeTestCa();
  writeTlsDir(join(dir, 'gateway-a'), ca, 'gateway-a', ['127.0.0.2']);
  writeTlsDir(join(dir, 'worker-a'), ca, 'worker-a', [relayNodeAddress]);
  tls = [new TlsDir(join(dir, 'gateway-a')), new TlsDir(join(dir, 'worker-a'))];
  await Promise.all(tls.map((t) => t.ready()));
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  server = new NaaServer({
    authenticator: new TokenReviewAuthenticator(kubeConfig, 'gateway-a', { relayCertificates: true }),
    sink: { apply: async () => {} },
    credentials: naaServerCredentials(tls[0]),
  });
  const port = await server.listen('127.0.0.2:0');
  const config = gateway([]);
  relay = new NaaRelay({
    gateway: { ...config.gateways[0]!, associationPort: port },
    peers: { up: () => new Set(['gateway-a']), onChange: () => {} },
    pinnedPeer: () => undefined,
    channelCredentials: agentChannelCredentials(tls[1]!),
  });
  driver = new NodeDriver({
    // As the node agent hands its streams to the relay of each pod's gateway.
    open: (target) => {
      expect(target).toBe('egress');
      return relay.openLocal();
    },
    version: 'test',
    stampDir: join(dir, 'stamps'),
    scanIntervalMs: 50,
    // Longer than this file waits for anything: what these tests do makes or frees TCP sockets,
    // and the node's count of them moving is what makes the agent look at the pod.
    quietIntervalMs: 600_000,
    log: silent,
  });
});

afterAll(async () => {
  driver?.stop();
  await Promise.all(programs.map(stopProcess));
  await container?.remove();
  execFileSync('ip', ['netns', 'delete', ns]);
  await relay?.close();
  await server?.close();
  for (const t of tls) t.stop();
  await rm(dir, { recursive: true, force: true });
  await k(['delete', 'namespace', namespace, '--wait=false']);
});

test("the node agent tells the gateway, with its node's certificate and no token, which of the pod's programs and containers owns each flow", async () => {
  // The destination, in the same namespace: it answers, so the connections are established.
  await program(
    `import socket,time
s=socket.socket(); s.bind(('203.0.113.10',443)); s.listen(); print(443,flush=True)
held=[s.accept() for _ in range(3)]; time.sleep(600)`,
    false,
  );
  const script = connect('203.0.113.10').replace('$POD', web.ip);
  const app = await program(script, true);
  // In the pod's network namespace, but not one of its containers' processes.
  const stranger = await program(script, false);

  driver.configure(drivenWeb());
  driver.start();

  await eventually(() => expect(server.table.lookup('tcp', web.ip, app.port)).toHaveLength(1));
  const [entry] = server.table.lookup('tcp', web.ip, app.port);
  expect(entry!.pod).toEqual(web.ref);
  expect({ ...entry!.application, commandLine: entry!.application.commandLine.slice(0, 2) }).toEqual({
    processName: 'python3',
    executable: expect.stringMatching(/python3/),
    commandLine: [expect.stringMatching(/(^|\/)python3$/), '-c'],
    containerName: 'app',
    containerId,
    uid: 0,
    pid: app.child.pid,
  });
  expect(entry!.destinationAddress).toBe('203.0.113.10');
  expect(server.table.lookup('tcp', web.ip, stranger.port)).toEqual([]);
  expect(driver.pods).toBe(1);

  // A process of the pod that starts once the node agent looks at the pod (an app container after
  // the sandbox) owns its flows too.
  const later = await program(script, true);
  await eventually(() =>
    expect(server.table.lookup('tcp', web.ip, later.port)).toEqual([
      expect.objectContaining({ application: expect.objectContaining({ pid: later.child.pid, containerName: 'app' }) }),
    ]),
  );

  // The pod leaves the node's config (deleted, or moved to the sidecar): its stream ends.
  driver.configure(drivenPods([]));
  expect(driver.pods).toBe(0);
  await eventually(() => expect(server.sessions).toBe(0));
});

test("a UDP flow, which moves no count of the node's TCP sockets, is seen at the pod's next quiet look", async () => {
  // Its processes are the pod's programs alone.
  const proc = await standingProc('proc');
  const shown = (pid: number) => symlink(`/proc/${pid}`, join(proc, String(pid)));
  const quiet = quietDriver(proc);
  try {
    await shown((await program('print(0,flush=True)\nimport time; time.sleep(600)', true)).child.pid!);
    quiet.configure(drivenWeb());
    quiet.start();
    // It looked at the pod once: the datagram's socket comes after that look.
    await eventually(() => expect(server.sessions).toBe(1));
    const udp = await program(datagram(), true);
    await shown(udp.child.pid!);
    await eventually(() =>
      expect(server.table.lookup('udp', web.ip, udp.port)).toEqual([
        expect.objectContaining({
          destinationAddress: '203.0.113.10',
          application: expect.objectContaining({ pid: udp.child.pid, containerName: 'app' }),
        }),
      ]),
    );
  } finally {
    quiet.stop();
  }
  await eventually(() => expect(server.sessions).toBe(0));
});

test("a pod's process with a pid that a host process had at the agent's last listing owns its flows within a quiet interval", async () => {
  // Its processes are the pod's first program, and a pid that first names a host process, then,
  // reused, the pod's next one.
  const proc = await standingProc('proc-reused');
  const reused = join(proc, '4000000');
  const host = spawn('sleep', ['600']);
  programs.push(host);
  await symlink(`/proc/${host.pid}`, reused);
  const first = await program('print(0,flush=True)\nimport time; time.sleep(600)', true);
  await symlink(`/proc/${first.child.pid}`, join(proc, String(first.child.pid)));
  // Far beyond this test: only a look that misses an owner may read the places again.
  const reader = quietDriver(proc, 600_000);
  try {
    reader.configure(drivenWeb());
    reader.start();
    // It listed the processes and looked at the pod. A config given again makes the next scan
    // list them again (a pod whose config changed is looked at with a listing), which settles on
    // the pid being a host process's: a pid is read at the listing that found it and the next.
    await eventually(() => expect(server.sessions).toBe(1));
    reader.configure(drivenWeb());
    await new Promise((resolve) => setTimeout(resolve, 300));
    const next = await program(datagram(), true);
    await unlink(reused);
    await symlink(`/proc/${next.child.pid}`, reused);
    await eventually(() =>
      expect(server.table.lookup('udp', web.ip, next.port)).toEqual([
        expect.objectContaining({ application: expect.objectContaining({ pid: 4000000, containerName: 'app' }) }),
      ]),
    );
  } finally {
    reader.stop();
  }
  await eventually(() => expect(server.sessions).toBe(0));
});
