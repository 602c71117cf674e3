// Applications of pods on worker nodes in the multi-node topology (cluster-topology.ts), with every
// part real: the Pods in the real control plane (kwok's, their status patched to the topology's
// addresses), the real sidecar in each pod namespace dialling its own node's address at the
// gateway's association port, where the node agent (`dataplane/main.ts node`) relays its stream to
// both gateway nodes, and the gateway agents (`dataplane/main.ts run`), which check the Pods'
// tokens against the apiserver, take the streams only from the Pods' nodes, and decide on the
// flows that come out of the VXLAN tunnel: per-application deny and uplink routing, attribution
// (pod, container, application), and strict mode's DSCP stamps, which must cross the tunnel so
// that the first packet is classified, and never leave an uplink.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AttributionRecord } from '../../dataplane/attribution.ts';
import { rendezvous } from '../../dataplane/steering/rendezvous.ts';
import { kubectl } from '../cluster/cluster.ts';
import {
  createCluster,
  gatewayAddress,
  gateways,
  isps,
  nodeNetwork,
  podAddress,
  podNetwork,
  uplinkAddress,
  uplinkNextHop,
  workerAddress,
  type Cluster,
} from './cluster-topology.ts';
import {
  apiserverOf,
  buildStampLibrary,
  createBoundPod,
  relayIntoNamespace,
  sidecarEnv,
  sidecarMain,
  strictCounters,
  type BoundPod,
} from './naa-pod.ts';
import { server, stopProcess, until } from './topology.ts';
import { curlConnects, pythonConnects, startStreamServer, startWhoami, type Server } from './traffic.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const kubeconfig = process.env.KUBECONFIG!;
const namespace = `steer-cluster-${process.pid}`;
const ports = { health: 9000, stream: 9300, allowed: 9301, denied: 9302 };
const tunnel = { vni: 7700, port: 4790 };
const associationPort = 7740;
/** The pod on worker 1 runs a sidecar that associates its flows; the one on worker 2 stamps them (strict mode). */
const plain = 1;
const strict = 2;
const served = [plain, strict];
const podName = (w: number) => `app-${w}`;

let c: Cluster;
let dir: string;
const pods = new Map<number, BoundPod>();
const servers: Server[] = [];
const processes: ChildProcess[] = [];
/** The environment of a program in the strict pod, as the webhook sets it. */
let preloaded: Record<string, string>;

const bothFamilies = (address: { v4: string; v6: string }) => [address.v4, address.v6];

/** Rules for the pods: curl may not reach the denied port; python3 leaves through each gateway node's ISP 2 only. */
const rules = served.flatMap((w) => [
  {
    policy: `${namespace}/apps`,
    rule: `no-curl-${w}`,
    priority: 1,
    sources: bothFamilies(podAddress(w)),
    applications: [{ processName: 'curl' }],
    destinations: [{ cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port: ports.denied }] }],
    action: 'Deny',
  },
  {
    policy: `${namespace}/apps`,
    rule: `python-via-isp2-${w}`,
    priority: 2,
    sources: bothFamilies(podAddress(w)),
    applications: [{ processName: 'python3' }],
    action: 'Allow',
    uplinks: { allowed: gateways.map((g) => `g${g}-isp2`) },
  },
]);

const gatewayConfig = {
  version: 1,
  gateway: 'egress',
  hash: 'gw-1',
  sources: [podNetwork.v4, podNetwork.v6],
  pods: served.map((w) => ({ namespace, name: podName(w), addresses: bothFamilies(podAddress(w)), node: `w${w}` })),
  uplinks: gateways.flatMap((g) =>
    isps.map((i) => ({
      name: `g${g}-isp${i}`,
      nodes: [`g${g}`],
      interface: `up${i}`,
      nextHop: { ipv4: uplinkNextHop(g, i).v4, ipv6: uplinkNextHop(g, i).v6 },
      snat: { addresses: bothFamilies(uplinkAddress(g, i)) },
      healthCheck: {
        targets: [server.v4],
        protocol: 'TCP',
        port: ports.health,
        intervalMs: 200,
        timeoutMs: 150,
        failureThreshold: 2,
        successThreshold: 1,
      },
    })),
  ),
  balancing: { mode: 'Weighted' },
  // The shortest the API allows: a closed connection leaves conntrack within seconds.
  timeouts: { tcpTransitorySeconds: 10 },
  association: {
    port: associationPort,
    unassociatedFlows: 'Hold',
    sidecarSources: served.flatMap((w) => bothFamilies(podAddress(w))),
    strictSources: bothFamilies(podAddress(strict)),
  },
  rules,
  steering: {
    tunnel,
    markMask: 0x10,
    sources: served.map((w) => ({ node: `w${w}`, addresses: bothFamilies(workerAddress(w)) })),
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
      healthPort: 7741,
      bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
      pods: [{ namespace, name: podName(w), addresses: bothFamilies(podAddress(w)) }],
      peers: gateways.map((g) => ({ node: `g${g}`, addresses: bothFamilies(gatewayAddress(g)) })),
    },
  ],
});

/** The gateway node the pod on worker w is steered to while both are up. */
const chosenFor = (w: number) => Number(rendezvous(`${namespace}/${podName(w)}`, ['g1', 'g2'])!.slice(1));

function spawnLogged(ns: string | undefined, argv: string[], log: string): ChildProcess {
  const fd = openSync(join(dir, log), 'a');
  const options = {
    stdio: ['ignore', fd, fd] as ['ignore', number, number],
    env: { ...process.env, KUBECONFIG: kubeconfig },
  };
  const child = ns ? c.spawn(ns, argv, options) : spawn(argv[0]!, argv.slice(1), options);
  closeSync(fd);
  processes.push(child);
  return child;
}

const log = (name: string) => readFile(join(dir, name), 'utf8').catch(() => '');

async function agentGet<T>(g: number, path: string): Promise<T> {
  const { stdout } = await c.exec(c.gateway(g), ['curl', '-sf', `http://127.0.0.1:7741${path}`]);
  return JSON.parse(stdout) as T;
}

/** Runs a shell script in the pod namespace of worker w with `env`; resolves with its output. */
async function inPod(w: number, script: string, env: Record<string, string> = {}): Promise<string> {
  const assignments = Object.entries(env).map(([name, value]) => `${name}=${value}`);
  const { stdout } = await c.exec(c.pod(w), ['env', ...assignments, 'sh', '-c', script], { timeoutMs: 120_000 });
  return stdout;
}

/** Starts the sidecar of the pod on worker w, with more environment; resolves once both gateway nodes accepted its stream. */
async function startSidecar(w: number, env: Record<string, string> = {}): Promise<void> {
  const pod = pods.get(w)!;
  const tokenFile = join(dir, `token-${w}`);
  await writeFile(tokenFile, pod.token);
  const base = sidecarEnv({ host: workerAddress(w).v4, port: associationPort, namespace, pod, tokenFile });
  spawnLogged(
    c.pod(w),
    [
      'env',
      ...Object.entries({ ...base, NAAT_SCAN_INTERVAL_MS: '50', ...env }).map(([k, v]) => `${k}=${v}`),
      process.execPath,
      sidecarMain,
    ],
    `sidecar-${w}.log`,
  );
  for (const g of gateways) {
    await until(`g${g} to accept the stream of ${podName(w)}`, async () =>
      (await log(`g${g}.log`)).includes(`"pod":"${namespace}/${podName(w)}"`) ? true : undefined,
    );
  }
}

beforeAll(async () => {
  c = await createCluster();
  dir = await mkdtemp(join(tmpdir(), 'naat-steering-apps-'));
  const k = (args: string[]) => kubectl(kubeconfig, args);
  await k(['create', 'namespace', namespace]);
  await k(['create', 'serviceaccount', 'app', '-n', namespace]);
  for (const w of served) {
    const status = { podIPs: bothFamilies(podAddress(w)), hostIPs: bothFamilies(workerAddress(w)) };
    pods.set(w, await createBoundPod(kubeconfig, namespace, podName(w), 'worker-a', status));
  }
  servers.push(await startStreamServer(c, ports.stream));
  for (const port of [ports.health, ports.allowed, ports.denied]) servers.push(await startWhoami(c, port));

  const apiserver = await apiserverOf(kubeconfig);
  for (const g of gateways) {
    await relayIntoNamespace(spawnLogged, dir, c.gateway(g), `apiserver-g${g}`, apiserver, new URL(apiserver).hostname);
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
      // On the underlay, as in a cluster: the node agents ask every gateway node's /steering
      // whether it takes flows, and relay only to those that do.
      '--listen',
      '[::]:7741',
    ];
    spawnLogged(c.gateway(g), [process.execPath, main, ...argv], `g${g}.log`);
  }
  for (const w of served) {
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
    spawnLogged(c.worker(w), [process.execPath, main, ...argv], `w${w}.log`);
  }
  for (const g of gateways) {
    await until(`g${g} applied its config with healthy uplinks`, async () => {
      const status = await agentGet<{ appliedHash?: string; uplinks: Array<{ healthy: boolean }> }>(g, '/status');
      return status.appliedHash === gatewayConfig.hash &&
        status.uplinks.length &&
        status.uplinks.every((u) => u.healthy)
        ? true
        : undefined;
    });
    await until(`g${g}'s NAA server`, async () =>
      (await log(`g${g}.log`)).includes('Listening for NAA streams') ? true : undefined,
    );
  }
  for (const w of served) {
    await until(`w${w}'s relay`, async () =>
      (await log(`w${w}.log`)).includes('Relaying NAA streams') ? true : undefined,
    );
    await until(`w${w} to see every gateway node up`, async () => {
      const { stdout } = await c.exec(c.worker(w), ['curl', '-sf', 'http://127.0.0.1:7742/status']);
      const peers = (JSON.parse(stdout) as { peers: Array<{ up: boolean }> }).peers;
      return peers.length && peers.every((p) => p.up) ? true : undefined;
    });
  }

  await startSidecar(plain);
  const stampDir = join(dir, 'run');
  await mkdir(stampDir, { recursive: true });
  const library = join(dir, 'libnaat_stamp.so');
  await buildStampLibrary(library);
  await startSidecar(strict, { NAAT_STAMP_DIR: stampDir, NAAT_STAMP_LIBRARY: library });
  const socket = join(stampDir, 'stamp.sock');
  await until('the stamping socket', async () => existsSync(socket) || undefined);
  preloaded = { LD_PRELOAD: library, NAAT_STAMP_SOCKET: socket };
}, 180_000);

afterAll(async () => {
  for (const child of processes.splice(0).reverse()) await stopProcess(child);
  for (const s of servers) await s.stop();
  await c?.destroy();
  await kubectl(kubeconfig, ['delete', 'namespace', namespace, '--wait=false']).catch(() => {});
  const logs = ['g1.log', 'g2.log', ...served.flatMap((w) => [`w${w}.log`, `sidecar-${w}.log`])];
  const errors = (await Promise.all(logs.map(log)))
    .join('\n')
    .split('\n')
    .filter((line) => line.includes('"level":"error"'));
  if (errors.length) console.log(`errors logged:\n${errors.slice(0, 30).join('\n')}`);
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

describe('applications of pods on worker nodes, decided at the gateway node through the tunnel', () => {
  it('took each sidecar stream only through the node agent on the pod’s own node', async () => {
    for (const w of served) expect(await log(`w${w}.log`)).toContain('"msg":"Relayed NAA stream"');
  });

  it('routes python3 through ISP 2 of the gateway node, and denies curl, from the first packet on', async () => {
    const g = chosenFor(plain);
    const seen = (await inPod(plain, pythonConnects(ports.allowed, 5))).trim().split('\n');
    expect(seen).toEqual(Array(5).fill(uplinkAddress(g, 2).v4));
    expect((await inPod(plain, curlConnects(ports.denied, 3))).trim().split('\n')).toEqual(['x', 'x', 'x']);
    const said = (await log(`sidecar-${plain}.log`))
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { msg: string; rule?: string });
    expect(said.find((entry) => entry.msg === 'Gateway denied flow')?.rule).toBe(`${namespace}/apps#no-curl-${plain}`);
    // The flows came out of the tunnel: the gateway node saw the pod's own address.
    const { stdout } = await c.exec(c.gateway(g), ['conntrack', '-L', '-s', podAddress(plain).v4]);
    expect(stdout).toContain(`src=${podAddress(plain).v4}`);
    expect(await c.serverPacketsFromInside()).toBe(0);
  });

  it('attributes a flow to its pod, container and application at the gateway node', async () => {
    const g = chosenFor(plain);
    const download = c.spawn(
      c.pod(plain),
      [
        'env',
        'NAAT_CONTAINER_NAME=web',
        'python3',
        '-c',
        `import socket
s=socket.create_connection(('${server.v4}',${ports.stream}),timeout=10)
print(s.getsockname()[1],flush=True)
s.sendall(b'3 10000\\n')
while s.recv(65536): pass
s.close()`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      const lines = createInterface({ input: download.stdout! })[Symbol.asyncIterator]();
      const sourcePort = Number((await lines.next()).value);
      const flow = await until('the flow, known to be python3', async () =>
        (await agentGet<AttributedFlow[]>(g, '/flows')).find(
          (f) =>
            f.source === podAddress(plain).v4 &&
            f.sourcePort === sourcePort &&
            f.application?.processName === 'python3',
        ),
      );
      const at = encodeURIComponent(new Date().toISOString());
      const records = await agentGet<AttributionRecord[]>(
        g,
        `/attribution?address=${flow.mappedAddress}&port=${flow.mappedPort}&at=${at}`,
      );
      expect(records).toMatchObject([
        {
          source: podAddress(plain).v4,
          sourcePort,
          mappedAddress: uplinkAddress(g, 2).v4,
          uplink: `g${g}-isp2`,
          pod: { namespace, name: podName(plain) },
          container: 'web',
          application: { processName: 'python3' },
          verdict: 'Allow',
        },
      ]);
    } finally {
      await stopProcess(download);
    }
  });

  it('classifies every new flow of a strict pod by the stamp its first packet carries through the tunnel, and clears it', async () => {
    const g = chosenFor(strict);
    const connections = 100;
    // What reaches the server: any packet still carrying a DSCP would be a stamp that left an uplink.
    await c.exec(c.ns.srv, ['nft', '-f', '-'], {
      input: `table inet leak {
  counter stamped {}
  chain in {
    type filter hook input priority 0;
    ip dscp != cs0 counter name stamped
    ip6 dscp != cs0 counter name stamped
  }
}
`,
    });
    // What comes out of the tunnel on the gateway node: the pod's SYNs, still stamped.
    await c.exec(c.gateway(g), ['nft', '-f', '-'], {
      input: `table inet tunnelled {
  counter stamped {}
  chain in {
    type filter hook prerouting priority raw - 10;
    iifname "naatg${tunnel.vni}" ip saddr ${podAddress(strict).v4} tcp flags syn ip dscp != cs0 counter name stamped
  }
}
`,
    });
    const seen = (await inPod(strict, pythonConnects(ports.allowed, connections), preloaded)).trim().split('\n');
    expect(seen).toEqual(Array(connections).fill(uplinkAddress(g, 2).v4));
    const denied = (await inPod(strict, curlConnects(ports.denied, 10), preloaded)).trim().split('\n');
    expect(denied).toEqual(Array(10).fill('x'));
    // Every new-flow packet of the pod arrived at the gateway node stamped.
    const counters = await strictCounters((argv) => c.exec(c.gateway(g), argv));
    expect(counters.newFlows).toBeGreaterThanOrEqual(connections + 10);
    expect(counters.stamped).toBe(counters.newFlows);
    const tunnelled = await c.exec(c.gateway(g), ['nft', 'list', 'counter', 'inet', 'tunnelled', 'stamped']);
    expect(Number(/packets (\d+)/.exec(tunnelled.stdout)?.[1])).toBeGreaterThanOrEqual(connections + 10);
    const leaked = await c.exec(c.ns.srv, ['nft', 'list', 'counter', 'inet', 'leak', 'stamped']);
    expect(/packets (\d+)/.exec(leaked.stdout)?.[1]).toBe('0');
    expect(await c.serverPacketsFromInside()).toBe(0);
  }, 180_000);
});
