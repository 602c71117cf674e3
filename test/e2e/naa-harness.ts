// The gateway that application-aware egress (NAA) goes through, as the end-to-end test and the
// benchmark run it: a Pod with a bound `naat` token in a real control plane; the e2e topology,
// whose pod namespace stands for that Pod; the dataplane agent in the gateway namespace with an
// `association` block in its config; and the real sidecar in the pod namespace. Its files live in
// a work folder of its own; stop() removes everything it made, also after a start that failed.
// With `relayedFrom`, the Pod runs on a worker node and its sidecar's stream comes through a node
// agent's NAA relay (dataplane/naa/relay.ts) from that node's address, as on a node that is not
// one of the gateway's. As in a cluster, the agent (and the relay) hold their node's --tls-dir from
// a CA of the harness's own, and the sidecar verifies its agent with that CA; `plaintext` runs
// the links without TLS instead, for a benchmark's baseline. With `nodeDriven`, the Pod has the Node
// driver on the gateway node: no sidecar, the agent itself drives it.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { URL } from 'node:url';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import type { KeyPair } from '../../operator/certificates.ts';
import { driverAnnotation } from '../../contracts/index.ts';
import { kubectl } from '../cluster/cluster.ts';
import { makeTestCa, writeTlsDir } from '../tls.ts';
import {
  apiserverOf,
  buildStampLibrary,
  createBoundPod,
  relayIntoNamespace,
  sidecarEnv,
  sidecarMain,
  strictCounters,
} from './naa-pod.ts';
import {
  createTopology,
  podAddress,
  podGateway,
  server,
  stopProcess,
  until,
  uplinkAddress,
  uplinkNextHop,
  type Topology,
} from './topology.ts';
import { LoggedProcesses } from './logged-processes.ts';

const root = join(import.meta.dirname, '..', '..');
const programs = join(import.meta.dirname, 'programs');
const naaPort = 7740;
/** Where the relay listens for the sidecar, in the gateway namespace beside the agent. */
const relayPort = 7750;
/**
 * The address the relay's streams come from (it dials the agent at the gateway namespace's
 * loopback), which the Pod reports as its node's: the agent takes the Pod only from there.
 */
const relayNodeAddress = '127.0.0.1';

export interface NaaGatewayOptions {
  /** The control plane that holds the Pod and that the agent checks sidecars' tokens with. */
  kubeconfig: string;
  /** A namespace to create for the Pod; stop() deletes it. */
  namespace: string;
  /** The node the agent runs as, and the Pod is scheduled on unless `relayedFrom` names another. */
  node: string;
  /**
   * A worker node for the Pod: its sidecar dials a node agent's relay, which carries its stream to
   * the agent from the address the Pod reports for its node.
   */
  relayedFrom?: string;
  uplinks: number;
  unassociatedFlows: 'Hold' | 'PodRules';
  /** Strict mode for the Pod: its packets' DSCP stamps classify its flows (docs/naa.md). */
  strict?: boolean;
  /** The gateway config's rules, for the Pod's address. */
  rules: (podIp: string) => object[];
  /** The gateway config's timeouts; the API's defaults without them. */
  timeouts?: object;
  /** More environment for the agent, e.g. OTEL_* variables. */
  agentEnv?: NodeJS.ProcessEnv;
  /** More arguments of `dataplane run`, e.g. retention limits. */
  agentArgs?: string[];
  /** Servers on the host's loopback (http://127.0.0.1:PORT) that the agent reaches at the same address. */
  hostServices?: string[];
  /** The links without TLS (the agent without --tls-dir, the sidecar without the CA). */
  plaintext?: boolean;
  /**
   * The Pod has the Node driver, with these containers (runtime id and name): annotated as the
   * webhook annotates it, and listed with its uid and containers in the gateway config, as the
   * operator lists a node-driven pod of a gateway node; the agent runs with --associate-pods and
   * drives it. The test starts no sidecar then.
   */
  nodeDriven?: Array<{ id: string; name: string }>;
}

export interface SidecarOptions {
  /** Its log file, in the work folder. */
  log: string;
  /** NAAT_SCAN_INTERVAL_MS; the sidecar's default without it. */
  scanIntervalMs?: number;
  /** Another pod that the sidecar claims to be, with the Pod's token. */
  claim?: { name: string; uid: string };
  /** More environment for the sidecar, e.g. OTEL_* variables. */
  env?: NodeJS.ProcessEnv;
}

export class NaaGateway {
  readonly options: NaaGatewayOptions;
  /** The work folder: the token, the gateway config, the agent's state and the logs. */
  dir = '';
  topology!: Topology;
  /** The Pod, and the network namespace that stands for it. */
  pod!: { uid: string; ip: string; netns: string };
  agent!: ChildProcess;
  /** The node agent's relay, when the Pod runs on a worker node. */
  #nodeRelay: ChildProcess | undefined;
  /** Whether the agent and the sidecars started next run their links without TLS. */
  plaintext: boolean;
  /** The CA of the nodes' certificates, which the sidecar verifies its agent with. */
  readonly ca: KeyPair = makeTestCa();
  /** What stop() undoes, in the order it was done. */
  readonly #made: Array<() => Promise<unknown>> = [];
  #processes = new LoggedProcesses();

  constructor(options: NaaGatewayOptions) {
    this.options = options;
    this.plaintext = options.plaintext ?? false;
  }

  /** A node's --tls-dir: the gateway node's names the sidecar and the relay dial (podGateway, loopback). */
  tlsDir(node: string): string {
    const dir = join(this.dir, `tls-${node}`);
    if (!existsSync(dir)) writeTlsDir(dir, this.ca, node, [podGateway(1).v4, relayNodeAddress]);
    return dir;
  }

  /** Makes everything and starts the agent; resolves once its NAA server listens. */
  async start(): Promise<void> {
    const { kubeconfig, namespace, node } = this.options;
    const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
    this.dir = await mkdtemp(join(tmpdir(), 'naat-naa-gw-'));
    this.#made.push(() => rm(this.dir, { recursive: true, force: true }));

    await k(['create', 'namespace', namespace]);
    this.#made.push(() => k(['delete', 'namespace', namespace, '--wait=false']));
    await k(['create', 'serviceaccount', 'app', '-n', namespace]);
    // With `relayedFrom`, the Pod reports the relay's address as its node's.
    const pod = await createBoundPod(
      kubeconfig,
      namespace,
      'app',
      this.options.relayedFrom ?? node,
      this.options.relayedFrom ? { podIPs: [], hostIPs: [relayNodeAddress] } : undefined,
    );
    await writeFile(join(this.dir, 'token'), pod.token);
    const containers = this.options.nodeDriven;
    if (containers) await k(['annotate', 'pod', 'app', '-n', namespace, `${driverAnnotation}=Node`]);

    const t = await createTopology({ pods: 1, uplinks: this.options.uplinks });
    this.#made.push(() => t.destroy());
    this.topology = t;
    this.#processes = new LoggedProcesses({
      dir: this.dir,
      spawnIn: (ns, argv, options) => t.spawn(ns, argv, options),
    });
    this.#made.push(() => this.#processes.stopAll());
    this.pod = { uid: pod.uid, ip: pod.ip, netns: t.ns.pods[0]! };
    // The pod namespace takes the address the apiserver gave the pod, as its only IPv4 address: the
    // gateway accepts associations for the pod's own addresses and refuses a stream that reports
    // any other.
    await t.exec(this.pod.netns, ['ip', 'addr', 'add', `${pod.ip}/32`, 'dev', 'eth0']);
    await t.exec(this.pod.netns, ['ip', 'addr', 'del', `${podAddress(1).v4}/24`, 'dev', 'eth0']);
    await t.exec(this.pod.netns, [
      'ip',
      'route',
      'replace',
      'default',
      'via',
      podGateway(1).v4,
      'dev',
      'eth0',
      'onlink',
    ]);
    await t.exec(t.ns.gw, ['ip', 'route', 'add', `${pod.ip}/32`, 'dev', 'pod1']);

    await this.#relayIntoGateway('apiserver', await apiserverOf(kubeconfig));
    for (const [i, service] of (this.options.hostServices ?? []).entries()) {
      await this.#relayIntoGateway(`service${i}`, service);
    }

    const uplink = (n: number) => ({
      name: `isp${n}`,
      interface: `up${n}`,
      nextHop: { ipv4: uplinkNextHop(n).v4 },
      snat: { addresses: [uplinkAddress(n).v4] },
    });
    const config = {
      version: 1,
      gateway: 'naa',
      hash: 'naa-1',
      sources: [pod.ip],
      uplinks: Array.from({ length: this.options.uplinks }, (_, i) => uplink(i + 1)),
      pods: [
        {
          namespace,
          name: 'app',
          addresses: [pod.ip],
          ...(containers && {
            node,
            association: { uid: pod.uid, containers, ...(this.options.strict ? { strict: true } : {}) },
          }),
        },
      ],
      balancing: {},
      timeouts: this.options.timeouts ?? {},
      association: {
        port: naaPort,
        unassociatedFlows: this.options.unassociatedFlows,
        sidecarSources: [pod.ip],
        strictSources: this.options.strict ? [pod.ip] : [],
      },
      rules: this.options.rules(pod.ip),
    };
    await writeFile(join(this.dir, 'gateway.json'), JSON.stringify(config));
    await this.startAgent();
  }

  /**
   * Starts the agent (start() does; again once it was stopped); resolves once it applied its config
   * and its NAA server listens.
   */
  async startAgent(): Promise<void> {
    const listening = await this.#occurrences('agent.log', 'Listening for NAA streams');
    const { node, kubeconfig } = this.options;
    const config = join(this.dir, 'gateway.json');
    const argv = [
      'run',
      '--config',
      config,
      '--node',
      node,
      '--state-dir',
      join(this.dir, 'state'),
      ...(this.plaintext ? [] : ['--tls-dir', this.tlsDir(node)]),
      ...(this.options.nodeDriven ? ['--associate-pods'] : []),
      ...(this.options.agentArgs ?? []),
    ];
    this.agent = this.#processes.spawn(
      this.topology.ns.gw,
      [process.execPath, join(root, 'dataplane', 'main.ts'), ...argv],
      'agent.log',
      { KUBECONFIG: kubeconfig, ...this.options.agentEnv },
    );
    await until('the agent', async () =>
      (await this.agentGet<AgentReport>('/status')).appliedHash ? true : undefined,
    );
    await until('the NAA server', async () =>
      (await this.#occurrences('agent.log', 'Listening for NAA streams')) > listening ? true : undefined,
    );
    if (this.options.relayedFrom && !this.#nodeRelay) {
      this.#nodeRelay = this.#processes.spawn(
        this.topology.ns.gw,
        [
          process.execPath,
          join(programs, 'naa-relay.ts'),
          `${podGateway(1).v4}:${relayPort}`,
          `${relayNodeAddress}:${naaPort}`,
          ...(this.plaintext ? [] : [this.tlsDir(this.options.relayedFrom)]),
        ],
        'relay.log',
      );
      await until('the NAA relay', async () =>
        (await this.log('relay.log')).includes('listening') ? true : undefined,
      );
    }
  }

  /** Starts a sidecar in the pod namespace, without waiting for it to connect. */
  spawnSidecar(options: SidecarOptions): ChildProcess {
    const pod = options.claim ?? { name: 'app', uid: this.pod.uid };
    return this.#processes.spawn(this.pod.netns, [process.execPath, sidecarMain], options.log, {
      ...sidecarEnv({
        host: podGateway(1).v4,
        port: this.options.relayedFrom ? relayPort : naaPort,
        namespace: this.options.namespace,
        pod,
        tokenFile: join(this.dir, 'token'),
        ...(options.scanIntervalMs ? { scanIntervalMs: options.scanIntervalMs } : {}),
      }),
      ...(this.plaintext ? {} : { NAAT_NAA_CA: this.ca.cert }),
      ...options.env,
    });
  }

  /** Stops the agent and starts it again (with `plaintext` as it is now); resolves once its NAA server listens. */
  async restartAgent(): Promise<void> {
    await stopProcess(this.agent);
    await this.startAgent();
  }

  /** Starts a sidecar in the pod namespace; resolves once the agent accepted its stream. */
  async startSidecar(options: SidecarOptions): Promise<ChildProcess> {
    const streams = await this.#occurrences('agent.log', 'Accepted NAA stream');
    const sidecar = this.spawnSidecar(options);
    await until('the sidecar stream', async () =>
      (await this.#occurrences('agent.log', 'Accepted NAA stream')) > streams ? true : undefined,
    );
    return sidecar;
  }

  /**
   * Strict mode: builds the stamping library (sidecar/stamp/, as `npm run build:stamp` does), starts
   * the sidecar with a folder to share it from, and resolves, once its stamping socket is up, with
   * the environment that the webhook would give the pod's programs.
   */
  async startStampingSidecar(options: SidecarOptions): Promise<{ sidecar: ChildProcess; env: Record<string, string> }> {
    const runDir = join(this.dir, 'run');
    await mkdir(runDir, { recursive: true });
    const library = join(this.dir, 'libnaat_stamp.so');
    await buildStampLibrary(library);
    const socket = join(runDir, 'stamp.sock');
    const sidecar = await this.startSidecar({
      ...options,
      env: { ...options.env, NAAT_STAMP_DIR: runDir, NAAT_STAMP_LIBRARY: library },
    });
    await until('the stamping socket', async () => existsSync(socket) || undefined);
    return { sidecar, env: { LD_PRELOAD: library, NAAT_STAMP_SOCKET: socket } };
  }

  /** What the agent's HTTP server answers at `path`, asked from the gateway namespace it listens in. */
  async agentText(path: string): Promise<string> {
    const { stdout } = await this.topology.exec(this.topology.ns.gw, ['curl', '-sf', `http://127.0.0.1:7741${path}`]);
    return stdout;
  }

  async agentGet<T>(path: string): Promise<T> {
    return JSON.parse(await this.agentText(path)) as T;
  }

  /** Strict mode: the gateway's named counters of new flows of strict pods, and of those that came stamped. */
  async strictCounters(): Promise<{ newFlows: number; stamped: number }> {
    return strictCounters((argv) => this.topology.exec(this.topology.ns.gw, argv));
  }

  /** New flows the gateway placed on each uplink so far (the ruleset's counters, as the agent's metrics report them). */
  async newFlows(): Promise<number[]> {
    const uplinks = Array.from({ length: this.options.uplinks }, (_, i) => `isp${i + 1}`);
    return Promise.all(uplinks.map((uplink) => this.metric('naat_uplink_new_flows_total', { uplink })));
  }

  /**
   * Runs `phase`, then waits (30 s at most) for the gateway to have counted as many more new flows
   * as `expected` sums to; resolves with how many more it counted on each uplink.
   */
  async counted(phase: () => Promise<unknown>, expected: number[]): Promise<number[]> {
    const before = await this.newFlows();
    await phase();
    const delta = async () => (await this.newFlows()).map((n, i) => n - before[i]!);
    const sum = (values: number[]) => values.reduce((a, b) => a + b, 0);
    await until(
      'the gateway to count the flows',
      async () => (sum(await delta()) >= sum(expected) ? true : undefined),
      30_000,
    ).catch(() => undefined);
    return delta();
  }

  /** The sum of the agent's /metrics samples named `name` whose labels include `labels`. */
  async metric(name: string, labels: Record<string, string> = {}): Promise<number> {
    return metricSum(await this.agentText('/metrics'), name, labels);
  }

  /** The text of a log file in the work folder; empty if there is none. */
  log(name: string): Promise<string> {
    return this.#processes.log(name);
  }

  /** Prints the lines that these logs logged at level error, if any. */
  async printErrorsLogged(logs: string[]): Promise<void> {
    const errors = (await Promise.all(logs.map((name) => this.log(name))))
      .join('\n')
      .split('\n')
      .filter((line) => line.includes('"level":"error"'));
    if (errors.length) console.log(`errors logged:\n${errors.join('\n')}`);
  }

  /** Stops and deletes everything start() made, the latest first; safe to call twice. */
  async stop(): Promise<void> {
    const failures: Error[] = [];
    for (const undo of this.#made.splice(0).reverse()) await undo().catch((error: Error) => failures.push(error));
    if (failures.length) throw new AggregateError(failures, failures.map((error) => error.message).join('; '));
  }

  /**
   * Makes a server on the host's loopback (http://127.0.0.1:PORT) reachable from the pod namespace
   * at the pod's address and the same port; resolves with its URL there. Not at the pod's own
   * loopback: the sidecar reports its own connections too, and the gateway accepts associations
   * only from the pod's addresses.
   */
  async relayIntoPod(name: string, address: string): Promise<string> {
    await this.#relay(this.pod.netns, name, address, this.pod.ip);
    const url = new URL(address);
    url.hostname = this.pod.ip;
    return url.origin;
  }

  /**
   * The agent runs in the gateway namespace; the apiserver and other test servers listen on the
   * host's loopback. Two relays joined by a Unix socket make the same address work inside the
   * gateway namespace.
   */
  #relayIntoGateway(name: string, address: string): Promise<void> {
    return this.#relay(this.topology.ns.gw, name, address, new URL(address).hostname);
  }

  /** Relays `host`:PORT in namespace `target` to `address` (a URL on the host's loopback) through a Unix socket. */
  async #relay(target: string, name: string, address: string, host: string): Promise<void> {
    await relayIntoNamespace(this.#processes.spawn, this.dir, target, name, address, host);
  }

  async #occurrences(log: string, text: string): Promise<number> {
    return (await this.log(log)).split(text).length - 1;
  }
}

/** The rules the application tests give the Pod: curl may not reach the server at `port`, python3 leaves by isp2 alone. */
export const applicationRules =
  (namespace: string, port: number) =>
  (podIp: string): object[] => [
    {
      policy: `${namespace}/apps`,
      rule: 'no-curl',
      priority: 1,
      sources: [podIp],
      applications: [{ processName: 'curl' }],
      destinations: [{ cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port }] }],
      action: 'Deny',
    },
    {
      policy: `${namespace}/apps`,
      rule: 'python-via-isp2',
      priority: 2,
      sources: [podIp],
      applications: [{ processName: 'python3' }],
      action: 'Allow',
      uplinks: { allowed: ['isp2'] },
    },
  ];

/** One connection by `program` from the Pod's address to the server at `port`, printing what the server saw. */
export function connectionBy(program: 'python3' | 'curl', podIp: string, port: number, timeoutSeconds = 4): string[] {
  return program === 'python3'
    ? [
        'python3',
        '-c',
        `import socket
s=socket.create_connection(('${server.v4}',${port}),timeout=${timeoutSeconds},source_address=('${podIp}',0))
print(s.recv(100).decode().strip())`,
      ]
    : ['curl', '-s', '-m', String(timeoutSeconds), '--interface', podIp, `telnet://${server.v4}:${port}`];
}

/** The sum of the samples named `name` whose labels include `labels`, in a Prometheus text exposition. */
export function metricSum(exposition: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of exposition.split('\n')) {
    const sample = /^(\w+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (sample?.[1] !== name) continue;
    const has = new Map([...(sample[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map(([, k, v]) => [k, v]));
    if (Object.entries(labels).every(([k, v]) => has.get(k) === v)) sum += Number(sample[3]);
  }
  return sum;
}
