// Applications of pods on worker nodes in the multi-node topology (cluster-topology.ts), with every
// part real: the Pods in the real control plane (kwok's, their status patched to the topology's
// addresses), the real sidecar in each pod namespace dialling its own node's address at the
// gateway's association port, where the node agent (`dataplane/main.ts node`) relays its stream to
// both gateway nodes, and the gateway agents (`dataplane/main.ts run`), which check the Pods'
// tokens against the apiserver, take the streams only from the Pods' nodes, and decide on the
// flows that come out of the VXLAN tunnel: per-application deny and uplink routing, attribution
// (pod, container, application), in IPv4 and IPv6, the flow's span in the trace of the sidecar's
// association and the gateway node's metrics, both exported as for a pod on the gateway node, and
// strict mode's DSCP stamps, which must cross the tunnel so that the first packet is classified,
// and never leave an uplink. Every link is TLS, as in a cluster: each node holds its --tls-dir
// from the test's CA, and the sidecars verify their node with it.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AttributionRecord } from '../../dataplane/attribution.ts';
import { rendezvous } from '../../common/index.ts';
import { kubectl } from '../cluster/cluster.ts';
import { exportTo, startOtlpReceiver, type OtlpReceiver } from '../cluster/otlp.ts';
import {
  createCluster,
  gatewayAddress,
  gatewayUplinks,
  gateways,
  nodeNetwork,
  podAddress,
  podNetwork,
  uplinkAddress,
  workerAddress,
  writeClusterTls,
  type Cluster,
} from './cluster-topology.ts';
import { makeTestCa } from '../tls.ts';
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
import { metricSum } from './naa-harness.ts';
import { exited } from '../cluster/processes.ts';
import { server, stopProcess, until } from './topology.ts';
import { curlConnects, pythonConnects, startStreamServer, startWhoami, type Server } from './traffic.ts';
import { LoggedProcesses } from './logged-processes.ts';

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
let otlp: OtlpReceiver;
const pods = new Map<number, BoundPod>();
const servers: Server[] = [];
let processes: LoggedProcesses;
const ca = makeTestCa();
/** Each node's --tls-dir; the workers' certificates name the Node their pods report, worker-a. */
let tlsDir: (node: string) => string;
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
    destinations: [
      { cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port: ports.denied }] },
      { cidr: `${server.v6}/128`, protocol: 'TCP', ports: [{ port: ports.denied }] },
    ],
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
  uplinks: gateways.flatMap((g) => gatewayUplinks(g, ports.health)),
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

const assignments = (env: Record<string, string>) => Object.entries(env).map(([name, value]) => `${name}=${value}`);

/** The gateway node the pod on worker w is steered to while both are up. */
const chosenFor = (w: number) => Number(rendezvous(`${namespace}/${podName(w)}`, ['g1', 'g2'])!.slice(1));

const log = (name: string) => processes.log(name);

async function agentText(g: number, path: string): Promise<string> {
  const { stdout } = await c.exec(c.gateway(g), ['curl', '-sf', `http://127.0.0.1:7744${path}`]);
  return stdout;
}

async function agentGet<T>(g: number, path: string): Promise<T> {
  return JSON.parse(await agentText(g, path)) as T;
}

/** The sum of gateway node g's /metrics samples named `name` whose labels include `labels`. */
async function metric(g: number, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricSum(await agentText(g, '/metrics'), name, labels);
}

/** Runs a shell script in the pod namespace of worker w with `env`; resolves with its output. */
async function inPod(w: number, script: string, env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await c.exec(c.pod(w), ['env', ...assignments(env), 'sh', '-c', script], { timeoutMs: 120_000 });
  return stdout;
}

/** Starts the sidecar of the pod on worker w, with more environment; resolves once both gateway nodes accepted its stream. */
async function startSidecar(w: number, env: Record<string, string> = {}): Promise<void> {
  const pod = pods.get(w)!;
  const tokenFile = join(dir, `token-${w}`);
  await writeFile(tokenFile, pod.token);
  const base = {
    ...sidecarEnv({ host: workerAddress(w).v4, port: associationPort, namespace, pod, tokenFile }),
    NAAT_NAA_CA: ca.cert,
  };
  processes.spawn(
    c.pod(w),
    ['env', ...assignments({ ...base, NAAT_SCAN_INTERVAL_MS: '50', ...env }), process.execPath, sidecarMain],
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
  tlsDir = writeClusterTls(dir, ca, Object.fromEntries(served.map((w) => [`w${w}`, 'worker-a'])));
  processes = new LoggedProcesses({
    dir,
    spawnIn: (ns, argv, options) => c.spawn(ns, argv, options),
    env: { KUBECONFIG: kubeconfig },
  });
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
  otlp = await startOtlpReceiver();
  for (const g of gateways) {
    await relayIntoNamespace(
      processes.spawn,
      dir,
      c.gateway(g),
      `apiserver-g${g}`,
      apiserver,
      new URL(apiserver).hostname,
    );
    await relayIntoNamespace(processes.spawn, dir, c.gateway(g), `otlp-g${g}`, otlp.endpoint, '127.0.0.1');
  }
  await relayIntoNamespace(processes.spawn, dir, c.pod(plain), `otlp-pod`, otlp.endpoint, '127.0.0.1');
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
      // The flow data, which a listener on every address does not serve, on loopback.
      '--metrics-listen',
      '127.0.0.1:7744',
      '--tls-dir',
      tlsDir(`g${g}`),
    ];
    processes.spawn(
      c.gateway(g),
      ['env', ...assignments(exportTo(otlp.endpoint)), process.execPath, main, ...argv],
      `g${g}.log`,
    );
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
      '--tls-dir',
      tlsDir(`w${w}`),
    ];
    processes.spawn(c.worker(w), [process.execPath, main, ...argv], `w${w}.log`);
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

  await startSidecar(plain, exportTo(otlp.endpoint));
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
  await processes?.stopAll();
  for (const s of servers) await s.stop();
  await c?.destroy();
  await otlp?.close();
  await kubectl(kubeconfig, ['delete', 'namespace', namespace, '--wait=false']).catch(() => {});
  const logs = ['g1.log', 'g2.log', ...served.flatMap((w) => [`w${w}.log`, `sidecar-${w}.log`])];
  const errors = (await Promise.all(logs.map(log)))
    .join('\n')
    .split('\n')
    .filter((line) => line.includes('"level":"error"'));
  if (errors.length) console.log(`errors logged:\n${errors.slice(0, 30).join('\n')}`);
  if (dir) await rm(dir, { recursive: true, force: true });
}, 60_000);

/**
 * Downloads from the stream server at `address` in the pod on worker w, as container "web"; once
 * gateway node g knows the flow to be python3's, checks that its attribution names the pod, the
 * container and the application, and resolves with the flow's source port and the address it was
 * mapped to, after the download ended.
 */
async function attributedDownload(
  w: number,
  address: string,
  g: number,
): Promise<{ sourcePort: number; mapped: string }> {
  const source = address === server.v4 ? podAddress(w).v4 : podAddress(w).v6;
  const download = c.spawn(
    c.pod(w),
    [
      'env',
      'NAAT_CONTAINER_NAME=web',
      'python3',
      '-c',
      `import socket
s=socket.create_connection(('${address}',${ports.stream}),timeout=10)
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
        (f) => f.source === source && f.sourcePort === sourcePort && f.application?.processName === 'python3',
      ),
    );
    const query = new URLSearchParams({
      address: flow.mappedAddress,
      port: String(flow.mappedPort),
      at: new Date().toISOString(),
    });
    const records = await agentGet<AttributionRecord[]>(g, `/attribution?${query}`);
    expect(records).toMatchObject([
      {
        source,
        sourcePort,
        mappedAddress: flow.mappedAddress,
        uplink: `g${g}-isp2`,
        pod: { namespace, name: podName(w) },
        container: 'web',
        application: { processName: 'python3' },
        verdict: 'Allow',
      },
    ]);
    await exited(download);
    return { sourcePort, mapped: flow.mappedAddress };
  } finally {
    await stopProcess(download);
  }
}

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

  it('attributes a flow to its pod, container and application at the gateway node, and traces it from the sidecar’s association', async () => {
    const g = chosenFor(plain);
    const { sourcePort, mapped } = await attributedDownload(plain, server.v4, g);
    expect(mapped).toBe(uplinkAddress(g, 2).v4);

    const associate = await until('the sidecar’s span', async () =>
      otlp.spans.find((s) => s.name === 'associate' && s.attributes['source.port'] === sourcePort),
    );
    const apply = await until('the gateway node’s span', async () =>
      otlp.spans.find(
        (s) =>
          s.name === 'apply association' && s.traceId === associate.traceId && s.resource['k8s.node.name'] === `g${g}`,
      ),
    );
    expect(apply).toMatchObject({ parentSpanId: associate.spanId });
    expect(apply.resource).toMatchObject({ 'service.name': 'naat-dataplane' });
    expect(apply.attributes).toMatchObject({ 'k8s.pod.name': podName(plain), 'naat.uplink': `g${g}-isp2` });
    // The flow's span comes when its flow ends (conntrack's DESTROY, after the 10 s TIME_WAIT).
    const span = await until(
      'the flow span',
      async () => otlp.spans.find((s) => s.name === 'nat flow' && s.attributes['source.port'] === sourcePort),
      45_000,
    );
    expect(span).toMatchObject({ traceId: associate.traceId, parentSpanId: associate.spanId });
    expect(span.resource).toMatchObject({ 'service.name': 'naat-dataplane', 'k8s.node.name': `g${g}` });
    expect(span.attributes).toMatchObject({
      'source.address': podAddress(plain).v4,
      'k8s.namespace.name': namespace,
      'k8s.pod.name': podName(plain),
      'k8s.container.name': 'web',
      'process.executable.name': 'python3',
      'naat.uplink': `g${g}-isp2`,
      'naat.mapped.address': uplinkAddress(g, 2).v4,
      'naat.verdict': 'Allow',
    });
    expect(span.attributes['naat.bytes.received']).toBeGreaterThan(20_000);
  }, 90_000);

  it('counts a worker pod’s flows by uplink and application, and its denials, in the gateway node’s /metrics', async () => {
    const g = chosenFor(plain);
    const counters = () =>
      Promise.all([
        metric(g, 'naat_uplink_new_flows_total', { uplink: `g${g}-isp2` }),
        metric(g, 'naat_application_flows_total', { application: 'python3', verdict: 'Allow' }),
        metric(g, 'naat_application_denials_total', { application: 'curl' }),
        metric(g, 'naat_association_latency_seconds_count'),
      ]);
    const [newBefore, pythonBefore, deniedBefore] = await counters();
    expect((await inPod(plain, pythonConnects(ports.allowed, 4))).trim().split('\n')).toHaveLength(4);
    expect((await inPod(plain, curlConnects(ports.denied, 2))).trim().split('\n')).toEqual(['x', 'x']);
    const [newAfter, pythonAfter, deniedAfter, associated] = await counters();
    expect(newAfter - newBefore).toBeGreaterThanOrEqual(4);
    expect(pythonAfter - pythonBefore).toBeGreaterThanOrEqual(4);
    expect(deniedAfter - deniedBefore).toBeGreaterThanOrEqual(2);
    expect(associated).toBeGreaterThan(0);
  });

  it('serves the node agent’s process metrics and its version at the node agent’s /metrics', async () => {
    const { stdout } = await c.exec(c.worker(plain), ['curl', '-sf', 'http://127.0.0.1:7742/metrics']);
    expect(stdout).toMatch(/^naat_build_info\{version="[^"]+",component="node-agent",node_version="v[^"]+"\} 1$/m);
    expect(stdout).toMatch(/^process_resident_memory_bytes \d+$/m);
  });

  it('routes IPv6 flows of python3 through ISP 2 of the gateway node, denies curl, and attributes them', async () => {
    const g = chosenFor(plain);
    const deniedBefore = await metric(g, 'naat_application_denials_total', { application: 'curl' });
    const seen = (await inPod(plain, pythonConnects(ports.allowed, 5, server.v6))).trim().split('\n');
    expect(seen).toEqual(Array(5).fill(uplinkAddress(g, 2).v6));
    expect((await inPod(plain, curlConnects(ports.denied, 3, server.v6))).trim().split('\n')).toEqual(['x', 'x', 'x']);
    // Denied by the gateway node for the application, not lost on the way.
    expect(await metric(g, 'naat_application_denials_total', { application: 'curl' })).toBeGreaterThanOrEqual(
      deniedBefore + 3,
    );
    const { stdout } = await c.exec(c.gateway(g), ['conntrack', '-L', '-f', 'ipv6', '-s', podAddress(plain).v6]);
    expect(stdout).toContain(`src=${podAddress(plain).v6}`);
    const { mapped } = await attributedDownload(plain, server.v6, g);
    expect(mapped).toBe(uplinkAddress(g, 2).v6);
    expect(await c.serverPacketsFromInside()).toBe(0);
  }, 90_000);

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
