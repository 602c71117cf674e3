// The whole of naat on one machine: a real control plane on loopback, a network-namespace
// topology (two gateway nodes, a worker node and an underlay between them, two pods on each of
// gateway-1 and the worker, three simulated ISPs and a server behind them), and the real
// processes in it: the operator on the host, a gateway agent in each gateway node's namespace,
// the node agent in the worker's, the NAA sidecars and sample programs in the pods' namespaces.
// The operator compiles the applied Uplinks, EgressGateway and EgressPolicies into the ConfigMaps
// that the agents follow, so `kubectl apply` changes what the lab does.
//
// Every step says what it did and how long it took; a step that fails undoes all that was done
// before it. Everything the lab makes is in its folder, in the namespaces named in lab.json there,
// or a process whose pid that folder lists, so that `down` can remove it all even after the lab's
// own process died.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFile, appendFileSync, closeSync, openSync } from 'node:fs';
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import type { GatewayConfig } from '../../contracts/gateway/index.ts';
import type { NodeAgentReport } from '../../dataplane/steering/node-agent.ts';
import { startCluster, freePorts, type Cluster } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { operatorSettings, storedGatewayConfig, webhookObjects } from '../cluster/operator.ts';
import { startOtlpReceiver } from '../cluster/otlp.ts';
import {
  createTopology,
  podGateway,
  podInterface,
  podAddress,
  server,
  stopProcess,
  until,
  type Degradation,
  type Topology,
} from '../e2e/topology.ts';
import { startStreamServer, startWhoami } from '../e2e/traffic.ts';
import { makeTestCa, writeTlsDir } from '../tls.ts';
import { getFlowData, type FlowAccess, type ViewSources } from './view.ts';
import { addNodes, gatewayNodes, nodeNamespaces, workerNodes, workerPodCidr, type Nodes } from './nodes.ts';

const root = join(import.meta.dirname, '..', '..');
const relayProgram = join(root, 'test', 'e2e', 'programs', 'relay.ts');
const manifests = join(import.meta.dirname, 'manifests');

/** The kwok nodes, each with the underlay address of the namespace that stands for it. */
const nodes = [
  ...gatewayNodes.map((node) => ({
    name: node.name,
    labels: { 'naat.dev/gateway': 'true' },
    addresses: [node.address],
  })),
  ...workerNodes.map((node) => ({ name: node.name, addresses: [node.address], podCIDR: workerPodCidr })),
];
const workerNode = workerNodes[0]!.name;
/** The operator's namespace, where it keeps the compiled config `naat-gw-lab` (an index) and its slices. */
const systemNamespace = 'naat-system';
/** The lab's pods on gateway-1, with sidecars (manifests/pods.yaml), in the order of their namespaces pod1, pod2. */
export const pods = [
  { namespace: 'shop', name: 'web' },
  { namespace: 'shop', name: 'reports' },
];
/** The lab's pods on worker-1, without sidecars, in the order of their network namespaces pod3, pod4. */
export const workerPods = [
  { namespace: 'batch', name: 'etl' },
  { namespace: 'batch', name: 'sync' },
];
/**
 * Where the gateway agents listen inside their namespaces: on every address, since the node agent
 * asks each for /steering at its underlay address (the operator's dataplane.healthPort).
 */
const agentListen = { host: '0.0.0.0', port: 7741 };
/**
 * Where the gateway agents serve flow data to the lab (through a relay to the host's loopback):
 * their secure listener, to the lab's flow reader (docs/security.md). The listener on every
 * address serves no flow data.
 */
const agentFlows = { host: '127.0.0.1', port: 7744 };
/** The lab's flow reader: a ServiceAccount bound to a ClusterRole like the chart's. */
const flowReader = { name: 'naat-flow-reader', namespace: systemNamespace };
/** Where the node agent listens inside the worker's namespace (its default). */
const nodeAgentListen = { host: '127.0.0.1', port: 7742 };
const naaPort = 7740;
const ports = { http: 80, whoami: 9000, stream: 9100 };

/**
 * What each simulated ISP does to what it sends towards the gateway. This kernel has no netem:
 * delay is a program that holds packets in a TUN device, loss an nftables rule that drops at
 * random, bandwidth a tbf qdisc (see Topology.degradeUplink).
 */
const impairments: Degradation[] = [
  { delayMs: 10, rateMbit: 100 },
  { delayMs: 40, lossPercent: 1, rateMbit: 20 },
  { delayMs: 80, rateMbit: 5 },
];

/** The sample programs, per pod: a name for the log and what runs in the pod's namespace. */
const applications: Array<Array<{ name: string; argv: string[] }>> = [
  [
    { name: 'web-curl', argv: shellLoop(`curl -s -o /dev/null -m 20 --limit-rate 200k http://${server.v4}/data.bin`) },
    { name: 'web-python3', argv: ['python3', '-c', streamClient(3, 20_000)] },
  ],
  [
    { name: 'reports-python3', argv: ['python3', '-c', streamClient(5, 10_000)] },
    // Denied by manifests/policy.yaml: its attempts show as denials.
    {
      name: 'reports-perl',
      // perl is in every Debian (perl-base); its connect gives up after 3 s while the gateway holds it.
      argv: [
        'perl',
        '-MIO::Socket::INET',
        '-e',
        `while (1) { my $s = IO::Socket::INET->new(PeerAddr => '${server.v4}:${ports.http}', Timeout => 3);
  if ($s) { print $s "GET /data.bin HTTP/1.0\r\n\r\n"; 1 while <$s>; } sleep 2 }`,
      ],
    },
  ],
];

/** The worker pods' programs: short downloads often, so that new flows show where they go within a second. */
const workerApplications: Array<Array<{ name: string; argv: string[] }>> = [
  [{ name: 'etl-curl', argv: shellLoop(`curl -s -o /dev/null -m 5 http://${server.v4}/`, 0.3) }],
  [{ name: 'sync-python3', argv: ['python3', '-c', streamClient(2, 20_000)] }],
];

function shellLoop(command: string, pauseSeconds = 0.5): string[] {
  return ['bash', '-c', `while :; do ${command}; sleep ${pauseSeconds}; done`];
}

/** Downloads `seconds` × `bytesPerSecond` from the stream server, again and again. */
function streamClient(seconds: number, bytesPerSecond: number): string {
  return `import socket, time
while True:
    try:
        s = socket.create_connection(('${server.v4}', ${ports.stream}), timeout=10)
        s.sendall(b'${seconds} ${bytesPerSecond}\\n')
        while s.recv(65536):
            pass
        s.close()
    except OSError:
        time.sleep(1)
    time.sleep(0.5)`;
}

export interface LabSettings {
  /** Holds the control plane's state, logs, tokens, traces and lab.json. */
  dir: string;
  /** Starts the name of every network namespace the lab makes. */
  prefix: string;
  /**
   * The port on the host's loopback where gateway-1's agent API (/status, /metrics, …) is
   * relayed; gateway-2's is the next port, the worker's node agent's the one after, and then each
   * gateway agent's secure listener of flow data, in the same order.
   */
  agentPort: number;
}

/**
 * How many consecutive ports from `agentPort` the lab relays to: each gateway node's agent, the
 * worker's node agent, then each gateway node's secure listener.
 */
export const agentPortCount = 2 * gatewayNodes.length + 1;

export function labSettings(env: NodeJS.ProcessEnv = process.env): LabSettings {
  return {
    dir: env.NAAT_LAB_DIR ?? '/tmp/naat-lab',
    prefix: env.NAAT_LAB_PREFIX ?? 'naat-lab-',
    agentPort: Number(env.NAAT_LAB_AGENT_PORT ?? 7741),
  };
}

/** What lab.json records, for `down` and the scenario commands of another process. */
export interface LabState {
  pid: number;
  prefix: string;
  namespaces: string[];
  /** gateway-1's agent API. */
  agentUrl: string;
  /** Each gateway node's agent API, by node. */
  agents: Record<string, string>;
  /** Each gateway node's secure listener of flow data (/flows, /attribution), by node. */
  flowAgents: Record<string, string>;
  /** The CA and token files with which to read them. */
  flowAccess: FlowAccess;
  /** The worker's node agent API. */
  nodeAgentUrl: string;
  kubeconfig: string;
}

export const stateFile = (dir: string) => join(dir, 'lab.json');

/** What the live view reads, for a lab described by its state. */
export function viewSources(lab: LabState, podNodes: Map<string, string>): ViewSources {
  return {
    gateways: Object.entries(lab.agents).map(([node, url]) => ({ node, url, flowUrl: lab.flowAgents[node]! })),
    flowAccess: lab.flowAccess,
    nodeAgent: { node: workerNode, url: lab.nodeAgentUrl },
    podNodes,
  };
}

export function namespaceNames(prefix: string) {
  const names = {
    pods: pods.map((_, i) => `${prefix}pod${i + 1}`),
    gw: `${prefix}gw`,
    isps: impairments.map((_, i) => `${prefix}isp${i + 1}`),
    srv: `${prefix}srv`,
  };
  const added = nodeNamespaces(prefix);
  /** Every namespace of the lab. */
  const all = [
    ...names.pods,
    names.gw,
    ...names.isps,
    names.srv,
    added.underlay,
    added.gw2,
    added.worker,
    ...added.pods,
  ];
  return { ...names, all };
}

export interface Lab {
  state: LabState;
  /** The lab's pods by their addresses. */
  pods: Map<string, { namespace: string; name: string }>;
  /** The node each pod (`namespace/name`) runs on. */
  podNodes: Map<string, string>;
  /** JSON lines of the spans and log records that the operator and the agent export. */
  traces: string;
  topology: Topology;
  nodes: Nodes;
  cluster: Cluster;
  /** Stops and removes everything the lab made, the latest first; safe to call twice. */
  stop(): Promise<void>;
}

export interface StartOptions {
  /** A line per step done, with how long it took. */
  progress: (line: string) => void;
  /** Once aborted, the next step fails and everything is rolled back. */
  signal?: AbortSignal;
}

export async function startLab(settings: LabSettings, options: StartOptions): Promise<Lab> {
  const { dir, prefix, agentPort } = settings;
  const undo: Array<() => Promise<unknown>> = [];
  let stopping = false;
  const stop = async () => {
    stopping = true;
    for (const step of undo.splice(0).reverse()) await step().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  };
  // A process the lab started that exits while the lab starts fails the step at once, with its log.
  let starting = true;
  let died!: (error: Error) => void;
  const death = new Promise<never>((_, reject) => (died = reject));
  death.catch(() => undefined);
  const step = async <T>(what: string, run: () => Promise<T>): Promise<T> => {
    if (options.signal?.aborted) throw new Error('Interrupted');
    const started = performance.now();
    try {
      const result = await Promise.race([run(), death]);
      options.progress(`${what} (${((performance.now() - started) / 1000).toFixed(1)}s)`);
      return result;
    } catch (error) {
      throw new Error(`${what}: failed: ${(error as Error).message}`, { cause: error });
    }
  };
  const log = (name: string) => join(dir, 'logs', `${name}.log`);
  const logged = (name: string) => readFile(log(name), 'utf8').catch(() => '');
  const untilLogged = (name: string, text: string, times = 1, timeoutMs = 30_000) =>
    until(
      `"${text}" in ${log(name)}`,
      async () => ((await logged(name)).split(text).length > times ? true : undefined),
      timeoutMs,
    ).catch(async (error: Error) => {
      throw new Error(`${error.message}; it ends:\n${tail(await logged(name))}`);
    });

  if (await exists(stateFile(dir))) {
    throw new Error(`A lab is already running (${stateFile(dir)}); stop it with: npm run lab -- down`);
  }
  await mkdir(join(dir, 'logs'), { recursive: true });
  undo.push(() => rm(dir, { recursive: true, force: true }));
  const names = namespaceNames(prefix);
  const agentPorts = Object.fromEntries(gatewayNodes.map((node, i) => [node.name, agentPort + i]));
  /** Each node agent's --tls-dir. */
  const tlsDir = (node: string) => join(dir, 'tls', node);
  const state: LabState = {
    pid: process.pid,
    prefix,
    namespaces: names.all,
    agentUrl: `http://127.0.0.1:${agentPort}`,
    agents: Object.fromEntries(gatewayNodes.map((node) => [node.name, `http://127.0.0.1:${agentPorts[node.name]}`])),
    nodeAgentUrl: `http://127.0.0.1:${agentPort + gatewayNodes.length}`,
    flowAgents: Object.fromEntries(
      gatewayNodes.map((node, i) => [node.name, `https://127.0.0.1:${agentPort + gatewayNodes.length + 1 + i}`]),
    ),
    flowAccess: { ca: join(dir, 'tls', 'ca.crt'), token: join(dir, 'flow-reader.token') },
    kubeconfig: join(dir, 'kubeconfig'),
  };
  // Written before anything is made, so that `down` finds it whatever happens next.
  await writeFile(stateFile(dir), JSON.stringify(state, null, 2));
  let topology: Topology | undefined;

  /**
   * Runs a program with its output in logs/<name>.log: in a namespace (the topology's destroy()
   * ends it), or on the host, with its pid in the folder's pids file so that `down` finds it.
   */
  const start = (ns: string | undefined, name: string, argv: string[], env: NodeJS.ProcessEnv = {}): ChildProcess => {
    const fd = openSync(log(name), 'a');
    const spawnOptions = { stdio: ['ignore', fd, fd] as ['ignore', number, number], env: { ...process.env, ...env } };
    const child = ns ? topology!.spawn(ns, argv, spawnOptions) : spawn(argv[0]!, argv.slice(1), spawnOptions);
    closeSync(fd);
    child.once('exit', (code, signal) => {
      if (!starting) return;
      void logged(name).then((text) =>
        died(new Error(`${name} exited (${code ?? signal}); ${log(name)} ends:\n${tail(text)}`)),
      );
    });
    if (!ns) {
      appendFileSync(join(dir, 'pids'), `${child.pid}\n`);
      undo.push(() => stopProcess(child));
    }
    return child;
  };
  /**
   * A TCP service of the host made reachable in the node namespaces `to`, or of a node namespace
   * (`from`) on the host, at 127.0.0.1:`localPort` there, via a Unix socket.
   */
  const relay = async (
    name: string,
    way: { from: string } | { to: string[] },
    target: string,
    port: number,
    localPort = port,
  ) => {
    const socket = join(dir, `${name}.sock`);
    const serving = 'from' in way ? way.from : undefined;
    const listening = 'to' in way ? way.to : [undefined];
    start(serving, `relay-${name}-in`, [process.execPath, relayProgram, 'from-unix', socket, target, String(port)]);
    await untilLogged(`relay-${name}-in`, 'listening');
    await Promise.all(
      listening.map((ns, i) => {
        const out = `relay-${name}-out${listening.length > 1 ? `-${i + 1}` : ''}`;
        start(ns, out, [process.execPath, relayProgram, 'to-unix', '127.0.0.1', String(localPort), socket]);
        return untilLogged(out, 'listening');
      }),
    );
  };
  /** A gateway agent's /flows, from its secure listener at `url`, as the lab's flow reader. */
  const flowData = async (url: string) =>
    JSON.parse(await getFlowData(state.flowAccess, `${url}/flows`)) as AttributedFlow[];
  const agent = async <T>(path: string, url = state.agentUrl): Promise<T> => {
    const response = await fetch(`${url}${path}`);
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return (await response.json()) as T;
  };

  try {
    await step('Checked that this is root with nft, tc, ip, conntrack, kubectl, curl, perl and python3', async () => {
      if (process.getuid?.() !== 0) throw new Error('the lab needs root (network namespaces, nftables)');
      const missing = [];
      for (const tool of ['nft', 'tc', 'ip', 'conntrack', 'kubectl', 'curl', 'perl', 'python3', 'openssl']) {
        if (!(await onPath(tool))) missing.push(tool);
      }
      if (missing.length) throw new Error(`not on the PATH: ${missing.join(', ')} (see README, Prerequisites)`);
    });

    const cluster = await startCluster({ workloads: true, nodes, dir, progress: options.progress });
    undo.push(() => cluster.stop());
    const k = (args: string[], input?: string) => cluster.kubectl(args, input);
    /** Waits until the operator compiled a config that passes `check` and the agent applied it. */
    const untilApplied = (what: string, check: (config: GatewayConfig) => boolean) =>
      until(`${what} in the config the agent applied`, async () => {
        const config = await storedGatewayConfig(k, systemNamespace, 'lab');
        if (!config) return undefined;
        const status = await agent<AgentReport>('/status');
        return check(config) && status.appliedHash === config.hash ? true : undefined;
      });
    await step('Installed the CRDs from crds/', () => installCrds(cluster.kubeconfig));

    const traces = join(dir, 'traces.jsonl');
    const otlp = await step('Started an OTLP receiver writing to traces.jsonl', async () => {
      const receiver = await startOtlpReceiver();
      // The receiver keeps what it got; moving it to the file each second keeps the lab's memory flat.
      const flush = setInterval(() => {
        const lines = [
          ...receiver.spans.splice(0).map((span) => JSON.stringify({ signal: 'span', ...span })),
          ...receiver.logs.splice(0).map((record) => JSON.stringify({ signal: 'log', ...record })),
        ];
        if (lines.length) appendFile(traces, lines.join('\n') + '\n', () => {});
      }, 1000);
      undo.push(async () => {
        clearInterval(flush);
        await receiver.close();
      });
      return receiver;
    });
    const otel = {
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_METRICS_EXPORTER: 'none',
    };

    topology = await step(`Built the network namespaces ${prefix}{gw,pod1,pod2,isp1..3,srv}`, () =>
      createTopology({ pods: pods.length, uplinks: impairments.length, prefix }),
    );
    undo.push(() => topology!.destroy());
    const t = topology;
    const added = await step(
      `Built gateway-2 (${prefix}gw2), worker-1 (${prefix}w1) with ${prefix}pod3 and ${prefix}pod4, and the underlay ${prefix}ul`,
      () => addNodes(t),
    );
    undo.push(() => added.destroy());
    const gatewayNamespaces = gatewayNodes.map((node) => added.namespaceOf[node.name]!);
    await step('Impaired the ISPs: isp1 10 ms 100 Mbit/s, isp2 40 ms 1% loss 20 Mbit/s, isp3 80 ms 5 Mbit/s', () =>
      Promise.all(impairments.map((impairment, i) => t.degradeUplink(i + 1, impairment))),
    );
    await step(`Started the servers on ${server.v4}: HTTP :80, whoami :9000, stream :9100`, async () => {
      await mkdir(join(dir, 'www'));
      await writeFile(join(dir, 'www', 'data.bin'), Buffer.alloc(1_000_000, 'n'));
      await writeFile(join(dir, 'www', 'index.html'), 'naat lab\n');
      start(t.ns.srv, 'http-server', [
        'python3',
        '-m',
        'http.server',
        String(ports.http),
        '--bind',
        server.v4,
        '--directory',
        join(dir, 'www'),
      ]);
      await startWhoami(t, ports.whoami);
      await startStreamServer(t, ports.stream);
      await until('the HTTP server', async () => {
        await t.exec(t.ns.srv, ['curl', '-sf', '-o', '/dev/null', `http://${server.v4}/`]);
        return true;
      });
    });

    const apiserver = new URL(cluster.server);
    await step('Relayed the apiserver and the OTLP receiver into the node namespaces', async () => {
      const to = [...gatewayNamespaces, added.ns.worker];
      await relay('apiserver', { to }, apiserver.hostname, Number(apiserver.port));
      await relay('otlp', { to: gatewayNamespaces }, '127.0.0.1', Number(new URL(otlp.endpoint).port));
    });

    await step('Started the operator', async () => {
      const [metrics, health, webhook] = await freePorts(3);
      await k(['create', 'namespace', systemNamespace]);
      for (const object of webhookObjects('naat', systemNamespace)) {
        await k(['apply', '--server-side', '-f', '-'], JSON.stringify(object));
      }
      const settingsFile = join(dir, 'operator.json');
      await writeFile(
        settingsFile,
        JSON.stringify(
          operatorSettings(
            'naat',
            { metrics: metrics!, health: health!, webhook: webhook! },
            {
              dataplane: {
                image: 'naat-dataplane:test',
                clusterRoleName: 'naat-dataplane',
                healthPort: agentListen.port,
              },
            },
          ),
        ),
      );
      const launch = (): void => {
        const operator = start(undefined, 'operator', [process.execPath, join(root, 'operator', 'main.ts')], {
          KUBECONFIG: cluster.kubeconfig,
          NAAT_CONFIG: settingsFile,
          NAAT_NAMESPACE: systemNamespace,
          NAAT_POD_NAME: 'naat-operator-lab',
          ...otel,
        });
        // Restarted as the kubelet restarts its Deployment's pod: a replica that loses its Lease
        // (the apiserver went away for longer than the lease) exits on purpose.
        operator.once('exit', () => {
          if (!starting && !stopping) setTimeout(() => !stopping && launch(), 1000);
        });
      };
      launch();
      await until(
        'the operator ready (GET /readyz)',
        async () => ((await fetch(`http://127.0.0.1:${health}/readyz`)).ok ? true : undefined),
        60_000,
      );
    });

    await step(
      "Made the gateway agents' certificate and a flow reader's token (ClusterRole naat-flow-reader)",
      async () => {
        // Each node's certificate from the lab's CA, as the operator's signer would make it in a
        // cluster, also naming the addresses the lab dials the node at: loopback through the
        // relays, and the pod network's gateway addresses where the pods' sidecars reach it.
        const ca = makeTestCa('naat-lab-agents');
        for (const node of gatewayNodes) {
          const podGateways =
            node === gatewayNodes[0] ? pods.flatMap((_, i) => [podGateway(i + 1).v4, podGateway(i + 1).v6]) : [];
          writeTlsDir(tlsDir(node.name), ca, node.name, [node.address, '127.0.0.1', ...podGateways]);
        }
        for (const node of workerNodes) writeTlsDir(tlsDir(node.name), ca, node.name, [node.address]);
        await writeFile(state.flowAccess.ca, ca.cert);
        const { name, namespace } = flowReader;
        await k(
          ['apply', '-f', '-'],
          JSON.stringify({
            apiVersion: 'v1',
            kind: 'List',
            items: [
              { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace } },
              {
                apiVersion: 'rbac.authorization.k8s.io/v1',
                kind: 'ClusterRole',
                metadata: { name },
                rules: [{ apiGroups: ['naat.dev'], resources: ['egressgateways/flows'], verbs: ['get'] }],
              },
              {
                apiVersion: 'rbac.authorization.k8s.io/v1',
                kind: 'ClusterRoleBinding',
                metadata: { name },
                roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name },
                subjects: [{ kind: 'ServiceAccount', name, namespace }],
              },
            ],
          }),
        );
        const token = await k(['create', 'token', name, '-n', namespace, '--audience', 'naat-flows', '--duration=24h']);
        await writeFile(state.flowAccess.token, token.trim(), { mode: 0o600 });
      },
    );

    await step('Applied manifests/gateway.yaml; the operator compiled ConfigMap naat-gw-lab', async () => {
      await k(['apply', '-f', join(manifests, 'gateway.yaml')]);
      await until('the compiled config', async () => {
        await k(['get', 'configmap', 'naat-gw-lab', '-n', systemNamespace]);
        return true;
      });
    });

    await step(`Started the gateway agents in ${gatewayNamespaces.join(' and ')}, following naat-gw-lab`, async () => {
      await Promise.all(
        gatewayNodes.map(async (node, i) => {
          // gateway-1's log keeps the name it always had.
          const name = i === 0 ? 'agent' : `agent-${node.name}`;
          start(
            gatewayNamespaces[i],
            name,
            [
              process.execPath,
              join(root, 'dataplane', 'main.ts'),
              'run',
              '--config-map',
              `${systemNamespace}/naat-gw-lab`,
              '--node',
              node.name,
              '--state-dir',
              join(dir, `state-${node.name}`),
              '--listen',
              `${agentListen.host}:${agentListen.port}`,
              '--secure-listen',
              `${agentFlows.host}:${agentFlows.port}`,
              '--tls-dir',
              tlsDir(node.name),
              '--report',
            ],
            { KUBECONFIG: cluster.kubeconfig, ...otel },
          );
          await relay(name, { from: gatewayNamespaces[i]! }, '127.0.0.1', agentListen.port, agentPorts[node.name]);
          const flowPort = Number(new URL(state.flowAgents[node.name]!).port);
          await relay(`${name}-flows`, { from: gatewayNamespaces[i]! }, agentFlows.host, agentFlows.port, flowPort);
          await until(
            `${node.name}'s agent to apply its config`,
            async () => ((await agent<AgentReport>('/status', state.agents[node.name])).appliedHash ? true : undefined),
            60_000,
          ).catch(async (error: Error) => {
            throw new Error(`${error.message}; ${log(name)} ends:\n${tail(await logged(name))}`);
          });
        }),
      );
    });

    const { created, onWorker } = await step(
      'Applied manifests/pods.yaml; the webhook injected the NAA sidecar in shop',
      async () => {
        await k(['apply', '-f', join(manifests, 'pods.yaml')]);
        const onWorker = await until('the worker pods with addresses', async () => {
          const found = [];
          for (const pod of workerPods) {
            const object = JSON.parse(await k(['get', 'pod', pod.name, '-n', pod.namespace, '-o', 'json'])) as KubePod;
            if (!object.status?.podIP) return undefined;
            found.push({ ...pod, ip: object.status.podIP });
          }
          return found;
        });
        const created = await until('the pods with sidecars and addresses', async () => {
          const found = [];
          for (const pod of pods) {
            const object = JSON.parse(await k(['get', 'pod', pod.name, '-n', pod.namespace, '-o', 'json'])) as KubePod;
            if (!object.spec.initContainers?.some((c) => c.name === 'naat-sidecar')) {
              // The webhook admits a pod it cannot decide on yet (its caches may not hold the
              // namespace created a moment before) unchanged: such a pod is made again.
              await k(['delete', 'pod', pod.name, '-n', pod.namespace, '--grace-period=0', '--force', '--wait']);
              await k(['apply', '-f', join(manifests, 'pods.yaml')]);
              return undefined;
            }
            if (!object.status?.podIP) return undefined;
            found.push({ ...pod, uid: object.metadata.uid, ip: object.status.podIP });
          }
          return found;
        });
        return { created, onWorker };
      },
    );

    await step('Gave each pod namespace its pod address; the agent applied the pods', async () => {
      for (const [i, pod] of created.entries()) {
        const n = i + 1;
        const ns = t.ns.pods[i]!;
        // The pod namespace takes the address the API gave the pod, as its only address: the agent
        // accepts associations only for the pod's own addresses.
        await t.exec(ns, ['ip', 'address', 'add', `${pod.ip}/32`, 'dev', 'eth0']);
        await t.exec(ns, ['ip', 'address', 'del', `${podAddress(n).v4}/24`, 'dev', 'eth0']);
        await t.exec(ns, ['ip', 'address', 'del', `${podAddress(n).v6}/64`, 'dev', 'eth0']);
        await t.exec(ns, ['ip', 'route', 'replace', 'default', 'via', podGateway(n).v4, 'dev', 'eth0', 'onlink']);
        await t.exec(t.ns.gw, ['ip', 'route', 'add', `${pod.ip}/32`, 'dev', podInterface(n)]);
      }
      await untilApplied('the pods with their sidecars', (config) =>
        created.every((pod) => config.association?.sidecarSources.includes(pod.ip)),
      );
    });

    await step('Applied manifests/policy.yaml (perl may not connect from the reports pod)', async () => {
      await k(['apply', '-f', join(manifests, 'policy.yaml')]);
      await untilApplied('the policy', (config) => config.rules.some((rule) => rule.policy === 'shop/no-perl'));
    });

    await step('Started the NAA sidecars; the agent accepted their streams', async () => {
      await mkdir(join(dir, 'tokens'));
      for (const [i, pod] of created.entries()) {
        const token = await k(
          ['create', 'token', 'default', '-n', pod.namespace, '--audience', 'naat', '--duration', '24h'].concat([
            '--bound-object-kind',
            'Pod',
            '--bound-object-name',
            pod.name,
            '--bound-object-uid',
            pod.uid,
          ]),
        );
        const tokenFile = join(dir, 'tokens', pod.name);
        await writeFile(tokenFile, token.trim(), { mode: 0o600 });
        start(t.ns.pods[i], `sidecar-${pod.name}`, [process.execPath, join(root, 'sidecar', 'main.ts')], {
          NAAT_NAA_SERVER: `${podGateway(i + 1).v4}:${naaPort}`,
          NAAT_POD_NAMESPACE: pod.namespace,
          NAAT_POD_NAME: pod.name,
          NAAT_POD_UID: pod.uid,
          NAAT_TOKEN_FILE: tokenFile,
          NAAT_NAA_CA: await readFile(state.flowAccess.ca, 'utf8'),
        });
      }
      await untilLogged('agent', 'Accepted NAA stream', created.length);
    });

    await step('Started the sample programs: curl and python3 in web, python3 and perl in reports', async () => {
      for (const [i, programs] of applications.entries()) {
        for (const program of programs) start(t.ns.pods[i], program.name, program.argv);
      }
      await until('a flow attributed to its application', async () =>
        (await flowData(state.flowAgents[gatewayNodes[0]!.name]!)).some((f) => f.application) ? true : undefined,
      );
    });

    await step(
      `Gave each worker pod namespace its pod address; the operator wrote naat-node-${workerNode}`,
      async () => {
        for (const [i, pod] of onWorker.entries()) await added.addressWorkerPod(i, pod.ip);
        await until(`ConfigMap naat-node-${workerNode}`, async () => {
          await k(['get', 'configmap', `naat-node-${workerNode}`, '-n', systemNamespace]);
          return true;
        });
        await untilApplied(
          'the worker pods and the steering',
          (config) =>
            Boolean(config.steering) && onWorker.every((pod) => config.pods.some((p) => p.addresses.includes(pod.ip))),
        );
      },
    );

    await step(`Started the node agent in ${added.ns.worker}, following naat-node-${workerNode}`, async () => {
      start(
        added.ns.worker,
        'node-agent',
        [
          process.execPath,
          join(root, 'dataplane', 'main.ts'),
          'node',
          '--config-map',
          `${systemNamespace}/naat-node-${workerNode}`,
          '--node',
          workerNode,
          '--state-dir',
          join(dir, `state-${workerNode}`),
          '--listen',
          `${nodeAgentListen.host}:${nodeAgentListen.port}`,
          '--tls-dir',
          tlsDir(workerNode),
          '--report',
        ],
        { KUBECONFIG: cluster.kubeconfig },
      );
      await relay(
        'node-agent',
        { from: added.ns.worker },
        nodeAgentListen.host,
        nodeAgentListen.port,
        agentPort + gatewayNodes.length,
      );
      await until(
        'the node agent to see every gateway node up',
        async () => {
          const report = await agent<NodeAgentReport>('/status', state.nodeAgentUrl);
          const up = report.peers.filter((peer) => peer.up).length;
          return report.appliedHash && up === gatewayNodes.length ? true : undefined;
        },
        30_000,
      ).catch(async (error: Error) => {
        throw new Error(`${error.message}; ${log('node-agent')} ends:\n${tail(await logged('node-agent'))}`);
      });
    });

    await step(
      "Started the worker pods' programs: curl in etl, python3 in sync; their flows reach a gateway node",
      async () => {
        for (const [i, programs] of workerApplications.entries()) {
          for (const program of programs) start(added.ns.pods[i], program.name, program.argv);
        }
        await until("a worker pod's flow at a gateway node", async () => {
          for (const url of Object.values(state.flowAgents)) {
            const flows = await flowData(url);
            if (flows.some((f) => onWorker.some((pod) => pod.ip === f.source))) return true;
          }
          return undefined;
        });
      },
    );

    starting = false;
    const everyPod = [...created, ...onWorker];
    const byAddress = new Map(everyPod.map((pod) => [pod.ip, { namespace: pod.namespace, name: pod.name }]));
    const podNodes = new Map([
      ...created.map((pod) => [`${pod.namespace}/${pod.name}`, gatewayNodes[0]!.name] as const),
      ...onWorker.map((pod) => [`${pod.namespace}/${pod.name}`, workerNode] as const),
    ]);
    return { state, pods: byAddress, podNodes, nodes: added, traces, topology: t, cluster, stop };
  } catch (error) {
    options.progress(`Rolling back: ${(error as Error).message}`);
    await stop();
    throw error;
  }
}

/**
 * Removes what a lab made when its own process cannot: stops that process (which cleans up after
 * itself), then ends whatever it left running and deletes its namespaces and its folder.
 */
export async function removeLab({ dir, prefix }: LabSettings): Promise<void> {
  const state = await readFile(stateFile(dir), 'utf8')
    .then((text) => JSON.parse(text) as LabState)
    .catch(() => undefined);
  if (state && state.pid !== process.pid && isAlive(state.pid)) {
    process.kill(state.pid, 'SIGTERM');
    await until('the lab to stop', async () => (isAlive(state.pid) ? undefined : true), 60_000).catch(() =>
      process.kill(state.pid, 'SIGKILL'),
    );
  }
  const pids = await readFile(join(dir, 'pids'), 'utf8').catch(() => '');
  for (const pid of pids.split('\n').filter(Boolean).map(Number)) killQuietly(pid);
  for (const ns of state?.namespaces ?? namespaceNames(prefix).all) await deleteNamespace(ns);
  await rm(dir, { recursive: true, force: true });
}

async function deleteNamespace(name: string): Promise<void> {
  const run = (argv: string[]) =>
    new Promise<string>((resolve) => {
      const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'ignore'] });
      let out = '';
      child.stdout.on('data', (chunk) => (out += chunk));
      child.on('close', () => resolve(out));
      child.on('error', () => resolve(''));
    });
  // A namespace lives on while a process is in it; every process in the lab's namespaces is the lab's.
  for (const pid of (await run(['ip', 'netns', 'pids', name])).split('\n').filter(Boolean)) killQuietly(Number(pid));
  await run(['ip', 'netns', 'delete', name]);
}

const tail = (text: string) => text.trimEnd().split('\n').slice(-8).join('\n');

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Gone already.
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

async function onPath(tool: string): Promise<boolean> {
  for (const folder of (process.env.PATH ?? '').split(':')) {
    if (await exists(join(folder, tool))) return true;
  }
  return false;
}

interface KubePod {
  metadata: { uid: string };
  spec: { initContainers?: Array<{ name: string }> };
  status?: { podIP?: string };
}
