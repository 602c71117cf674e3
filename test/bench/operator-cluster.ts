// What the operator's benchmarks share (bench:operator, bench:scale): a real control plane on
// loopback with kwok (test/cluster), the API objects of one EgressGateway serving many pods
// through many EgressPolicies, watches that timestamp each event as it arrives, the operator as the
// chart runs it from its image, and the cleanup of all of it, also on failure and on SIGINT/SIGTERM.
import { KubeConfig, Watch } from '@kubernetes/client-node';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parse } from 'yaml';
import { apiVersion } from '../../crds/index.ts';
import { sidecarContainerName } from '../../operator/compile.ts';
import { startCluster, type Cluster, type NodeSpec } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { terminate } from '../cluster/processes.ts';
import { operatorSettings, webhookObjects, type OperatorPorts } from '../cluster/operator.ts';
import { buildImage, imageArgv, type ImageBuild } from './image.ts';
import { cpuSeconds } from './process.ts';

const root = join(import.meta.dirname, '..', '..');

export const rulesPerPolicy = 5;
export const gatewayName = 'bench';
/** The operator's namespace. */
export const system = 'naat-system';
export const servedLabel = 'naat.dev/bench';
/** The most a ConfigMap's data may hold. */
export const configMapLimit = 1024 * 1024;
export const now = () => performance.now();
export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
export const namespaceName = (n: number) => `bench-${String(n).padStart(2, '0')}`;

/** How the served pods are spread: namespaces of podsPerNamespace pods, each app with a policy. */
export interface Layout {
  namespaces: number;
  podsPerNamespace: number;
  /** Apps (and policies) per namespace: a divisor of podsPerNamespace. */
  appsPerNamespace: number;
}

// ---------------------------------------------------------------------------------------------
// The objects

export function namespaceObject(n: number) {
  return {
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: { name: namespaceName(n), labels: { [servedLabel]: 'served' } },
  };
}

/** Pod `i` of namespace `n`: app `i % appsPerNamespace`, on `node`; every fifth app runs the NAA sidecar. */
export function podObject({ appsPerNamespace }: Layout, n: number, i: number, node: string, prefix = 'app') {
  const app = i % appsPerNamespace;
  const containers = [{ name: 'app', image: 'app:bench' }];
  if (app % 5 === 0) containers.push({ name: sidecarContainerName, image: 'naat-sidecar:bench' });
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: `${prefix}-${app}-${i}`,
      namespace: namespaceName(n),
      labels: { app: `app-${app}`, [servedLabel]: 'pod' },
    },
    spec: {
      nodeName: node,
      automountServiceAccountToken: false,
      terminationGracePeriodSeconds: 0,
      containers,
    },
  };
}

export function uplinkObject(n: number) {
  return {
    apiVersion,
    kind: 'Uplink',
    metadata: { name: `isp${n}` },
    spec: {
      interface: `eth${n}`,
      nextHop: { ipv4: `192.0.2.${n}` },
      snat: { addresses: [`198.51.100.${n}`] },
      healthCheck: { targets: ['9.9.9.9'] },
    },
  };
}

export const gatewayObject = {
  apiVersion,
  kind: 'EgressGateway',
  metadata: { name: gatewayName },
  spec: {
    nodeSelector: { 'naat.dev/gateway': 'true' },
    uplinks: { names: ['isp1', 'isp2', 'isp3'] },
    namespaceSelector: { matchLabels: { [servedLabel]: 'served' } },
  },
};

/**
 * Policy `app-k` of a namespace selects the pods of app k: Deny telnet (the port the changes
 * flip), Allow HTTPS to a network of its own (through isp1 or isp2 in a third of them), Allow DNS,
 * Deny curl and wget to 203.0.113.0/24 in every fifth (ICMP to a network of its own in the
 * others), Allow IPv6 web traffic (through isp3 only in a quarter).
 */
export function policyObject({ appsPerNamespace }: Layout, n: number, k: number, telnet = 23) {
  const p = n * appsPerNamespace + k;
  const rules: Record<string, unknown>[] = [
    { name: 'telnet', action: 'Deny', destinations: [{ protocol: 'TCP', ports: [{ port: telnet }, { port: 2323 }] }] },
    {
      name: 'https',
      action: 'Allow',
      destinations: [
        {
          cidr: `172.${16 + (p % 16)}.${p % 256}.0/24`,
          protocol: 'TCP',
          ports: [{ port: 443 }, { port: 8000, endPort: 8080 }],
        },
      ],
      ...(p % 3 === 0 ? { uplinks: { allowed: ['isp1', 'isp2'], preferred: ['isp1'] } } : {}),
    },
    {
      name: 'dns',
      action: 'Allow',
      destinations: [{ cidr: `10.${p % 256}.${Math.floor(p / 256)}.0/24`, protocol: 'UDP', ports: [{ port: 53 }] }],
    },
    p % 5 === 0
      ? {
          name: 'no-downloaders',
          action: 'Deny',
          applications: [{ processName: 'curl' }, { executable: '/usr/bin/wget' }],
          destinations: [{ cidr: '203.0.113.0/24', protocol: 'TCP', ports: [{ port: 443 }] }],
        }
      : { name: 'icmp', action: 'Deny', destinations: [{ cidr: `192.168.${p % 256}.0/24`, protocol: 'ICMP' }] },
    {
      name: 'web6',
      action: 'Allow',
      destinations: [
        { cidr: `2001:db8:${p.toString(16)}::/48`, protocol: 'TCP', ports: [{ port: 80 }, { port: 443 }] },
      ],
      ...(p % 4 === 0 ? { uplinks: { allowed: ['isp3'] } } : {}),
    },
  ];
  return {
    apiVersion,
    kind: 'EgressPolicy',
    metadata: { name: `app-${k}`, namespace: namespaceName(n) },
    spec: { gateway: gatewayName, podSelector: { matchLabels: { app: `app-${k}` } }, priority: 100 + k, rules },
  };
}

export const list = (items: unknown[]) => JSON.stringify({ apiVersion: 'v1', kind: 'List', items });

// ---------------------------------------------------------------------------------------------
// Helpers

export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs: number, everyMs = 200) {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    }
    await sleep(everyMs);
  }
}

/** Sockets the process holds open (its connections to the apiserver, its listeners). */
export async function sockets(pid: number): Promise<number> {
  const fds = await readdir(`/proc/${pid}/fd`);
  const links = await Promise.all(fds.map((fd) => readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')));
  return links.filter((l) => l.startsWith('socket:')).length;
}

/** Waits until the process has used at most 10 ms of CPU in 500 ms; resolves with the wait. */
export async function quiet(pid: number, timeoutMs = 30_000): Promise<number> {
  const started = now();
  const window: number[] = [];
  while (now() - started < timeoutMs) {
    window.push(await cpuSeconds(pid));
    if (window.length > 6) window.shift();
    if (window.length === 6 && window[5]! - window[0]! <= 0.01) return now() - started;
    await sleep(100);
  }
  throw new Error(`the operator was still busy after ${timeoutMs / 1000} s`);
}

export const ms = (value: number) =>
  Number.isFinite(value) ? `${value.toFixed(Math.abs(value) < 10 ? 1 : 0)} ms` : '—';
export const seconds = (value: number) => `${(value / 1000).toFixed(2)} s`;

export type WatchHandler = (type: string, object: Record<string, unknown>, at: number) => void;

/**
 * A watch of one collection through client-node's Watch, each event timestamped as it arrives.
 * Resumes from the last resourceVersion when the server or client-node's 30 s inactivity timeout
 * ends it.
 */
export class ResumingWatch {
  readonly #watch: Watch;
  readonly #path: string;
  readonly #query: Record<string, string>;
  readonly #onEvent: WatchHandler;
  #resourceVersion: string | undefined;
  #controller: AbortController | undefined;
  #stopped = false;
  restarts = 0;

  constructor(kubeConfig: KubeConfig, path: string, query: Record<string, string>, onEvent: WatchHandler) {
    this.#watch = new Watch(kubeConfig);
    this.#path = path;
    this.#query = query;
    this.#onEvent = onEvent;
  }

  /** Resolves once the apiserver has begun the response, so that no later change is missed. */
  async start(): Promise<void> {
    const query = {
      ...this.#query,
      allowWatchBookmarks: 'true',
      ...(this.#resourceVersion ? { resourceVersion: this.#resourceVersion } : {}),
    };
    const controller = await this.#watch.watch(
      this.#path,
      query,
      (type, object: Record<string, unknown> & { metadata?: { resourceVersion?: string } }) => {
        const at = now();
        // A version compacted away (410 Gone) cannot be resumed from: the next start reads the
        // current state afresh, as an informer relists, rather than asking for it again and again.
        if (type === 'ERROR' && (object as { code?: number }).code === 410) this.#resourceVersion = undefined;
        else this.#resourceVersion = object.metadata?.resourceVersion ?? this.#resourceVersion;
        if (type === 'ERROR') console.error(`watch of ${this.#path}: ${JSON.stringify(object)}`);
        else if (type !== 'BOOKMARK') this.#onEvent(type, object, at);
      },
      (error) => {
        if (this.#stopped) return;
        this.restarts++;
        if (error && (error as Error).name !== 'TimeoutError') {
          console.error(`watch of ${this.#path} ended: ${(error as Error).message}; resuming`);
        }
        this.start().catch((e: Error) => console.error(`watch of ${this.#path} could not resume: ${e.message}`));
      },
    );
    this.#controller = controller;
    // A stop() while this watch was being opened aborted the one before it.
    if (this.#stopped) controller.abort();
  }

  stop(): void {
    this.#stopped = true;
    this.#controller?.abort();
  }
}

export interface OperatorProcess {
  child: ChildProcess;
  startedAt: number;
  lines: Array<{ at: number; text: string; entry?: Record<string, unknown> }>;
  /** When the first line whose message is `msg` (and whose fields include `fields`) arrived. */
  logged(msg: string, fields?: Record<string, unknown>): number | undefined;
}

let current: BenchCluster | undefined;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => void (current?.cleanup() ?? Promise.resolve()).then(() => process.exit(130)));
}

/**
 * A control plane with kwok and the given nodes, naat's CRDs, the operator's namespace and the
 * chart's webhook objects; what runs beside it (the operator, listers, watches) is stopped by
 * cleanup().
 */
export class BenchCluster {
  readonly cluster: Cluster;
  readonly dir: string;
  readonly kubeConfig: KubeConfig;
  readonly #children: ChildProcess[] = [];
  readonly #watches: Array<{ stop(): void }> = [];
  /** The operator's image, built at its first start. */
  #image: Promise<ImageBuild> | undefined;
  #cleaning: Promise<void> | undefined;

  private constructor(cluster: Cluster, dir: string) {
    this.cluster = cluster;
    this.dir = dir;
    this.kubeConfig = new KubeConfig();
    this.kubeConfig.loadFromFile(cluster.kubeconfig);
  }

  static async start(name: string, nodes: NodeSpec[], progress: (line: string) => void): Promise<BenchCluster> {
    const dir = await mkdtemp(join(tmpdir(), `naat-bench-${name}-`));
    let cluster: Cluster;
    try {
      cluster = await startCluster({ workloads: true, nodes, progress });
    } catch (error) {
      await rm(dir, { recursive: true, force: true });
      throw error;
    }
    const bench = new BenchCluster(cluster, dir);
    current = bench;
    await installCrds(cluster.kubeconfig);
    await bench.k(['create', 'namespace', system]);
    await bench.apply(list(webhookObjects('naat-operator', system)));
    return bench;
  }

  k = (args: string[], input?: string) => this.cluster.kubectl(args, input);
  apply = (input: string) => this.k(['apply', '--server-side', '--field-manager=bench', '-f', '-'], input);

  /**
   * Served namespaces `from` to `to` - 1, and their default ServiceAccount, which the admission
   * plugin wants for pods.
   */
  async namespaces(from: number, to: number): Promise<void> {
    await this.apply(list(Array.from({ length: to - from }, (_, n) => namespaceObject(from + n))));
    await until(
      'the default ServiceAccount of every namespace',
      async () => {
        const out = await this.k([
          'get',
          'serviceaccounts',
          '-A',
          '--field-selector=metadata.name=default',
          '-o',
          'jsonpath={range .items[*]}{.metadata.namespace}{"\\n"}{end}',
        ]);
        return out.split('\n').filter((namespace) => namespace.startsWith('bench-')).length >= to ? true : undefined;
      },
      60_000,
    );
  }

  /** Applies objects in lists of `chunk`, two lists at a time. */
  async applyAll(objects: readonly unknown[], chunk = 1000): Promise<void> {
    const lists = Array.from({ length: Math.ceil(objects.length / chunk) }, (_, i) =>
      objects.slice(i * chunk, (i + 1) * chunk),
    );
    const next = async (): Promise<void> => {
      const items = lists.shift();
      if (!items) return;
      await this.apply(list(items));
      return next();
    };
    await Promise.all([next(), next()]);
  }

  /** Waits until `count` served pods are Running with an address each; resolves with the addresses. */
  async runningPods(count: number, timeoutMs: number): Promise<Set<string>> {
    const addresses = await until(
      `${count} pods Running with addresses`,
      async () => {
        const out = await this.k([
          'get',
          'pods',
          '-A',
          '-l',
          `${servedLabel}=pod`,
          '-o',
          'jsonpath={range .items[*]}{.status.phase} {.status.podIP}{"\\n"}{end}',
        ]);
        const rows = out.split('\n').filter(Boolean);
        const running = rows.filter((r) => /^Running \S+$/.test(r)).map((r) => r.split(' ')[1]!);
        return running.length === count ? new Set(running) : undefined;
      },
      timeoutMs,
      1000,
    );
    if (addresses.size !== count) throw new Error(`kwok gave ${count} pods only ${addresses.size} distinct addresses`);
    return addresses;
  }

  /** A process to stop at cleanup. */
  track(child: ChildProcess): ChildProcess {
    this.#children.push(child);
    return child;
  }

  /** A started watch, stopped at cleanup. */
  async watch(path: string, query: Record<string, string>, onEvent: WatchHandler): Promise<ResumingWatch> {
    const watch = new ResumingWatch(this.kubeConfig, path, query, onEvent);
    this.#watches.push(watch);
    await watch.start();
    return watch;
  }

  /** Stops `watch` (such as an agent's config source) at cleanup, with the watches started here. */
  stopAtCleanup(watch: { stop(): void }): void {
    this.#watches.push(watch);
  }

  /** Sums the apiserver's request counter over the series whose labels include `labels`. */
  async requests(labels: Record<string, string>): Promise<number> {
    const text = await this.k(['get', '--raw', '/metrics']);
    let sum = 0;
    for (const row of text.split('\n')) {
      if (!row.startsWith('apiserver_request_total{')) continue;
      if (Object.entries(labels).every(([key, value]) => row.includes(`${key}="${value}"`))) {
        sum += Number(row.slice(row.lastIndexOf(' ') + 1));
      }
    }
    return sum;
  }

  /**
   * The operator as the chart runs it (its image's compiled program, leader election on, the
   * chart's heap bound and young generation); its log lines are kept with their arrival times.
   */
  async startOperator(ports: OperatorPorts): Promise<OperatorProcess> {
    const file = join(this.dir, 'operator.json');
    await writeFile(file, JSON.stringify(operatorSettings('naat-operator', ports)));
    const values = parse(await readFile(join(root, 'charts', 'naat', 'values.yaml'), 'utf8')) as {
      operator: { heapLimitMiB: number; semiSpaceMiB: number };
    };
    const heap = [
      `--max-old-space-size=${values.operator.heapLimitMiB}`,
      `--max-semi-space-size=${values.operator.semiSpaceMiB}`,
    ];
    const image = await (this.#image ??= buildImage('operator'));
    const [node, ...args] = imageArgv(image);
    const lines: OperatorProcess['lines'] = [];
    const startedAt = now();
    const child = this.track(
      spawn(node!, args, {
        cwd: image.app,
        env: {
          ...process.env,
          ...image.env,
          KUBECONFIG: this.cluster.kubeconfig,
          NAAT_CONFIG: file,
          NAAT_NAMESPACE: system,
          NAAT_POD_NAME: 'operator-bench',
          NODE_OPTIONS: [process.env.NODE_OPTIONS, image.nodeOptions, ...heap].filter(Boolean).join(' '),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      }),
    );
    const keep = (text: string) => {
      const at = now();
      let entry: Record<string, unknown> | undefined;
      try {
        entry = JSON.parse(text) as Record<string, unknown>;
      } catch {
        // Not one of its JSON lines (a Node warning, a stack).
      }
      lines.push({ at, text, ...(entry ? { entry } : {}) });
    };
    createInterface({ input: child.stdout! }).on('line', keep);
    createInterface({ input: child.stderr! }).on('line', keep);
    const logged = (msg: string, fields: Record<string, unknown> = {}) =>
      lines.find((l) => l.entry?.msg === msg && Object.entries(fields).every(([key, v]) => l.entry![key] === v))?.at;
    return { child, startedAt, lines, logged };
  }

  cleanup(): Promise<void> {
    this.#cleaning ??= (async () => {
      const step = async (what: string, work: () => Promise<unknown>) =>
        work().catch((error: Error) => console.error(`cleanup: ${what}: ${error.message}`));
      for (const watch of this.#watches) watch.stop();
      for (const child of this.#children.reverse()) await step('a process', () => terminate(child));
      await step('the control plane', () => this.cluster.stop());
      await step('the temporary folder', () => rm(this.dir, { recursive: true, force: true }));
      const image = await this.#image?.catch(() => undefined);
      if (image) await step("the operator's image", () => rm(image.app, { recursive: true, force: true }));
    })();
    return this.#cleaning;
  }
}
