// Strict association with the Node driver end to end: no sidecar. The pod is a Pod on a worker
// node, node-driven and strict; its processes run in the pod's network namespace (which routes
// through the gateway), in its container's cgroup, and in a mount namespace of their own where a
// memory-backed folder stands for the pod's shared emptyDir at /var/run/naat. The pod's first
// init container (sidecar/stamp-init.ts) places the stamping library there and waits; the real
// node agent (`node --associate-pods`, in the worker's namespace) finds the pod from the host's
// /proc, listens on the folder's stamp socket through the pod's process, and streams in strict
// mode, through its relay and with its node's certificate, to the real gateway agent. Programs
// then ask the node agent for their stamp: curl in the pod's own pid namespace view, python3 from
// a pid namespace of its own (as in a container without a shared process namespace), which the
// node agent maps to the host's pid by NSpid. Under PodRules (an unclassified flow would take any
// uplink and pass any port), every flow must leave through its application's uplink, the denied
// program's SYNs must never get through, and the gateway's counters must show every new flow
// stamped. A process that reaches the socket but is not one of the pod's gets no stamp.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { DriverNode, steeringListen, type DrivenPod } from '../bench/driver-node.ts';
import { buildStampLibrary } from './naa-pod.ts';
import { curlConnects, deniedConnects, pythonConnects, strictGateway, strictPorts } from './strict-programs.ts';
import { stopProcess } from './topology.ts';
import { startWhoami, type Server } from './traffic.ts';

const namespace = `naa-strict-node-${process.pid}`;
const connections = 100;
const root = join(import.meta.dirname, '..', '..');
const gateway = strictGateway(namespace, 'app', {
  // The worker's node agent asks the agent's /steering there.
  agentArgs: ['--metrics-listen', steeringListen],
});

const servers: Server[] = [];
let worker: DriverNode | undefined;
let pod: DrivenPod;
/** The process that holds the pod's mount namespace, with the folder its containers share. */
let holder: ChildProcess | undefined;
let library: string;
const running: ChildProcess[] = [];

/**
 * Starts `argv` as a process of the pod's container: in its cgroup (placed before it runs
 * anything), its network namespace and, once the holder runs, its mount namespace.
 */
function spawnInPod(argv: string[], env: Record<string, string> = {}, inContainer = true): ChildProcess {
  const assignments = Object.entries(env).map(([name, value]) => `${name}=${value}`);
  const mount = holder ? ['nsenter', `--mount=/proc/${holder.pid}/ns/mnt`, '--'] : [];
  const child = spawn(
    'sh',
    [
      '-c',
      'read go; exec "$@"',
      'sh',
      'ip',
      'netns',
      'exec',
      gateway.pod.netns,
      ...mount,
      'env',
      ...assignments,
      ...argv,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  running.push(child);
  if (inContainer) pod.container.place(child.pid!);
  child.stdin!.end('go\n');
  return child;
}

/** Runs a shell script as a program of the pod; resolves with what it printed. */
async function inPod(script: string, env: Record<string, string> = {}, inContainer = true): Promise<string> {
  const child = spawnInPod(['sh', '-c', script], env, inContainer);
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const code = await new Promise((resolve) => child.once('exit', resolve));
  if (code !== 0) throw new Error(`exited with ${code}: ${stdout}`);
  return stdout;
}

/** The environment the webhook gives a node-driven strict pod's containers. */
const preloaded = { LD_PRELOAD: '/var/run/naat/libnaat_stamp.so' };

beforeAll(async () => {
  await gateway.start();
  for (const port of Object.values(strictPorts)) servers.push(await startWhoami(gateway.topology, port));
  library = join(gateway.dir, 'libnaat_stamp.so');
  await buildStampLibrary(library);
  worker = new DriverNode(gateway);
  await worker.start();
  // The Pod on the worker, node-driven, at the address of the gateway's pod namespace.
  pod = await worker.addPod('app-node', gateway.pod.ip);
  holder = spawnInPod([
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
    holder!.stdout!.once('data', resolve);
    holder!.once('exit', (code) => reject(new Error(`the pod's mount namespace failed (${code})`)));
  });
}, 120_000);

afterAll(async () => {
  for (const child of running) if (child.exitCode === null && child.signalCode === null) await stopProcess(child);
  for (const s of servers) await s.stop();
  await gateway.printErrorsLogged(['agent.log', 'node-agent.log']);
  await worker?.stop();
  await gateway.stop();
}, 60_000);

test("a node-driven strict pod's programs get their stamps from the node agent, and every new flow is classified from its first packet", async () => {
  // The pod's first init container, as the webhook adds it: it waits for the node agent.
  const init = spawnInPod([process.execPath, join(root, 'sidecar', 'stamp-init.ts')], {
    NAAT_STAMP_DIR: '/var/run/naat',
    NAAT_STAMP_LIBRARY: library,
    NAAT_STAMP_WAIT_MS: '20000',
  });
  let initLog = '';
  init.stdout!.on('data', (chunk: Buffer) => (initLog += chunk.toString()));
  const initExit = new Promise((resolve) => init.once('exit', resolve));
  await new Promise((resolve) => setTimeout(resolve, 500));
  expect(init.exitCode).toBeNull();

  await worker!.writeConfig([pod], true, true);
  await worker!.startAgent();
  expect(await initExit).toBe(0);
  expect(initLog).toContain('The node agent answers for stamps');

  let curlFailures = '';
  const curlFlows = await gateway.counted(async () => {
    curlFailures = await inPod(curlConnects(connections), preloaded);
  }, [connections, 0]);
  // python3 in a pid namespace of its own (unshare --fork makes it pid 1 there): it asks by that pid.
  let pythonOut = '';
  const pythonFlows = await gateway.counted(async () => {
    pythonOut = await inPod(`unshare --pid --fork ${pythonConnects(strictPorts.python, connections)}`, preloaded);
  }, [0, connections]);
  let denied = '';
  const deniedFlows = await gateway.counted(async () => {
    denied = await inPod(deniedConnects(connections), preloaded);
  }, [0, 0]);
  const counters = await gateway.strictCounters();

  expect(curlFailures).toBe('');
  expect(pythonOut.trim().split(' ')).toHaveLength(connections);
  expect(curlFlows).toEqual([connections, 0]);
  expect(pythonFlows).toEqual([0, connections]);
  expect(deniedFlows).toEqual([0, 0]);
  expect(Number(denied.trim())).toBe(0);
  // Every new-flow packet of the pod arrived stamped (the denied SYNs and their retries included).
  expect(counters.newFlows).toBeGreaterThanOrEqual(3 * connections);
  expect(counters.stamped).toBe(counters.newFlows);
  console.log(
    `strict, Node driver: ${connections} curl + ${connections} python3 + ${connections} denied connections; ` +
      `${counters.stamped}/${counters.newFlows} new-flow packets stamped at the gateway`,
  );
  // The node agent stamped each application once, named from the node config's container.
  const log = await gateway.log('node-agent.log');
  expect(log.split('Stamped an application').length - 1).toBe(2);

  // A process that reaches the pod's socket but is none of the pod's processes (not in its cgroup)
  // gets no stamp: its flows arrive unstamped, and the pod's rules (any uplink) decide them.
  const strangerFlows = await gateway.counted(
    () => inPod(pythonConnects(strictPorts.unstamped, connections), preloaded, false),
    [connections / 2, connections / 2],
  );
  const after = await gateway.strictCounters();
  expect(strangerFlows[0]! + strangerFlows[1]!).toBe(connections);
  expect(after.newFlows - counters.newFlows).toBe(connections);
  expect(after.stamped).toBe(counters.stamped);
}, 300_000);
