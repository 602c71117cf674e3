// A real Kubernetes control plane on loopback for tests and the lab: etcd, kube-apiserver and,
// when workloads are asked for, kube-controller-manager, kube-scheduler and kwok (which makes
// Nodes and Pods look Running without a container runtime), and on request one real node
// (node.ts), for which the apiserver listens on the node's link instead of loopback. Binaries come
// from build.sh.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { prepareRealNode, realNode, removeRealNodeLeftovers, startRealNode, type RealNode } from './node.ts';
import { inCpuGroup, removeCpuGroup } from './cpu-groups.ts';
import { terminate, timed, waitFor } from './processes.ts';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

export const adminToken = 'naat-test-admin-token';
const nodeToken = 'naat-test-node-token';
const proxyToken = 'naat-test-proxy-token';

export interface ClusterOptions {
  /** Also run controller-manager, scheduler and kwok, so that Deployments and DaemonSets get Running pods. */
  workloads?: boolean;
  /** Node objects to create (kwok manages them). Needs `workloads`. */
  nodes?: NodeSpec[];
  /** Where to keep state, logs and the kubeconfig; a fresh temporary folder by default. */
  dir?: string;
  /** Called with a line for each step and how long it took. */
  progress?: (line: string) => void;
  /**
   * Record every request's metadata (user, verb, resource, response code) as JSON lines in
   * `<dir>/audit.log`, e.g. to compare what a component does with what its RBAC grants.
   */
  audit?: boolean;
  /**
   * Also run one real node (kubelet, kube-proxy and containerd; node.ts) beside the kwok nodes.
   * Needs `workloads`. Waits while another run's real node holds the machine.
   */
  realNode?: boolean;
}

export interface NodeSpec {
  name: string;
  labels?: Record<string, string>;
  /** The node's InternalIP addresses (kwok gives its pods the first as hostIP); kwok's own when omitted. */
  addresses?: string[];
  /** Where kwok takes the node's pods' addresses from; its default pool when omitted. */
  podCIDR?: string;
}

export interface Cluster {
  dir: string;
  server: string;
  kubeconfig: string;
  /** PEM of the CA that signed the apiserver's serving certificate. */
  caFile: string;
  /** The audit log, when started with `audit`. */
  auditLog?: string;
  /** The real node, when started with `realNode`. */
  node?: RealNode;
  /** kubectl against this cluster; resolves with stdout, rejects with stderr in the message. */
  kubectl(args: string[], input?: string): Promise<string>;
  /** Kills etcd and the apiserver with SIGKILL, as a crash of the control plane would. */
  crashControlPlane(): Promise<void>;
  /** Starts them again on the same ports and data; resolves once the apiserver is ready. */
  restartControlPlane(): Promise<void>;
  stop(): Promise<void>;
}

/** Builds the binaries if their pins changed and returns the folder that holds them. */
export async function buildBinaries(): Promise<string> {
  const { stdout } = await run('bash', [join(here, 'build.sh')], { maxBuffer: 1 << 24 });
  return stdout.trim().split('\n').pop()!;
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const say = options.progress ?? (() => {});
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'naat-cluster-')));
  await mkdir(join(dir, 'logs'), { recursive: true });
  const children: ChildProcess[] = [];
  const binaries = new Map<ChildProcess, string>();
  // The control plane's machine: a CPU group of its own beside the nodes' (cpu-groups.ts).
  const controlPlaneGroup = `control-plane-${basename(dir)}`;
  let node: RealNode | undefined;
  let prepared = false;
  const stopChildren = async () => {
    // The node first: kubelet reports to the apiserver while it stops its pods.
    if (node) await node.stop();
    else if (prepared) await removeRealNodeLeftovers();
    for (const child of children.reverse()) await terminate(child);
    await removeCpuGroup(controlPlaneGroup);
  };
  const stop = async () => {
    await stopChildren();
    if (!options.dir) await rm(dir, { recursive: true, force: true });
  };
  try {
    const bin = await timed(say, 'Built control plane binaries', buildBinaries);
    if (options.realNode) {
      await timed(say, "Prepared the real node's network", () => prepareRealNode());
      prepared = true;
    }
    const host = options.realNode ? realNode.hostAddress : '127.0.0.1';
    const pki = await timed(say, 'Created certificates', () => makePki(join(dir, 'pki'), host));
    const [etcdPort, peerPort, apiPort] = await freePorts(3);
    const server = `https://${host}:${apiPort}`;
    const kubeconfig = join(dir, 'kubeconfig');
    await writeFile(kubeconfig, kubeconfigYaml(server, pki.ca), { mode: 0o600 });
    const argsOf = new Map<string, string[]>();
    const start = (name: string, args: string[]) => {
      argsOf.set(name, args);
      const [command, ...rest] = inCpuGroup(controlPlaneGroup, [join(bin, name), ...args]);
      const child = spawn(command!, rest, { stdio: ['ignore', 'pipe', 'pipe'] });
      binaries.set(child, name);
      const log = createWriteStream(join(dir, 'logs', `${name}.log`), { flags: 'a' });
      child.stdout!.pipe(log);
      child.stderr!.pipe(log);
      children.push(child);
      appendFileSync(join(dir, 'pids'), `${child.pid}\n`);
      return child;
    };

    await timed(say, 'Started etcd', async () => {
      const etcd = `http://127.0.0.1:${etcdPort}`;
      const peer = `http://127.0.0.1:${peerPort}`;
      start('etcd', [
        `--data-dir=${join(dir, 'etcd')}`,
        `--listen-client-urls=${etcd}`,
        `--advertise-client-urls=${etcd}`,
        `--listen-peer-urls=${peer}`,
        `--initial-advertise-peer-urls=${peer}`,
        `--initial-cluster=default=${peer}`,
        '--unsafe-no-fsync',
        '--log-level=warn',
      ]);
      await waitFor('etcd', () => httpOk(`${etcd}/health`));
    });

    const auditLog = options.audit ? join(dir, 'audit.log') : undefined;
    if (auditLog) {
      // Metadata only: a request's user, verb, object and response code (a watch is logged when it starts).
      await writeFile(
        join(dir, 'audit-policy.yaml'),
        'apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n',
      );
    }
    await timed(say, 'Started kube-apiserver', async () => {
      start('kube-apiserver', [
        ...(auditLog
          ? [
              `--audit-policy-file=${join(dir, 'audit-policy.yaml')}`,
              `--audit-log-path=${auditLog}`,
              '--audit-log-mode=blocking',
            ]
          : []),
        `--etcd-servers=http://127.0.0.1:${etcdPort}`,
        `--secure-port=${apiPort}`,
        `--bind-address=${host}`,
        `--advertise-address=${host}`,
        ...(options.realNode
          ? [
              `--kubelet-client-certificate=${pki.kubeletClientCert}`,
              `--kubelet-client-key=${pki.kubeletClientKey}`,
              // kubectl logs and exec reach the node at its address, not by a name nothing resolves.
              '--kubelet-preferred-address-types=InternalIP',
              // Webhooks are called at their pods' addresses, which the machine routes to the node.
              '--enable-aggregator-routing=true',
            ]
          : []),
        `--cert-dir=${join(dir, 'pki')}`,
        `--tls-cert-file=${pki.serverCert}`,
        `--tls-private-key-file=${pki.serverKey}`,
        `--client-ca-file=${pki.ca}`,
        `--token-auth-file=${pki.tokens}`,
        '--authorization-mode=Node,RBAC',
        '--service-cluster-ip-range=10.96.0.0/16',
        '--allow-privileged=true',
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${pki.saPub}`,
        `--service-account-signing-key-file=${pki.saKey}`,
        '--enable-priority-and-fairness=false',
        '--profiling=false',
      ]);
      await waitFor('kube-apiserver', () => httpOk(`${server}/readyz`, pki.caPem));
    });

    if (options.workloads) {
      await timed(say, 'Started controller-manager, scheduler and kwok', async () => {
        const [kwokPort] = await freePorts(1);
        start('kube-controller-manager', [
          `--kubeconfig=${kubeconfig}`,
          `--service-account-private-key-file=${pki.saKey}`,
          `--root-ca-file=${pki.ca}`,
          '--leader-elect=false',
          '--secure-port=0',
          // kwok renews no node Lease and posts a node's status every 10 to 20 minutes: with the
          // default grace of 50 s each node went NotReady, was tainted and had its pods marked not
          // ready, over and over, while kwok made it Ready again.
          '--node-monitor-grace-period=1h',
          // Its default of 20 requests a second made 1,000 kwok nodes Ready in about 175 s, one
          // taint removal at a time; it also paces every Deployment, DaemonSet and pod it handles.
          '--kube-api-qps=200',
          '--kube-api-burst=400',
        ]);
        start('kube-scheduler', [`--kubeconfig=${kubeconfig}`, '--leader-elect=false', '--secure-port=0']);
        start('kwok', [
          `--kubeconfig=${kubeconfig}`,
          // Not the real node: only the Nodes made for kwok carry this annotation.
          '--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake',
          `--server-address=127.0.0.1:${kwokPort}`,
        ]);
      });
    }

    const cluster: Cluster = {
      dir,
      server,
      kubeconfig,
      caFile: pki.ca,
      ...(auditLog ? { auditLog } : {}),
      get node() {
        return node;
      },
      kubectl: (args, input) => kubectl(kubeconfig, args, input),
      async crashControlPlane() {
        for (const name of ['kube-apiserver', 'etcd']) {
          const child = children.find((c) => binaries.get(c) === name && c.exitCode === null);
          if (!child) continue;
          const exited = new Promise((resolve) => child.once('exit', resolve));
          child.kill('SIGKILL');
          await exited;
        }
      },
      async restartControlPlane() {
        start('etcd', argsOf.get('etcd')!);
        await waitFor('etcd', () => httpOk(`http://127.0.0.1:${etcdPort}/health`));
        start('kube-apiserver', argsOf.get('kube-apiserver')!);
        await waitFor('kube-apiserver', () => httpOk(`${server}/readyz`, pki.caPem));
      },
      stop,
    };
    if (options.workloads) {
      await applyKwokNodes(cluster.kubectl, options.nodes ?? []);
      if (options.realNode) {
        node = await timed(say, 'Started the real node', () =>
          startRealNode({ bin, dir: join(dir, 'node'), server, caFile: pki.ca, nodeToken, proxyToken }),
        );
      }
      await waitFor('nodes Ready', () => nodesReady(cluster.kubectl, options.realNode ? [realNode.name] : []));
      // Pods need the namespace's default ServiceAccount, which the controller-manager creates.
      await waitFor('default ServiceAccount', async () => {
        await cluster.kubectl(['get', 'serviceaccount', 'default', '-n', 'default']);
        return true;
      });
    }
    return cluster;
  } catch (error) {
    // The folder stays so that its logs can tell why.
    await stopChildren();
    throw new Error(`Control plane failed to start (logs in ${join(dir, 'logs')}): ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/**
 * Writes to `path` a kubeconfig for the cluster of `kubeconfig` that authenticates with a token
 * of ServiceAccount `namespace/account`, so that a process runs with exactly that account's RBAC.
 * `tokenArgs` go to `kubectl create token`, e.g. to bind the token to a pod.
 */
export async function serviceAccountKubeconfig(
  kubeconfig: string,
  namespace: string,
  account: string,
  path: string,
  tokenArgs: string[] = [],
): Promise<string> {
  const create = ['create', 'token', account, '-n', namespace, '--duration=1h', ...tokenArgs];
  const token = (await kubectl(kubeconfig, create)).trim();
  const cluster = JSON.parse(await kubectl(kubeconfig, ['config', 'view', '--raw', '--minify', '-o', 'json']))
    .clusters[0].cluster;
  await writeFile(
    path,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: [{ name: 'cluster', cluster }],
      users: [{ name: account, user: { token } }],
      contexts: [{ name: account, context: { cluster: 'cluster', user: account } }],
      'current-context': account,
    }),
    { mode: 0o600 },
  );
  return path;
}

/** Kills the components a cluster in `dir` started, if its owner died without stopping them. */
export async function killLeftovers(dir: string): Promise<void> {
  const pids = await readFile(join(dir, 'pids'), 'utf8').catch(() => '');
  for (const pid of pids.split('\n').filter(Boolean).map(Number)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

export async function kubectl(kubeconfig: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      'kubectl',
      [`--kubeconfig=${kubeconfig}`, ...args],
      { maxBuffer: 1 << 26 },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`kubectl ${args.join(' ')}: ${stderr.trim() || error.message}`));
        else resolve(stdout);
      },
    );
    child.stdin!.end(input ?? '');
  });
}

/**
 * Creates Node objects for kwok to manage, all in one apply (a thousand take seconds, not minutes),
 * then gives those with `addresses` their InternalIPs.
 */
export async function applyKwokNodes(
  kubectl: (args: string[], input?: string) => Promise<string>,
  nodes: readonly NodeSpec[],
): Promise<void> {
  if (!nodes.length) return;
  await kubectl(
    ['apply', '-f', '-'],
    JSON.stringify({ apiVersion: 'v1', kind: 'List', items: nodes.map(nodeManifest) }),
  );
  // Status is not taken on create; kwok keeps addresses a node already has. Four at a time.
  const addressed = nodes.filter((n) => n.addresses);
  const next = async (): Promise<void> => {
    const kwokNode = addressed.shift();
    if (!kwokNode) return;
    const addresses = kwokNode.addresses!.map((address) => ({ type: 'InternalIP', address }));
    await kubectl(
      ['patch', 'node', kwokNode.name, '--subresource=status', '--type=merge', '-p'].concat(
        JSON.stringify({ status: { addresses } }),
      ),
    );
    return next();
  };
  await Promise.all([next(), next(), next(), next()]);
}

/**
 * Whether every node, and each of `names` among them, is Ready and untainted: the apiserver taints
 * new nodes not-ready, and the node lifecycle controller lifts it once kwok reports Ready.
 */
export async function nodesReady(
  kubectl: (args: string[], input?: string) => Promise<string>,
  names: readonly string[] = [],
): Promise<boolean> {
  const nodes = JSON.parse(await kubectl(['get', 'nodes', '-o', 'json'])).items as KubeNode[];
  if (!names.every((name) => nodes.some((n) => n.metadata.name === name))) return false;
  return nodes.every(
    (node) =>
      !node.spec.taints?.length && node.status.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'),
  );
}

interface KubeNode {
  metadata: { name: string };
  spec: { taints?: unknown[] };
  status: { conditions?: { type: string; status: string }[] };
}

function nodeManifest(node: NodeSpec) {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name: node.name,
      annotations: { 'kwok.x-k8s.io/node': 'fake' },
      labels: { 'kubernetes.io/hostname': node.name, 'kubernetes.io/os': 'linux', type: 'kwok', ...node.labels },
    },
    ...(node.podCIDR ? { spec: { podCIDR: node.podCIDR, podCIDRs: [node.podCIDR] } } : {}),
  };
}

function kubeconfigYaml(server: string, caFile: string): string {
  return `apiVersion: v1
kind: Config
clusters:
- name: naat-test
  cluster:
    server: ${server}
    certificate-authority: ${caFile}
users:
- name: admin
  user:
    token: ${adminToken}
contexts:
- name: naat-test
  context:
    cluster: naat-test
    user: admin
current-context: naat-test
`;
}

interface Pki {
  ca: string;
  caPem: string;
  serverCert: string;
  serverKey: string;
  saKey: string;
  saPub: string;
  tokens: string;
  /** The apiserver's client certificate towards kubelets (group system:masters). */
  kubeletClientCert: string;
  kubeletClientKey: string;
}

async function makePki(dir: string, host: string): Promise<Pki> {
  await mkdir(dir, { recursive: true });
  const p = (name: string) => join(dir, name);
  const ssl = (args: string[]) => run('openssl', args);
  await ssl(
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '30', '-subj', '/CN=naat-test-ca'].concat([
      '-keyout',
      p('ca.key'),
      '-out',
      p('ca.crt'),
    ]),
  );
  await writeFile(
    p('server.ext'),
    `subjectAltName=IP:${host},IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc\n`,
  );
  // A key and a certificate signed by the CA: `<name>.key`, `<name>.crt`.
  const signed = async (name: string, subject: string, extfile?: string) => {
    await ssl(
      ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', subject, '-keyout', p(`${name}.key`)].concat([
        '-out',
        p(`${name}.csr`),
      ]),
    );
    await ssl(
      ['x509', '-req', '-in', p(`${name}.csr`), '-CA', p('ca.crt'), '-CAkey', p('ca.key'), '-CAcreateserial'].concat([
        '-days',
        '30',
        ...(extfile ? ['-extfile', extfile] : []),
        '-out',
        p(`${name}.crt`),
      ]),
    );
  };
  await signed('server', '/CN=kube-apiserver', p('server.ext'));
  await ssl(['genrsa', '-out', p('sa.key'), '2048']);
  await ssl(['rsa', '-in', p('sa.key'), '-pubout', '-out', p('sa.pub')]);
  await signed('kubelet-client', '/O=system:masters/CN=kube-apiserver-kubelet-client');
  await writeFile(
    p('tokens.csv'),
    [
      `${adminToken},admin,admin,"system:masters"`,
      // The real node's kubelet, as the Node authorizer knows it, and its kube-proxy.
      `${nodeToken},system:node:${realNode.name},node,"system:nodes"`,
      `${proxyToken},system:kube-proxy,kube-proxy,"system:node-proxier"`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  );
  return {
    ca: p('ca.crt'),
    caPem: await readFile(p('ca.crt'), 'utf8'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    saKey: p('sa.key'),
    saPub: p('sa.pub'),
    tokens: p('tokens.csv'),
    kubeletClientCert: p('kubelet-client.crt'),
    kubeletClientKey: p('kubelet-client.key'),
  };
}

/** Ports on loopback that nothing listens on at the moment. */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from(
      { length: count },
      () =>
        new Promise<ReturnType<typeof createServer>>((resolve, reject) => {
          const server = createServer();
          server.once('error', reject);
          server.listen(0, '127.0.0.1', () => resolve(server));
        }),
    ),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/**
 * `count` consecutive free ports on loopback (for the lab, which relays its agents to a run of
 * ports). They are drawn below the kernel's ephemeral range (32768–60999 by default) so that
 * neither another test's freePorts() nor an outgoing connection's source port can take one of
 * them between this check and their use.
 */
export async function freePortRange(count: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * (12_000 - count));
    const bound: ReturnType<typeof createServer>[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const server = createServer();
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject);
          server.listen(base + i, '127.0.0.1', resolve);
        });
        bound.push(server);
      }
      return base;
    } catch {
      continue;
    } finally {
      await Promise.all(bound.map((s) => new Promise((resolve) => s.close(resolve))));
    }
  }
  throw new Error(`no ${count} consecutive free ports on 127.0.0.1 between 20000 and 32000 after 50 tries`);
}

function httpOk(url: string, ca?: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = (url.startsWith('https:') ? request : httpRequest)(
      url,
      { ca, headers: { authorization: `Bearer ${adminToken}` }, timeout: 2000 },
      (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      },
    );
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}
