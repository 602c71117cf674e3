// A node-driven strict pod as the Strict-mode end-to-end tests of the Node driver make one
// (strict-node.test.ts with the node agent, strict-gateway-node.test.ts with the gateway agent):
// its processes run in the pod's network namespace (which routes through the gateway), in its
// container's cgroup, and in a mount namespace of their own where a memory-backed folder stands
// for the pod's shared emptyDir at /var/run/naat; the pod's first init container
// (sidecar/stamp-init.ts) places the stamping library there and waits for the driving agent. Then
// `strictScenario` sends each program's connections and checks what the gateway counted.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { NaaGateway } from './naa-harness.ts';
import { buildStampLibrary } from './naa-pod.ts';
import type { ContainerCgroup } from './node-driven.ts';
import { curlConnects, deniedConnects, expectClassified, pythonConnects, strictPorts } from './strict-programs.ts';
import { stopProcess } from './topology.ts';

const root = join(import.meta.dirname, '..', '..');
/** The environment the webhook gives a node-driven strict pod's containers. */
const preloaded = { LD_PRELOAD: '/var/run/naat/libnaat_stamp.so' };

export class NodeStrictPod {
  readonly #gateway: NaaGateway;
  readonly #container: ContainerCgroup;
  /** The process that holds the pod's mount namespace, with the folder its containers share. */
  #holder: ChildProcess | undefined;
  readonly #running: ChildProcess[] = [];

  constructor(gateway: NaaGateway, container: ContainerCgroup) {
    this.#gateway = gateway;
    this.#container = container;
  }

  /** Makes the pod's mount namespace and its shared folder. */
  async start(): Promise<void> {
    const holder = this.spawn([
      'unshare',
      '--mount',
      '--propagation',
      'private',
      'sh',
      '-c',
      // /run is the host's in the copied namespace: a folder of its own first.
      'mount -t tmpfs run /run && mkdir /run/naat && mount -t tmpfs naat-run /run/naat && echo ready && exec sleep 600',
    ]);
    await new Promise((resolve, reject) => {
      holder.stdout!.once('data', resolve);
      holder.once('exit', (code) => reject(new Error(`the pod's mount namespace failed (${code})`)));
    });
    this.#holder = holder;
  }

  /**
   * Starts `argv` as a process of the pod: in its container's cgroup when `inContainer` (placed
   * before it runs anything), its network namespace and, once started, its mount namespace.
   */
  spawn(argv: string[], env: Record<string, string> = {}, inContainer = true): ChildProcess {
    const assignments = Object.entries(env).map(([name, value]) => `${name}=${value}`);
    const mount = this.#holder ? ['nsenter', `--mount=/proc/${this.#holder.pid}/ns/mnt`, '--'] : [];
    const netns = ['ip', 'netns', 'exec', this.#gateway.pod.netns];
    const child = spawn('sh', ['-c', 'read go; exec "$@"', 'sh', ...netns, ...mount, 'env', ...assignments, ...argv], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    this.#running.push(child);
    if (inContainer) this.#container.place(child.pid!);
    child.stdin!.end('go\n');
    return child;
  }

  /** Runs a shell script as a program of the pod; resolves with what it printed. */
  async run(script: string, env: Record<string, string> = {}, inContainer = true): Promise<string> {
    const child = this.spawn(['sh', '-c', script], env, inContainer);
    let stdout = '';
    child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const code = await new Promise((resolve) => child.once('exit', resolve));
    if (code !== 0) throw new Error(`exited with ${code}: ${stdout}`);
    return stdout;
  }

  /**
   * Starts the pod's first init container, as the webhook adds it, with a freshly built library;
   * `exited` resolves with its exit code and log.
   */
  async startInit(): Promise<{ child: ChildProcess; exited: Promise<{ code: number | null; log: string }> }> {
    const library = join(this.#gateway.dir, 'libnaat_stamp.so');
    await buildStampLibrary(library);
    const child = this.spawn([process.execPath, join(root, 'sidecar', 'stamp-init.ts')], {
      NAAT_STAMP_DIR: '/var/run/naat',
      NAAT_STAMP_LIBRARY: library,
      NAAT_STAMP_WAIT_MS: '20000',
    });
    let log = '';
    child.stdout!.on('data', (chunk: Buffer) => (log += chunk.toString()));
    return { child, exited: new Promise((resolve) => child.once('exit', (code) => resolve({ code, log }))) };
  }

  /** Stops every process of the pod still running. */
  async stop(): Promise<void> {
    for (const child of this.#running)
      if (child.exitCode === null && child.signalCode === null) await stopProcess(child);
  }
}

/**
 * The pod's programs once its agent answers: `connections` curl processes (through isp1), python3
 * connections from a pid namespace of its own (through isp2) and SYNs that python3 is denied, all
 * preloaded, must all arrive stamped, each through its application's uplink, none of the denied
 * passing; a preloaded program in the pod's namespaces but not in its cgroup must get no stamp.
 * `driverLog` is the driving agent's log, which must show each application stamped once.
 */
export async function strictScenario(
  gateway: NaaGateway,
  pod: NodeStrictPod,
  connections: number,
  driverLog: string,
): Promise<void> {
  let curlFailures = '';
  const curlFlows = await gateway.counted(async () => {
    curlFailures = await pod.run(curlConnects(connections), preloaded);
  }, [connections, 0]);
  // python3 in a pid namespace of its own (unshare --fork makes it pid 1 there): it asks by that pid.
  let pythonOut = '';
  const pythonFlows = await gateway.counted(async () => {
    pythonOut = await pod.run(`unshare --pid --fork ${pythonConnects(strictPorts.python, connections)}`, preloaded);
  }, [0, connections]);
  let denied = '';
  const deniedFlows = await gateway.counted(async () => {
    denied = await pod.run(deniedConnects(connections), preloaded);
  }, [0, 0]);
  const counters = await gateway.strictCounters();

  expect(pythonOut.trim().split(' ')).toHaveLength(connections);
  expectClassified({ curlFailures, curlFlows, pythonFlows, deniedFlows, denied, counters }, connections);
  console.log(
    `strict, Node driver (${driverLog}): ${connections} curl + ${connections} python3 + ${connections} denied ` +
      `connections; ${counters.stamped}/${counters.newFlows} new-flow packets stamped at the gateway`,
  );
  // The agent stamped each application once, named from its config's container.
  expect((await gateway.log(driverLog)).split('Stamped an application').length - 1).toBe(2);

  // A process that reaches the pod's socket but is none of the pod's processes (not in its cgroup)
  // gets no stamp: its flows arrive unstamped, and the pod's rules (any uplink) decide them.
  const strangerFlows = await gateway.counted(
    () => pod.run(pythonConnects(strictPorts.unstamped, connections), preloaded, false),
    [connections / 2, connections / 2],
  );
  const after = await gateway.strictCounters();
  expect(strangerFlows[0]! + strangerFlows[1]!).toBe(connections);
  expect(after.newFlows - counters.newFlows).toBe(connections);
  expect(after.stamped).toBe(counters.stamped);
}
