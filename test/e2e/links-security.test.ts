// The links between naat's components under attack, in the multi-node topology (cluster-topology.ts)
// with every part real: gateway agents on g1 and g2 (`dataplane/main.ts run`), node agents on w1
// and w2 (`dataplane/main.ts node`, relaying NAA streams and asking /steering), each with its
// node's --tls-dir from a CA of the test's own, and the sidecar of a pod on w1 verifying its node
// with that CA. From the pod on w2 and from a foreign host on the underlay (no node) the test
// tries what an attacker on the network would: plaintext, certificates of another CA or of
// another node, a forged gateway node answering /steering, and a replayed TLS session. Each is
// refused; and a rotation of the nodes' key pairs drops no stream.
import { X509Certificate } from 'node:crypto';
import { readFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { KeyPair } from '../../operator/certificates.ts';
import { kubectl } from '../cluster/cluster.ts';
import {
  createCluster,
  foreignAddress,
  gatewayAddress,
  gatewayUplinks,
  gateways,
  nodeNetwork,
  podAddress,
  podNetwork,
  workerAddress,
  writeClusterTls,
  type Cluster,
} from './cluster-topology.ts';
import { apiserverOf, createBoundPod, relayIntoNamespace, sidecarEnv, sidecarMain, type BoundPod } from './naa-pod.ts';
import { LoggedProcesses } from './logged-processes.ts';
import { until } from './topology.ts';
import { startWhoami, type Server } from './traffic.ts';
import { makeTestCa, writeTlsDir } from '../tls.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const programs = join(import.meta.dirname, 'programs');
const kubeconfig = process.env.KUBECONFIG!;
const namespace = `links-${process.pid}`;
const associationPort = 7740;
const healthPort = 7741;
const tunnel = { vni: 7710, port: 4791 };
const workersUsed = [1, 2] as const;
/**
 * The Nodes the pods run on in the control plane (two of its simulated ones, which give pods
 * addresses), and that the workers' certificates name.
 */
const nodeName = (w: number) => (w === 1 ? 'worker-a' : 'gateway-b');
const podName = (w: number) => `app-${w}`;
const bothFamilies = (address: { v4: string; v6: string }) => [address.v4, address.v6];

let c: Cluster;
let dir: string;
let foreign: string;
let ca: KeyPair;
let tlsDir: (node: string) => string;
let processes: LoggedProcesses;
const pods = new Map<number, BoundPod>();
const servers: Server[] = [];
const log = (name: string) => processes.log(name);
const occurrences = async (name: string, text: string) => (await log(name)).split(text).length - 1;

const gatewayConfig = {
  version: 1,
  gateway: 'egress',
  hash: 'links-1',
  sources: [podNetwork.v4, podNetwork.v6],
  pods: workersUsed.map((w) => ({
    namespace,
    name: podName(w),
    addresses: bothFamilies(podAddress(w)),
    node: `w${w}`,
  })),
  uplinks: gateways.flatMap((g) => gatewayUplinks(g, 9000)),
  balancing: { mode: 'Weighted' },
  association: {
    port: associationPort,
    unassociatedFlows: 'Hold',
    sidecarSources: workersUsed.flatMap((w) => bothFamilies(podAddress(w))),
    strictSources: [],
  },
  rules: [],
  steering: {
    tunnel,
    markMask: 0x10,
    sources: workersUsed.map((w) => ({ node: `w${w}`, addresses: bothFamilies(workerAddress(w)) })),
  },
};

const nodeConfig = (w: number) => ({
  version: 1,
  node: `w${w}`,
  hash: `w${w}-1`,
  markMask: 0xe0,
  gateways: [
    {
      gateway: 'egress',
      tunnel,
      selection: 'Pod',
      associationPort,
      healthPort,
      bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
      pods: [{ namespace, name: podName(w), addresses: bothFamilies(podAddress(w)) }],
      peers: gateways.map((g) => ({ node: `g${g}`, addresses: bothFamilies(gatewayAddress(g)) })),
    },
  ],
});

interface Outcome {
  helloAck: boolean;
  code?: number;
  details?: string;
}

/** Runs the NAA client (programs/naa-client.ts) in namespace `ns`; resolves with what came of its Hello. */
async function naaClient(ns: string, options: Record<string, unknown>): Promise<Outcome> {
  const { stdout } = await c.exec(ns, [process.execPath, join(programs, 'naa-client.ts'), JSON.stringify(options)], {
    timeoutMs: 30_000,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!) as Outcome;
}

/** The Hello of the pod on worker w, with its real token (as if it had been stolen). */
async function podHello(w: number): Promise<Record<string, unknown>> {
  const pod = pods.get(w)!;
  const tokenFile = join(dir, `token-${w}`);
  await writeFile(tokenFile, pod.token);
  return { pod: { namespace, name: pod.name, uid: pod.uid }, tokenFile };
}

const gatewayTarget = (g: number) => `${gatewayAddress(g).v4}:${associationPort}`;

/** Whether node agent w counts gateway node g up. */
async function peerUp(w: number, g: number): Promise<boolean> {
  const { stdout } = await c.exec(c.worker(w), ['curl', '-sf', 'http://127.0.0.1:7742/status']);
  const peers = (JSON.parse(stdout) as { peers: Array<{ node: string; up: boolean }> }).peers;
  return peers.some((p) => p.node === `g${g}` && p.up);
}

/** `curl` of gateway node g's /steering from `ns`, with extra arguments; resolves with its exit code and output. */
async function curlSteering(ns: string, g: number, args: string[]): Promise<{ code: number; out: string }> {
  const { stdout } = await c.exec(ns, [
    'sh',
    '-c',
    `curl -s -m 5 -o - -w ' %{http_code}' ${args.join(' ')} ${args.includes('--cacert') ? 'https' : 'http'}://${gatewayAddress(g).v4}:${healthPort}/steering; echo " exit=$?"`,
  ]);
  const code = Number(/exit=(\d+)/.exec(stdout)![1]);
  return { code, out: stdout };
}

beforeAll(async () => {
  c = await createCluster();
  foreign = await c.addForeignHost();
  dir = await mkdtemp(join(tmpdir(), 'naat-links-'));
  ca = makeTestCa();
  tlsDir = writeClusterTls(dir, ca, { w1: nodeName(1), w2: nodeName(2) });
  processes = new LoggedProcesses({
    dir,
    spawnIn: (ns, argv, options) => c.spawn(ns, argv, options),
    env: { KUBECONFIG: kubeconfig },
  });
  const k = (args: string[]) => kubectl(kubeconfig, args);
  await k(['create', 'namespace', namespace]);
  await k(['create', 'serviceaccount', 'app', '-n', namespace]);
  for (const w of workersUsed) {
    const status = { podIPs: bothFamilies(podAddress(w)), hostIPs: bothFamilies(workerAddress(w)) };
    pods.set(w, await createBoundPod(kubeconfig, namespace, podName(w), nodeName(w), status));
  }
  servers.push(await startWhoami(c, 9000));
  const apiserver = await apiserverOf(kubeconfig);
  for (const g of gateways) {
    await relayIntoNamespace(
      processes.spawn,
      dir,
      c.gateway(g),
      `apiserver-g${g}`,
      apiserver,
      new URL(apiserver).hostname,
    );
  }
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(gatewayConfig));
  for (const g of gateways) {
    const argv = [
      'run',
      '--config',
      join(dir, 'gateway.json'),
      '--node',
      `g${g}`,
      '--state-dir',
      join(dir, `g${g}-state`),
    ];
    const listen = [
      '--listen',
      `[::]:${healthPort}`,
      '--metrics-listen',
      '127.0.0.1:7744',
      '--tls-dir',
      tlsDir(`g${g}`),
    ];
    processes.spawn(c.gateway(g), [process.execPath, main, ...argv, ...listen], `g${g}.log`);
  }
  for (const w of workersUsed) {
    await writeFile(join(dir, `w${w}.json`), JSON.stringify(nodeConfig(w)));
    const argv = [
      'node',
      '--config',
      join(dir, `w${w}.json`),
      '--node',
      `w${w}`,
      '--state-dir',
      join(dir, `w${w}-state`),
    ];
    processes.spawn(c.worker(w), [process.execPath, main, ...argv, '--tls-dir', tlsDir(`w${w}`)], `w${w}.log`);
  }
  for (const g of gateways) {
    await until(`g${g}'s NAA server`, async () =>
      (await log(`g${g}.log`)).includes('Listening for NAA streams') ? true : undefined,
    );
  }
  for (const w of workersUsed) {
    await until(`w${w} to see every gateway node up over mutual TLS`, async () =>
      (await peerUp(w, 1)) && (await peerUp(w, 2)) ? true : undefined,
    );
  }
  const tokenFile = join(dir, 'token-sidecar');
  await writeFile(tokenFile, pods.get(1)!.token);
  const env = {
    ...sidecarEnv({ host: workerAddress(1).v4, port: associationPort, namespace, pod: pods.get(1)!, tokenFile }),
    NAAT_NAA_CA: ca.cert,
  };
  processes.spawn(c.pod(1), [process.execPath, sidecarMain], 'sidecar-1.log', env);
  for (const g of gateways) {
    await until(`g${g} to accept the relayed stream of ${podName(1)}`, async () =>
      (await log(`g${g}.log`)).includes(`"pod":"${namespace}/${podName(1)}"`) ? true : undefined,
    );
  }
}, 180_000);

afterAll(async () => {
  await processes?.stopAll();
  for (const s of servers) await s.stop();
  await c?.destroy();
  await kubectl(kubeconfig, ['delete', 'namespace', namespace, '--wait=false']).catch(() => {});
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

describe('plaintext is refused', () => {
  test.each([
    ['the pod on w2, at a gateway node', () => c.pod(2), gatewayTarget(1)],
    ['the pod on w1, at its own node', () => c.pod(1), `${workerAddress(1).v4}:${associationPort}`],
    ['a foreign host, at a gateway node', () => foreign, gatewayTarget(2)],
  ])('%s: no stream', async (_who, ns, target) => {
    const outcome = await naaClient(ns(), { ...(await podHello(2)), target, transport: 'plaintext' });
    expect(outcome.helloAck).toBe(false);
    expect(outcome.code).toBe(14); // UNAVAILABLE: the TLS server never speaks plaintext gRPC.
  });

  test('a foreign host gets no /steering answer in plaintext: 403', async () => {
    const { out } = await curlSteering(foreign, 1, []);
    expect(out).toContain('/steering is answered to node agents over mutual TLS only');
    expect(out).toContain(' 403');
  });
});

describe('certificates that are not the node agent’s own are refused', () => {
  test('the pod on w2 dials a gateway node directly, as a relay of its own pod, without a certificate', async () => {
    // Its packets leave w2 masqueraded with w2's address: the address alone would pass.
    const outcome = await naaClient(c.pod(2), {
      ...(await podHello(2)),
      target: gatewayTarget(1),
      transport: 'tls',
      ca: join(tlsDir('g1'), 'ca.crt'),
    });
    expect(outcome).toEqual({
      helloAck: false,
      code: 7,
      details: expect.stringContaining('this one was made with no agent certificate the CA issued'),
    });
  });

  test('the pod on w2 with a certificate for its node from another CA', async () => {
    const other = join(dir, 'other-ca-w2');
    writeTlsDir(other, makeTestCa('other'), nodeName(2), bothFamilies(workerAddress(2)));
    await writeFile(join(other, 'ca.crt'), ca.cert);
    const outcome = await naaClient(c.pod(2), {
      ...(await podHello(2)),
      target: gatewayTarget(1),
      transport: 'mtls',
      tlsDir: other,
    });
    expect(outcome).toEqual({
      helloAck: false,
      code: 7,
      details: expect.stringContaining('this one was made with no agent certificate the CA issued'),
    });
  });

  test('a relayed stream for the pod of w2 over the valid certificate of w1 is refused', async () => {
    const outcome = await naaClient(c.worker(1), {
      ...(await podHello(2)),
      target: gatewayTarget(1),
      transport: 'mtls',
      tlsDir: tlsDir('w1'),
    });
    expect(outcome).toMatchObject({ helloAck: false, code: 7 });
    expect(outcome.details).toContain(`runs on node ${nodeName(2)}`);
  });

  test('the same stream from w2 with its own certificate is taken (the control)', async () => {
    const outcome = await naaClient(c.worker(2), {
      ...(await podHello(2)),
      target: gatewayTarget(1),
      transport: 'mtls',
      tlsDir: tlsDir('w2'),
    });
    expect(outcome).toEqual({ helloAck: true });
  });

  test('/steering: a foreign host without a client certificate, or with one of another CA, fails the handshake', async () => {
    await writeFile(join(dir, 'ca.crt'), ca.cert);
    const none = await curlSteering(foreign, 1, ['--cacert', join(dir, 'ca.crt')]);
    expect(none.code).not.toBe(0);
    const other = join(dir, 'other-ca-foreign');
    writeTlsDir(other, makeTestCa('other'), 'w1', [foreignAddress.v4]);
    const forged = await curlSteering(foreign, 1, [
      '--cacert',
      join(dir, 'ca.crt'),
      '--cert',
      join(other, 'tls.crt'),
      '--key',
      join(other, 'tls.key'),
    ]);
    expect(forged.code).not.toBe(0);
    // The control: a node's own certificate gets the answer.
    const own = await curlSteering(c.worker(1), 1, [
      '--cacert',
      join(dir, 'ca.crt'),
      '--cert',
      join(tlsDir('w1'), 'tls.crt'),
      '--key',
      join(tlsDir('w1'), 'tls.key'),
    ]);
    expect(own.code).toBe(0);
    expect(own.out).toContain('"ready":true');
  });
});

test('a forged gateway node answering /steering "ready" with a certificate of its own counts as down', async () => {
  expect(await peerUp(1, 2)).toBe(true);
  // The foreign host takes over g2's address (g2 is off the underlay) and answers as it would.
  await c.setGatewayLink(2, false);
  await c.exec(foreign, ['ip', 'address', 'add', `${gatewayAddress(2).v4}/24`, 'dev', 'eth0']);
  for (const w of workersUsed) await c.exec(c.worker(w), ['ip', 'neigh', 'flush', 'dev', 'eth0']);
  const forged = processes.spawn(
    foreign,
    [process.execPath, join(programs, 'forged-steering.ts'), gatewayAddress(2).v4, String(healthPort)],
    'forged.log',
  );
  try {
    await until('the forged gateway node', async () =>
      (await log('forged.log')).includes('listening') ? true : undefined,
    );
    await until('w1 to count g2 down', async () => ((await peerUp(1, 2)) ? undefined : true));
    // It keeps asking the forged node, and keeps it down: nothing is steered there.
    await until('w1 to have asked the forged node', async () =>
      (await log('forged.log')).includes('TLS client error') ? true : undefined,
    );
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(await peerUp(1, 2)).toBe(false);
    expect(await peerUp(2, 2)).toBe(false);
  } finally {
    forged.kill();
    await c.exec(foreign, ['ip', 'address', 'del', `${gatewayAddress(2).v4}/24`, 'dev', 'eth0']);
    await c.setGatewayLink(2, true);
    for (const w of workersUsed) await c.exec(c.worker(w), ['ip', 'neigh', 'flush', 'dev', 'eth0']);
  }
  await until('w1 to count the real g2 up again', async () => ((await peerUp(1, 2)) ? true : undefined));
}, 60_000);

test('a recorded TLS session replayed from a foreign host is refused and changes nothing', async () => {
  const recorded = join(dir, 'session.bin');
  const accepted = () => occurrences('g1.log', `"msg":"Accepted NAA stream","pod":"${namespace}/${podName(2)}"`);
  const outcome = await naaClient(c.worker(2), {
    ...(await podHello(2)),
    target: gatewayTarget(1),
    transport: 'mtls',
    tlsDir: tlsDir('w2'),
    serverName: 'g1',
    record: recorded,
  });
  expect(outcome).toEqual({ helloAck: true });
  const before = await accepted();
  expect((await readFile(recorded)).length).toBeGreaterThan(500);
  const { stdout } = await c.exec(foreign, [
    process.execPath,
    join(programs, 'replay.ts'),
    gatewayAddress(1).v4,
    String(associationPort),
    recorded,
  ]);
  const replay = JSON.parse(stdout.trim()) as { received: number; closed: boolean };
  // The server's half of the handshake comes back; the client's Finished cannot match a new
  // handshake, so the server closes before any gRPC byte is read.
  expect(replay.closed).toBe(true);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  expect(await accepted()).toBe(before);
}, 60_000);

test('rotating the nodes’ key pairs drops no stream, and new connections get the new certificate', async () => {
  const connected = () => occurrences('sidecar-1.log', 'Driver connected');
  const accepted = (g: number) =>
    occurrences(`g${g}.log`, `"msg":"Accepted NAA stream","pod":"${namespace}/${podName(1)}"`);
  const counts = async () => ({ connected: await connected(), g1: await accepted(1), g2: await accepted(2) });
  // The sidecar reconnected after g2 went away and came back: wait until its stream is settled.
  let last = '';
  await until('the sidecar’s stream to settle', async () => {
    const now = JSON.stringify(await counts());
    const settled = now === last && (await peerUp(1, 1)) && (await peerUp(1, 2));
    last = now;
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    return settled ? true : undefined;
  });
  const before = await counts();
  const renewed = {
    g1: writeTlsDir(tlsDir('g1'), ca, 'g1', bothFamilies(gatewayAddress(1))),
    w1: writeTlsDir(tlsDir('w1'), ca, nodeName(1), bothFamilies(workerAddress(1))),
  };
  for (const node of ['g1', 'w1']) {
    await until(`${node} to load its renewed pair`, async () =>
      (await log(`${node}.log`)).includes('Loaded a renewed TLS key pair') ? true : undefined,
    );
  }
  const served = async (ns: string, address: string) => {
    const { stdout } = await c.exec(ns, [
      'sh',
      '-c',
      `openssl s_client -connect ${address}:${associationPort} -alpn h2 </dev/null 2>/dev/null | openssl x509`,
    ]);
    return new X509Certificate(stdout).fingerprint256;
  };
  expect(await served(foreign, gatewayAddress(1).v4)).toBe(new X509Certificate(renewed.g1.cert).fingerprint256);
  expect(await served(c.pod(1), workerAddress(1).v4)).toBe(new X509Certificate(renewed.w1.cert).fingerprint256);
  // Streams made before keep going: the sidecar did not reconnect, the gateways took no new stream.
  await new Promise((resolve) => setTimeout(resolve, 2_000));
  expect(await counts()).toEqual(before);
  expect(await peerUp(1, 1)).toBe(true);
  expect(await peerUp(1, 2)).toBe(true);
}, 60_000);
