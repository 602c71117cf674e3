// What a test needs to stand in for a Pod with an NAA sidecar, shared by the single-node harness
// (naa-harness.ts) and the multi-node test: the Pod in the real control plane with a token bound to
// it, the sidecar's environment, the stamping library of strict mode, and the relay that makes a
// server on the host's loopback (the apiserver) reachable inside a network namespace.
import { execFile, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { URL } from 'node:url';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { kubectl } from '../cluster/cluster.ts';
import { makePod } from '../integration/naa-fixtures.ts';
import { until } from './topology.ts';

const root = join(import.meta.dirname, '..', '..');
const programs = join(import.meta.dirname, 'programs');

export interface BoundPod {
  name: string;
  uid: string;
  /** The address the control plane (kwok) gave it, or the one it was patched to. */
  ip: string;
  /** A `naat`-audience token of its service account, bound to the Pod. */
  token: string;
}

/**
 * Creates Pod `name` (service account `app`, which must exist) on `nodeName`, waits for it to get an
 * address, and with `status` patches its status (e.g. podIPs and hostIPs of a topology's node), as
 * kwok would have reported them.
 */
export async function createBoundPod(
  kubeconfig: string,
  namespace: string,
  name: string,
  nodeName: string,
  status?: { podIPs: string[]; hostIPs: string[] },
): Promise<BoundPod> {
  const pod = await makePod(namespace, name, nodeName, kubeconfig);
  const bound = { name, uid: pod.ref.uid, ip: pod.ip, token: pod.token };
  if (!status) return bound;
  const patch = {
    ...(status.podIPs.length ? { podIP: status.podIPs[0], podIPs: status.podIPs.map((ip) => ({ ip })) } : {}),
    hostIP: status.hostIPs[0],
    hostIPs: status.hostIPs.map((ip) => ({ ip })),
  };
  const merge = ['--subresource=status', '--type=merge', '-p', JSON.stringify({ status: patch })];
  await kubectl(kubeconfig, ['patch', 'pod', name, '-n', namespace, ...merge]);
  return { ...bound, ip: status.podIPs[0] ?? pod.ip };
}

/** The sidecar's environment for a Pod, dialling `host`:`port` (its node's address and the association port). */
export function sidecarEnv(options: {
  host: string;
  port: number;
  namespace: string;
  pod: { name: string; uid: string };
  tokenFile: string;
  scanIntervalMs?: number;
}): Record<string, string> {
  return {
    NAAT_NAA_HOST: options.host,
    NAAT_NAA_PORT: String(options.port),
    NAAT_POD_NAMESPACE: options.namespace,
    NAAT_POD_NAME: options.pod.name,
    NAAT_POD_UID: options.pod.uid,
    NAAT_TOKEN_FILE: options.tokenFile,
    ...(options.scanIntervalMs ? { NAAT_SCAN_INTERVAL_MS: String(options.scanIntervalMs) } : {}),
  };
}

export const sidecarMain = join(root, 'sidecar', 'main.ts');

/** Builds the stamping library of strict mode (sidecar/stamp/, as `npm run build:stamp` does) into `path`. */
export async function buildStampLibrary(path: string): Promise<void> {
  await promisify(execFile)('gcc', [
    '-O2',
    '-shared',
    '-fPIC',
    '-o',
    path,
    join(root, 'sidecar', 'stamp', 'naat_stamp.c'),
    '-ldl',
  ]);
}

/** The apiserver's URL (on the host's loopback) in a kubeconfig. */
export async function apiserverOf(kubeconfig: string): Promise<string> {
  const parsed = parseYaml(await readFile(kubeconfig, 'utf8')) as { clusters: Array<{ cluster: { server: string } }> };
  return parsed.clusters[0]!.cluster.server;
}

/**
 * Runs a program, in a network namespace or (without one) on the host, with its output in log file
 * `log` of the work folder.
 */
export type SpawnLogged = (ns: string | undefined, argv: string[], log: string) => ChildProcess;

/**
 * Relays `host`:PORT in namespace `target` to `address` (a URL on the host's loopback) through a
 * Unix socket in `dir`, whose path every namespace sees; resolves, once both ends listen, with the
 * host's end (the namespace's end goes with its namespace).
 */
export async function relayIntoNamespace(
  spawnLogged: SpawnLogged,
  dir: string,
  target: string,
  name: string,
  address: string,
  host: string,
): Promise<ChildProcess> {
  const { hostname, port } = new URL(address);
  const socket = join(dir, `${name}.sock`);
  const relay = (ns: string | undefined, args: string[], log: string) =>
    spawnLogged(ns, [process.execPath, join(programs, 'relay.ts'), ...args], log);
  const hostRelay = relay(undefined, ['from-unix', socket, hostname, port], `relay-${name}.log`);
  relay(target, ['to-unix', host, port, socket], `relay-${name}-ns.log`);
  for (const log of [`relay-${name}.log`, `relay-${name}-ns.log`]) {
    await until(`the relay of ${log}`, async () =>
      (await readFile(join(dir, log), 'utf8').catch(() => '')).includes('listening') ? true : undefined,
    );
  }
  return hostRelay;
}

/**
 * Strict mode: a gateway node's named counters of new flows of strict pods, and of those that came
 * stamped, read with `exec` (which runs a command in the gateway node's namespace).
 */
export async function strictCounters(
  exec: (argv: string[]) => Promise<{ stdout: string }>,
): Promise<{ newFlows: number; stamped: number }> {
  const { stdout } = await exec(['nft', '-j', 'list', 'counters', 'table', 'inet', 'naat']);
  const counters = (JSON.parse(stdout) as { nftables: Array<{ counter?: { name: string; packets: number } }> })
    .nftables;
  const packets = (name: string) => counters.find((c) => c.counter?.name === name)?.counter?.packets ?? NaN;
  return { newFlows: packets('strict_new_flows'), stamped: packets('strict_stamped_flows') };
}
