// The worker node of the NAA gateway benchmark's Node-driver figures: a network namespace joined
// to the gateway namespace by a link of its own, where the real node agent runs with
// --associate-pods and its node's certificate, and the pods it drives. Each pod is a Pod in the
// apiserver on that node, marked node-driven, with its container's cgroup (test/e2e/node-driven.ts)
// and processes in a network namespace that holds the Pod's address. The node agent's relay
// carries their streams to the gateway agent, which it finds up at its /steering over mutual TLS.
// stop() removes everything it made, also after a start that failed.
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { NodeConfig } from '../../contracts/gateway/index.ts';
import { makePod } from '../integration/naa-fixtures.ts';
import { LoggedProcesses } from '../e2e/logged-processes.ts';
import type { NaaGateway } from '../e2e/naa-harness.ts';
import { ContainerCgroup, markNodeDriven } from '../e2e/node-driven.ts';
import { deleteNamespace, ipBatch, podGateway, run, stopProcess, until } from '../e2e/topology.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
export const workerNode = 'worker-a';
/** The worker node's address on its link to the gateway namespace; its pods report it as their node's. */
const nodeAddress = '10.255.0.2';
const gatewaySide = '10.255.0.1';
/** The gateway agent's NAA and health ports, which the worker's node config names. */
const associationPort = 7740;
const healthPort = 7741;

export interface DrivenPod {
  name: string;
  uid: string;
  ip: string;
  container: ContainerCgroup;
}

/** Where the gateway agent must also listen for the worker's node agent to ask its /steering. */
export const steeringListen = `${podGateway(1).v4}:${healthPort}`;

export class DriverNode {
  /** The worker node's network namespace, where its node agent runs. */
  readonly ns: string;
  agent: ChildProcess | undefined;
  readonly #gateway: NaaGateway;
  readonly #processes: LoggedProcesses;
  readonly #made: Array<() => unknown> = [];

  constructor(gateway: NaaGateway) {
    this.#gateway = gateway;
    this.ns = `${gateway.topology.prefix}node`;
    this.#processes = new LoggedProcesses({
      dir: gateway.dir,
      spawnIn: (ns, argv, options) => gateway.topology.spawn(ns, argv, options),
    });
  }

  /** Makes the worker's namespace and its link to the gateway namespace. */
  async start(): Promise<void> {
    const gw = this.#gateway.topology.ns.gw;
    await run(['ip', 'netns', 'add', this.ns]);
    this.#made.push(() => deleteNamespace(this.ns));
    await run(['ip', 'link', 'add', 'worker0', 'netns', gw, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.ns]);
    await ipBatch(gw, [`addr add ${gatewaySide}/30 dev worker0`, 'link set worker0 up']);
    await ipBatch(this.ns, [
      'link set lo up',
      `addr add ${nodeAddress}/30 dev eth0`,
      'link set eth0 up',
      `route add default via ${gatewaySide}`,
    ]);
  }

  /**
   * A Pod on the worker, node-driven, with one container's cgroup; at `ip` (an address of the
   * benchmark's) when given, else at the one the control plane gave it.
   */
  async addPod(name: string, ip?: string): Promise<DrivenPod> {
    const { kubeconfig, namespace } = this.#gateway.options;
    const pod = await makePod(namespace, name, workerNode, kubeconfig);
    await markNodeDriven(kubeconfig, namespace, name, nodeAddress, ip);
    const container = new ContainerCgroup(pod.ref.uid, randomBytes(32).toString('hex'));
    this.#made.push(() => container.remove());
    return { name, uid: pod.ref.uid, ip: ip ?? pod.ip, container };
  }

  /** A network namespace of the pod's own, holding its address. */
  async podNamespace(pod: DrivenPod): Promise<string> {
    const ns = `${this.#gateway.topology.prefix}${pod.name}`;
    await run(['ip', 'netns', 'add', ns]);
    this.#made.push(() => deleteNamespace(ns));
    await ipBatch(ns, [
      'link set lo up',
      // A link of the namespace's own, both ends inside it: nothing leaves.
      'link add eth0 type veth peer name peer0',
      `addr add ${pod.ip}/32 dev eth0`,
      'link set eth0 up',
      'link set peer0 up',
    ]);
    return ns;
  }

  /** Starts a program in `ns` as a process of the pod's container. */
  spawnInPod(pod: DrivenPod, ns: string, argv: string[], log: string): ChildProcess {
    const child = this.#processes.spawn(ns, argv, log);
    pod.container.place(child.pid!);
    return child;
  }

  /** The worker's node config: `pods` served, driven by the node agent when `associate`, in strict mode when `strict`. */
  async writeConfig(pods: readonly DrivenPod[], associate: boolean, strict = false): Promise<void> {
    const config: NodeConfig = {
      version: 1,
      node: workerNode,
      markMask: 0xe0,
      gateways: [
        {
          gateway: 'naa',
          tunnel: { vni: 7, port: 4789 },
          selection: 'Pod',
          associationPort,
          healthPort,
          bypass: [],
          pods: pods.map((pod) => ({
            namespace: this.#gateway.options.namespace,
            name: pod.name,
            addresses: [pod.ip],
            ...(associate
              ? {
                  association: {
                    uid: pod.uid,
                    containers: [{ id: pod.container.containerId, name: 'app' }],
                    ...(strict ? { strict } : {}),
                  },
                }
              : {}),
          })),
          peers: [{ node: this.#gateway.options.node, addresses: [podGateway(1).v4] }],
        },
      ],
    };
    await writeFile(join(this.#gateway.dir, 'node.json'), JSON.stringify(config));
  }

  /** Starts the node agent on the worker's config (writeConfig first); resolves once it started. */
  async startAgent(): Promise<ChildProcess> {
    const log = 'node-agent.log';
    const started = (await this.#gateway.log(log)).split('Started the node agent').length;
    const dir = this.#gateway.dir;
    this.agent = this.#processes.spawn(
      this.ns,
      [
        process.execPath,
        main,
        'node',
        '--config',
        join(dir, 'node.json'),
        '--node',
        workerNode,
        '--associate-pods',
        '--tls-dir',
        this.#gateway.tlsDir(workerNode),
        '--state-dir',
        join(dir, 'node-state'),
      ],
      log,
    );
    await until('the node agent', async () =>
      (await this.#gateway.log(log)).split('Started the node agent').length > started ? true : undefined,
    );
    return this.agent;
  }

  async stopAgent(): Promise<void> {
    await stopProcess(this.agent);
  }

  /** Stops every program it started, then removes everything it made, the latest first. */
  async stop(): Promise<void> {
    const failures: Error[] = [];
    // A cgroup with a process in it cannot be removed, nor a namespace be gone while one runs there.
    await this.#processes.stopAll().catch((error: Error) => failures.push(error));
    for (const undo of this.#made.splice(0).reverse()) {
      try {
        await undo();
      } catch (error) {
        failures.push(error as Error);
      }
    }
    if (failures.length) throw new AggregateError(failures, failures.map((error) => error.message).join('; '));
  }
}
