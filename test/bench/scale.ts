// Scale benchmark (`npm run bench:scale`; --quick, --smoke, --json: test/bench/harness.ts; --pods,
// --changes, --churn-seconds below): how the distribution of the compiled configs grows with
// served pods, policies and nodes. A real control plane on loopback with kwok (test/cluster) grows
// through the sizes asked for (served pods; nodes and policies in the issue's proportions: 50 pods
// a node, 10 a policy, 5 rules each; test/bench/scale-figures.ts), one EgressGateway on 2 gateway
// nodes serves every pod, and every other node hosts served pods. The agents are stood in for by
// watchers that read what each agent reads, timestamping each event: one per gateway node on the
// gateway's index and each slice it names, one per other node on its node's ConfigMap. At each size a fresh
// operator (node operator/main.ts, as the chart runs it) resyncs, and then:
//  1. objects: the largest object the operator writes against the limit the apiserver holds it to
//     (a ConfigMap's data 1 MiB, any object 1.5 MiB as etcd takes it);
//  2. resync: operator start → every watcher holds its complete data;
//  3. policy changes (kubectl apply of one rule's port, each once the operator is idle): kubectl's
//     return → the change at every affected node's watcher (the gateway nodes': node configs hold
//     no rules), what each watcher received against what it needed (the changed pieces), and the
//     operator's CPU per change;
//  4. pod churn: pods created at 100/s and each deleted 1 s after its creation, for a few seconds:
//     the last change → every watcher back at the data it held before (the churn nets to nothing),
//     the versions and bytes delivered against those needed, the operator's CPU per pod change;
//  5. the operator's memory (VmRSS, peak VmHWM) after its resync and at the end.
// A figure that could not be measured fails the run (test/bench/harness.ts). Nothing leaves
// loopback; it stops what it started and removes its folders, also on failure and on SIGINT/SIGTERM.
import { CoreV1Api } from '@kubernetes/client-node';
import {
  agentConfigKey,
  assembleConfig,
  configIndexKey,
  configSliceKey,
  configSliceLabel,
  sliceHash,
  type ConfigIndex,
  type GatewayConfig,
  type NodeConfig,
} from '../../contracts/gateway/index.ts';
import { nodeConfigName, objectName } from '../../operator/desired.ts';
import { applyKwokNodes, freePorts, nodesReady, type NodeSpec } from '../cluster/cluster.ts';
import { terminate, waitFor } from '../cluster/processes.ts';
import { percentile, positiveInteger, runBenchmark, type Bench, type Goal } from './harness.ts';
import {
  BenchCluster,
  gatewayName,
  gatewayObject,
  list,
  ms,
  namespaceName,
  now,
  podObject,
  policyObject,
  quiet,
  rulesPerPolicy,
  sleep,
  system,
  uplinkObject,
  type OperatorProcess,
} from './operator-cluster.ts';
import { cpuSeconds, memory } from './process.ts';
import {
  changedBytes,
  gatewayNodes,
  parseSizes,
  pieces,
  shapeOf,
  sizeAgainstLimit,
  type Shape,
  type StoredObject,
} from './scale-figures.ts';

interface Size {
  /** Served pods at each size, growing. */
  pods: number[];
  /** Policy changes at each size. */
  changes: number;
  /** How long pods are created (and deleted) at 100/s at each size. */
  churnSeconds: number;
}

const churnRate = 100;
/** A churned pod lives this long: it is deleted churnLifeMs after its creation. */
const churnLifeMs = 1000;
const progress = (text: string) => process.stderr.write(`  ${text}\n`);
const gatewayNodeNames = Array.from({ length: gatewayNodes }, (_, i) => `gateway-${String.fromCharCode(97 + i)}`);
const workerName = (i: number) => `worker-${String(i).padStart(4, '0')}`;
/**
 * Each worker's pods get addresses from a /24 of its own (kwok's default pool has too few), and
 * the node an InternalIP: without one it cannot be a tunnel's end, and gets no node config.
 */
const workerNode = (i: number): NodeSpec => ({
  name: workerName(i),
  podCIDR: `10.${128 + Math.floor(i / 256)}.${i % 256}.0/24`,
  addresses: [`100.64.${Math.floor(i / 250)}.${(i % 250) + 1}`],
});

const objectsGoal: Goal = {
  bound: 'max',
  value: 25,
  source: 'scale issue, goal 1: no object exceeds 25 % of its size limit',
};
const applyGoal = (pods: number): Goal | undefined =>
  pods === 1000
    ? { bound: 'max', value: 200, source: 'scale issue, goal 2: apply → kernel p99 ≤ 200 ms at 1k pods' }
    : pods === 50_000
      ? { bound: 'max', value: 1000, source: 'scale issue, goal 2: apply → kernel p99 ≤ 1 s at 50k pods' }
      : undefined;
const settleGoal: Goal = {
  bound: 'max',
  value: 2000,
  source: 'scale issue, goal 2: steady state within 2 s of the last change of a 100 pods/s churn',
};
const rssGoal = (pods: number): Goal | undefined =>
  pods === 50_000
    ? { bound: 'max', value: 300, source: 'scale issue, goal 3: operator RSS ≤ 300 MiB at 50k pods' }
    : undefined;

/** One event a watcher received: when, its size on the wire (the watch event as JSON), what it had to tell. */
interface Delivery {
  at: number;
  bytes: number;
  /** The bytes of the pieces of the config that changed (scale-figures.ts). */
  needed: number;
  hash: string | undefined;
  /** The ConfigMap the event was of. */
  configMap: string;
}

/**
 * Stands in for one agent: watches the ConfigMaps that agent reads (get and watch by name, as its
 * Role allows) and records each delivery. A node agent reads its node's ConfigMap; a gateway agent
 * its gateway's index and each slice the index names, and holds a new config once every slice
 * matches the index (dataplane/config-source.ts).
 */
class AgentWatcher {
  readonly node: string;
  readonly role: 'gateway' | 'source';
  readonly configMap: string;
  readonly deliveries: Delivery[] = [];
  latest: GatewayConfig | NodeConfig | undefined;
  #pieces = new Map<string, number>();
  #index: ConfigIndex | undefined;
  readonly #slices = new Map<string, { text: string; hash: string }>();
  /** Starts a watch of a slice the index names, once. */
  readonly #follow: (configMap: string) => void;

  constructor(node: string, role: 'gateway' | 'source', follow: (configMap: string) => void) {
    this.node = node;
    this.role = role;
    this.configMap = role === 'gateway' ? objectName(gatewayName) : nodeConfigName(node);
    this.#follow = follow;
  }

  receive(type: string, object: Record<string, unknown>, at: number): void {
    const data = type === 'DELETED' ? undefined : (object.data as Record<string, string> | undefined);
    const name = (object.metadata as { name: string }).name;
    const next = this.role === 'gateway' ? this.#gatewayConfig(name, data) : this.#nodeConfig(data);
    let needed = 0;
    if (next !== this.latest) {
      this.latest = next;
      const now = next ? pieces(next) : new Map<string, number>();
      needed = changedBytes(this.#pieces, now);
      this.#pieces = now;
    }
    this.deliveries.push({
      at,
      bytes: Buffer.byteLength(JSON.stringify({ type, object })),
      needed,
      hash: this.latest?.hash,
      configMap: name,
    });
  }

  #nodeConfig(data: Record<string, string> | undefined): NodeConfig | undefined {
    const text = data?.[agentConfigKey];
    return text === undefined ? undefined : (JSON.parse(text) as NodeConfig);
  }

  /** The config the gateway agent holds after this event: a new one only once its slices are complete. */
  #gatewayConfig(name: string, data: Record<string, string> | undefined): GatewayConfig | NodeConfig | undefined {
    if (name === this.configMap) {
      const text = data?.[configIndexKey];
      if (text === undefined) return (this.#index = undefined);
      this.#index = JSON.parse(text) as ConfigIndex;
      for (const slice of this.#index.slices) this.#follow(slice.name);
    } else {
      const text = data?.[configSliceKey];
      if (text === undefined) this.#slices.delete(name);
      else this.#slices.set(name, { text, hash: sliceHash(text) });
    }
    const index = this.#index;
    if (!index || !index.slices.every((s) => this.#slices.get(s.name)?.hash === s.hash)) return this.latest;
    if (this.latest?.hash === index.hash) return this.latest;
    return assembleConfig(index, new Map(index.slices.map((s) => [s.name, this.#slices.get(s.name)!.text])));
  }

  since(at: number): Delivery[] {
    return this.deliveries.filter((d) => d.at >= at);
  }
}

interface ServedPod {
  node: string;
  ip: string;
}

/** The operator's reconciles so far by controller, from its metrics. */
async function reconciles(metricsPort: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const counts = new Map<string, number>();
  for (const [, controller, count] of text.matchAll(
    /^naat_operator_reconcile_total\{[^}]*controller="([^"]+)"[^}]*\} (\S+)$/gm,
  )) {
    counts.set(controller!, (counts.get(controller!) ?? 0) + Number(count));
  }
  return counts;
}

/** The served pods Running with an address, as the apiserver has them. */
async function servedPods(bc: BenchCluster): Promise<ServedPod[]> {
  const out = await bc.k([
    'get',
    'pods',
    '-A',
    '-l',
    'naat.dev/bench=pod',
    '-o',
    'jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.status.podIP}{"\\n"}{end}',
  ]);
  return out
    .split('\n')
    .map((row) => row.split(' '))
    .filter(([, phase, ip]) => phase === 'Running' && ip)
    .map(([node, , ip]) => ({ node: node!, ip: ip! }));
}

/**
 * Rejects once the operator logs that the apiserver refused an object as too large (a ConfigMap's
 * data over 1 MiB, an object over etcd's limit): the size at which today's design stops working.
 */
async function refused(op: OperatorProcess): Promise<never> {
  const tooLarge =
    /must have at most \d+ bytes|may not be more than \d+ bytes|request entity too large|request is too large/i;
  for (;;) {
    const line = op.lines.find((l) => l.entry?.level === 'error' && tooLarge.test(String(l.entry.error ?? '')));
    if (line) {
      const error = String(line.entry!.error).replace(/[\\"]/g, '');
      const at = error.search(tooLarge);
      const message = error.slice(Math.max(0, error.lastIndexOf('message:', at)), at + 40);
      throw new Error(`the apiserver refused what the ${String(line.entry!.controller)} controller wrote: ${message}`);
    }
    // An operator killed by a signal has no exit code: without its signal, this went on forever and
    // the bench never exited after a failure.
    if (op.child.exitCode !== null || op.child.signalCode !== null) return new Promise<never>(() => {});
    await sleep(1000);
  }
}

const sum = (values: readonly number[]) => values.reduce((a, b) => a + b, 0);

class ScaleRun {
  readonly #bench: Bench;
  readonly #bc: BenchCluster;
  readonly #size: Size;
  readonly #watchers = new Map<string, AgentWatcher>();
  #wake: () => void = () => {};
  /** Watches that could not start: a run with any fails. */
  readonly #failures: string[] = [];
  #shape: Shape | undefined;
  #changeCount = 0;
  readonly summary: string[] = [];

  constructor(bench: Bench, bc: BenchCluster, size: Size) {
    this.#bench = bench;
    this.#bc = bc;
    this.#size = size;
  }

  get #watcherList() {
    return [...this.#watchers.values()];
  }

  async #watchAgent(node: string, role: AgentWatcher['role']): Promise<void> {
    if (this.#watchers.has(node)) return;
    const followed = new Set<string>();
    const watch = (configMap: string) =>
      this.#bc.watch(
        `/api/v1/namespaces/${system}/configmaps`,
        { fieldSelector: `metadata.name=${configMap}` },
        (type, object, at) => {
          watcher.receive(type, object, at);
          this.#wake();
        },
      );
    const watcher: AgentWatcher = new AgentWatcher(node, role, (slice) => {
      if (followed.has(slice)) return;
      followed.add(slice);
      watch(slice).catch((error: Error) => this.#failures.push(`watch of ${slice}: ${error.message}`));
    });
    this.#watchers.set(node, watcher);
    await watch(watcher.configMap);
  }

  /**
   * Resolves once `done` holds, checked at each delivery and every second; rejects after timeoutMs,
   * or once `stop` is aborted (a race it was in ended otherwise: its loop would keep the bench
   * running after a failure until the deadline).
   */
  async #until(what: string, done: () => boolean, timeoutMs: number, stop?: AbortSignal): Promise<void> {
    const deadline = now() + timeoutMs;
    while (!done()) {
      if (stop?.aborted) throw new Error(`stopped waiting for ${what}`);
      if (this.#failures.length) throw new Error(this.#failures.join('; '));
      if (now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 1000);
      });
    }
  }

  /** Grows the cluster to `pods` served pods with their nodes, namespaces and policies. */
  async grow(pods: number): Promise<Shape> {
    const from = this.#shape;
    const shape = shapeOf(pods);
    const started = now();
    const newWorkers = Array.from({ length: shape.workers - (from?.workers ?? 0) }, (_, i) =>
      workerNode((from?.workers ?? 0) + i),
    );
    await applyKwokNodes(this.#bc.k, newWorkers);
    await waitFor('nodes Ready', () => nodesReady(this.#bc.k), 300_000);
    await this.#bc.namespaces(from?.namespaces ?? 0, shape.namespaces);
    const podObjects = [];
    for (let n = from?.namespaces ?? 0; n < shape.namespaces; n++) {
      for (let i = 0; i < shape.podsPerNamespace; i++) {
        const node = workerName((n * shape.podsPerNamespace + i) % shape.workers);
        podObjects.push(podObject(shape, n, i, node));
      }
    }
    await this.#bc.applyAll(podObjects);
    await this.#bc.runningPods(pods, 600_000);
    const policies = [];
    for (let n = from?.namespaces ?? 0; n < shape.namespaces; n++) {
      for (let a = 0; a < shape.appsPerNamespace; a++) policies.push(policyObject(shape, n, a));
    }
    await this.#bc.applyAll(policies, 500);
    for (const node of gatewayNodeNames) await this.#watchAgent(node, 'gateway');
    for (let i = 0; i < shape.workers; i++) await this.#watchAgent(workerName(i), 'source');
    this.#shape = shape;
    progress(
      `Grew to ${pods} pods on ${shape.workers} + ${gatewayNodes} nodes, ${shape.policies} policies ` +
        `(${((now() - started) / 1000).toFixed(0)} s)`,
    );
    return shape;
  }

  /** Whether every watcher holds the data its agent needs for the pods and policies now Running. */
  #complete(pods: readonly ServedPod[], policies: number): boolean {
    return this.#incomplete(pods, policies).length === 0;
  }

  /** The watchers that lack some of that data, each with what it holds against what it needs. */
  #incomplete(pods: readonly ServedPod[], policies: number): string[] {
    const perNode = new Map<string, number>();
    for (const pod of pods) perNode.set(pod.node, (perNode.get(pod.node) ?? 0) + 1);
    return this.#watcherList.flatMap((w) => {
      if (w.role === 'gateway') {
        const config = w.latest as GatewayConfig | undefined;
        const sources = config?.sources.length ?? 0;
        const rules = config?.rules.length ?? 0;
        return sources === pods.length && rules === policies * rulesPerPolicy
          ? []
          : [`${w.node}: ${sources} of ${pods.length} sources, ${rules} of ${policies * rulesPerPolicy} rules`];
      }
      const held = sum((w.latest as NodeConfig | undefined)?.gateways.map((g) => g.pods.length) ?? []);
      const needed = perNode.get(w.node) ?? 0;
      return held === needed ? [] : [`${w.node}: ${held} of ${needed} pods`];
    });
  }

  async measure(shape: Shape): Promise<void> {
    const bench = this.#bench;
    const key = (name: string) => `${shape.pods}-pods.${name}`;
    const gatewayWatchers = this.#watcherList.filter((w) => w.role === 'gateway');
    const sourceWatchers = this.#watcherList.filter((w) => w.role === 'source');
    bench.section(
      `\n${shape.pods} served pods (kwok, Running) in ${shape.namespaces} namespaces on ${shape.workers} nodes, ` +
        `one EgressGateway on ${gatewayNodes} more, ${shape.policies} EgressPolicies × ${rulesPerPolicy} rules; ` +
        `${gatewayWatchers.length} gateway-node watchers, ${sourceWatchers.length} node watchers`,
    );

    // 2. The resync of a fresh operator.
    const pods = await servedPods(this.#bc);
    const [metricsPort, healthPort, webhookPort] = await freePorts(3);
    const op = await this.#bc.startOperator({ metrics: metricsPort!, health: healthPort!, webhook: webhookPort! });
    const pid = op.child.pid!;
    try {
      const lastLines = () => op.lines.slice(-5).map((l) => l.text.slice(0, 400));
      const exited = new Promise<never>((_, reject) =>
        op.child.once('exit', (code, signal) =>
          reject(new Error(`the operator exited (${code ?? signal}); its last lines:\n${lastLines().join('\n')}`)),
        ),
      );
      const refusal = refused(op);
      for (const ending of [exited, refusal]) ending.catch(() => undefined);
      const raced = new AbortController();
      await Promise.race([
        this.#until(
          'every watcher to hold its complete data',
          () => this.#complete(pods, shape.policies),
          600_000,
          raced.signal,
        ).catch((error: Error) => {
          const short = this.#incomplete(pods, shape.policies);
          throw new Error(
            `${error.message}: ${short.length} watchers short (${short.slice(0, 5).join('; ')}); ` +
              `the operator's last lines:\n${lastLines().join('\n')}`,
          );
        }),
        exited,
        refusal,
      ]).finally(() => raced.abort());
      await this.#measureResync(shape, op, key);
      // An operator that exits from here on is named as such, with its last lines, rather than by
      // the failure of whatever step next reads its process.
      await Promise.race([
        (async () => {
          // After the configs, the steering controller writes each served pod's Steered condition
          // and its Event (the stand-in agents never report): 50,000 pods kept it busy for over 300 s.
          await quiet(pid, Math.max(300_000, 30 * shape.pods));
          const resyncVm = await memory(pid);
          const resyncCpu = await cpuSeconds(pid);
          await this.#objects(key);
          await this.#changes(shape, op, metricsPort!, key);
          await this.#churn(shape, pid, key);
          const endVm = await memory(pid);
          this.#memoryFigures(shape, key, resyncVm, endVm, resyncCpu);
        })(),
        exited,
      ]);
      const errors = op.lines.filter((l) => l.entry?.level === 'error' || (!l.entry && l.text.trim()));
      if (errors.length) {
        bench.note(`the operator logged ${errors.length} errors or other lines; the first:`);
        for (const l of errors.slice(0, 3)) bench.note(`  ${String(l.entry?.error ?? l.text).slice(0, 600)}`);
      }
    } finally {
      await terminate(op.child);
    }
  }

  async #measureResync(shape: Shape, op: OperatorProcess, key: (name: string) => string): Promise<void> {
    const bench = this.#bench;
    const since = (at: number) => at - op.startedAt;
    // Each watcher's data counts as complete from its last delivery so far; one that received
    // nothing held it already (its ConfigMap did not change since the last size).
    const doneAt = (w: AgentWatcher) => w.since(op.startedAt).at(-1)?.at ?? op.startedAt;
    const gateway = this.#watcherList.filter((w) => w.role === 'gateway');
    const nodes = this.#watcherList.filter((w) => w.role === 'source');
    bench.section('  resync (operator spawned → the watcher holds its complete data):');
    bench.figure({
      key: key('resync.gateway-nodes'),
      label: 'every gateway node',
      value: Math.max(...gateway.map((w) => since(doneAt(w)))),
      unit: 'ms',
      note: `"Started leading" after ${ms(since(op.logged('Started leading') ?? NaN))}`,
    });
    const nodeTimes = nodes.map((w) => since(doneAt(w)));
    bench.figure({
      key: key('resync.nodes'),
      label: `every other node (${nodes.length})`,
      value: Math.max(...nodeTimes),
      unit: 'ms',
      note: `p50 ${ms(percentile(nodeTimes, 0.5))}`,
    });
    const received = (w: AgentWatcher) => sum(w.since(op.startedAt).map((d) => d.bytes));
    const gatewayBytes = gateway.map(received);
    const nodeBytes = nodes.map(received);
    bench.figure({
      key: key('resync.gateway-node-received'),
      label: 'received by one gateway node (every version, whole watch events)',
      value: Math.max(...gatewayBytes),
      unit: 'B',
      digits: 0,
      note: `${Math.max(...gateway.map((w) => w.since(op.startedAt).length))} versions`,
    });
    bench.figure({
      key: key('resync.node-received'),
      label: 'received by one other node, the most',
      value: Math.max(...nodeBytes),
      unit: 'B',
      digits: 0,
      note: `p50 ${percentile(nodeBytes, 0.5).toFixed(0)} B; all ${nodes.length} nodes ${sum(nodeBytes)} B`,
    });
  }

  /** 1. The objects in the operator's namespace and the gateway, each against its limit. */
  async #objects(key: (name: string) => string): Promise<void> {
    const bench = this.#bench;
    const read = async (args: string[]) =>
      (
        JSON.parse(await this.#bc.k(['get', ...args, '-o', 'json', '--show-managed-fields'])) as {
          items: StoredObject[];
        }
      ).items;
    const objects = [
      ...(await read(['configmaps,roles,daemonsets,serviceaccounts,rolebindings', '-n', system])),
      ...(await read(['egressgateways'])),
    ];
    const sized = objects
      .map((o) => ({ o, ...sizeAgainstLimit(o) }))
      .sort((a, b) => b.bytes / b.limit - a.bytes / a.limit);
    const largest = sized[0]!;
    const named = (s: (typeof sized)[number]) => `${s.o.kind} ${s.o.metadata.name}`;
    const gatewayConfig = sized.find((s) => s.o.kind === 'ConfigMap' && s.o.metadata.name === objectName(gatewayName));
    const slices = sized.filter(
      (s) => s.o.kind === 'ConfigMap' && s.o.metadata.labels?.[configSliceLabel] !== undefined,
    );
    const nodeConfigs = sized.filter((s) => s.o.kind === 'ConfigMap' && s.o.metadata.name.startsWith('naat-node-'));
    const byName = (kind: string, name: string) => sized.find((s) => s.o.kind === kind && s.o.metadata.name === name);
    bench.section('  objects (as the apiserver stores them, against their limit):');
    bench.figure({
      key: key('objects.largest'),
      label: 'the largest, against its limit',
      value: (100 * largest.bytes) / largest.limit,
      unit: '%',
      goal: objectsGoal,
      note: `${named(largest)}, ${largest.bytes} B of ${largest.limit} B`,
    });
    const size = (name: string, label: string, s: (typeof sized)[number] | undefined, note = '') =>
      bench.figure({
        key: key(`objects.${name}`),
        label,
        value: s?.bytes ?? NaN,
        unit: 'B',
        digits: 0,
        note: [s ? `${((100 * s.bytes) / s.limit).toFixed(1)} % of its limit` : '', note].filter(Boolean).join('; '),
      });
    const config = this.#watcherList.find((w) => w.role === 'gateway')?.latest as GatewayConfig | undefined;
    size(
      'gateway-config',
      `ConfigMap ${objectName(gatewayName)} (the config's index)`,
      gatewayConfig,
      config
        ? `the whole config: ${Buffer.byteLength(JSON.stringify(config))} B; pods ${Buffer.byteLength(JSON.stringify(config.pods))} B, ` +
            `rules ${Buffer.byteLength(JSON.stringify(config.rules))} B, bypass ${Buffer.byteLength(JSON.stringify(config.bypass))} B`
        : '',
    );
    size('gateway-slice', "the largest of the config's slices", slices[0], `${slices.length} slices`);
    const largestNode = nodeConfigs[0];
    size('node-config', 'the largest node ConfigMap (data)', largestNode, `${nodeConfigs.length} of them`);
    size('node-role', 'Role naat-node (resourceNames: every node ConfigMap)', byName('Role', 'naat-node'));
    size('node-daemonset', 'DaemonSet naat-node (node affinity: every node by name)', byName('DaemonSet', 'naat-node'));
    size('gateway', `EgressGateway ${gatewayName}`, byName('EgressGateway', gatewayName));
  }

  /** 3. Policy changes, each once the operator is idle. */
  async #changes(shape: Shape, op: OperatorProcess, metricsPort: number, key: (name: string) => string): Promise<void> {
    const bench = this.#bench;
    const pid = op.child.pid!;
    const reconcilesBefore = await reconciles(metricsPort);
    const gateway = this.#watcherList.filter((w) => w.role === 'gateway');
    const nodes = this.#watcherList.filter((w) => w.role === 'source');
    const samples: Array<{ toNodes: number; fromStart: number; received: number; needed: number }> = [];
    let cpu = 0;
    const nodeDeliveriesBefore = sum(nodes.map((w) => w.deliveries.length));
    for (let i = 0; i < this.#size.changes; i++) {
      const p = (i * 41) % shape.policies;
      const n = Math.floor(p / shape.appsPerNamespace);
      const a = p % shape.appsPerNamespace;
      const policy = `${namespaceName(n)}/app-${a}`;
      // A port no change used before, so that each change is one to the config.
      const port = 1000 + this.#changeCount++;
      await quiet(pid, 120_000);
      const cpuBefore = await cpuSeconds(pid);
      const start = now();
      await this.#bc.apply(JSON.stringify(policyObject(shape, n, a, port)));
      const returned = now();
      const holds = (w: AgentWatcher) =>
        (w.latest as GatewayConfig | undefined)?.rules.some(
          (r) => r.policy === policy && r.rule === 'telnet' && r.destinations?.[0]?.ports?.[0]?.port === port,
        ) === true;
      await this.#until(`policy change ${i + 1} at the gateway nodes`, () => gateway.every(holds), 60_000);
      const arrived = gateway.map((w) => w.deliveries.find((d) => d.at >= start && d.hash === w.latest?.hash)!);
      samples.push({
        toNodes: Math.max(...arrived.map((d) => d.at)) - returned,
        fromStart: Math.max(...arrived.map((d) => d.at)) - start,
        received: sum(gateway[0]!.since(start).map((d) => d.bytes)),
        needed: sum(gateway[0]!.since(start).map((d) => d.needed)),
      });
      await quiet(pid, 120_000);
      cpu += (await cpuSeconds(pid)) - cpuBefore;
    }
    const unneeded = sum(nodes.map((w) => w.deliveries.length)) - nodeDeliveriesBefore;
    const goal = applyGoal(shape.pods);
    bench.section(
      `  ${samples.length} policy changes (one rule's port, kubectl apply --server-side), each once the operator was idle:`,
    );
    const toNodes = samples.map((s) => s.toNodes);
    for (const q of [0.5, 0.99]) {
      bench.figure({
        key: key(`apply.to-nodes.p${q * 100}`),
        label: `kubectl returned → the change at every affected node (the gateway nodes), p${q * 100}`,
        value: percentile(toNodes, q),
        unit: 'ms',
        ...(goal && q === 0.99 ? { goal } : {}),
        ...(q === 0.99
          ? {
              note: `from kubectl's start p99 ${ms(
                percentile(
                  samples.map((s) => s.fromStart),
                  0.99,
                ),
              )}`,
            }
          : {}),
      });
    }
    bench.figure({
      key: key('apply.gateway-needed'),
      label: 'what a gateway node needed of a change (its changed pieces), mean',
      value: sum(samples.map((s) => s.needed)) / samples.length,
      unit: 'B',
      digits: 0,
    });
    bench.figure({
      key: key('apply.gateway-received'),
      label: 'what it received (whole watch events), mean',
      value: sum(samples.map((s) => s.received)) / samples.length,
      unit: 'B',
      digits: 0,
      baseline: key('apply.gateway-needed'),
      note: `other nodes received ${unneeded} events during the changes (they need none: node configs hold no rules)`,
    });
    const reconcilesAfter = await reconciles(metricsPort);
    const perChange = [...reconcilesAfter]
      .map(
        ([controller, count]) =>
          [controller, (count - (reconcilesBefore.get(controller) ?? 0)) / samples.length] as const,
      )
      .filter(([, count]) => count > 0)
      .map(([controller, count]) => `${controller} ${count.toFixed(1)}`);
    bench.figure({
      key: key('apply.operator-cpu'),
      label: 'operator CPU per change (apply → idle again)',
      value: (1000 * cpu) / samples.length,
      unit: 'ms',
      note: `reconciles per change: ${perChange.join(', ') || 'none'}`,
    });
  }

  /** 4. Pods created at 100/s, each deleted 1 s later, in the served namespaces on the workers. */
  async #churn(shape: Shape, pid: number, key: (name: string) => string): Promise<void> {
    const bench = this.#bench;
    const core = this.#bc.kubeConfig.makeApiClient(CoreV1Api);
    const count = churnRate * this.#size.churnSeconds;
    const before = new Map(this.#watcherList.map((w) => [w.node, w.latest?.hash]));
    await quiet(pid, 120_000);
    const cpuBefore = await cpuSeconds(pid);
    const failures: string[] = [];
    const fail = (what: string) => (error: Error) => void failures.push(`${what}: ${error.message}`);
    const started = now();
    let lastCreated = started;
    const created: Array<Promise<unknown>> = [];
    const deleted: Array<Promise<unknown>> = [];
    const remove = (j: number) => {
      const pod = podObject(shape, j % shape.namespaces, j, '', `churn${shape.pods}`);
      deleted.push(
        created[j]!.then(() =>
          core
            .deleteNamespacedPod({ name: pod.metadata.name, namespace: pod.metadata.namespace, gracePeriodSeconds: 0 })
            .catch(fail(`delete ${pod.metadata.name}`)),
        ),
      );
    };
    const lifeInPods = (churnLifeMs * churnRate) / 1000;
    for (let j = 0; j < count + lifeInPods; j++) {
      await sleep(Math.max(0, started + (j * 1000) / churnRate - now()));
      if (j < count) {
        const pod = podObject(shape, j % shape.namespaces, j, workerName(j % shape.workers), `churn${shape.pods}`);
        created.push(
          core
            .createNamespacedPod({ namespace: pod.metadata.namespace, body: pod })
            .then(() => (lastCreated = now()), fail(`create ${pod.metadata.name}`)),
        );
      }
      if (j >= lifeInPods) remove(j - lifeInPods);
    }
    await Promise.all(created);
    await Promise.all(deleted);
    const lastChange = now();
    if (failures.length) throw new Error(`${failures.length} churn requests failed, the first: ${failures[0]}`);
    progress(`Churned ${count} pods in ${((lastChange - started) / 1000).toFixed(1)} s; waiting for the watchers`);
    const back = () => this.#watcherList.every((w) => w.latest?.hash === before.get(w.node));
    let settled = true;
    await this.#until('every watcher back at its data before the churn', back, 120_000).catch((error: Error) => {
      console.error(`  (${error.message})`);
      settled = false;
    });
    await quiet(pid, 120_000).catch(() => undefined);
    const cpu = (await cpuSeconds(pid)) - cpuBefore;
    const during = (w: AgentWatcher) => w.since(started);
    const lastAt = Math.max(...this.#watcherList.map((w) => during(w).at(-1)?.at ?? -Infinity));
    const gateway = this.#watcherList.filter((w) => w.role === 'gateway');
    const nodes = this.#watcherList.filter((w) => w.role === 'source');
    bench.section(
      `  pod churn: ${count} pods created at ${churnRate}/s (achieved ${((1000 * count) / (lastCreated - started)).toFixed(0)}/s), ` +
        `each deleted ${churnLifeMs} ms after its creation:`,
    );
    bench.figure({
      key: key('churn.settle'),
      label: 'last change → every watcher back at its data before the churn',
      value: settled ? Math.max(0, lastAt - lastChange) : NaN,
      unit: 'ms',
      goal: settleGoal,
    });
    // Which side was last back: the gateway's config (its compile) or the node configs (steering).
    for (const [list, side, label] of [
      [gateway, 'gateway-nodes', 'gateway nodes'],
      [nodes, 'nodes', 'the other nodes'],
    ] as const) {
      const at = Math.max(...list.map((w) => during(w).at(-1)?.at ?? -Infinity));
      bench.figure({
        key: key(`churn.settle-${side}`),
        label: `of that, ${label}: last change → back (none changed: 0)`,
        value: settled ? (Number.isFinite(at) ? Math.max(0, at - lastChange) : 0) : NaN,
        unit: 'ms',
      });
    }
    const versions = during(gateway[0]!);
    const ofIndex = versions.filter((d) => d.configMap === objectName(gatewayName)).length;
    bench.figure({
      key: key('churn.gateway-versions'),
      label: `ConfigMap versions one gateway node received for ${2 * count} pod changes`,
      value: versions.length,
      unit: '',
      digits: 0,
      note: `${ofIndex} of the index, ${versions.length - ofIndex} of slices`,
    });
    const needed = (list: AgentWatcher[]) => sum(list.flatMap((w) => during(w).map((d) => d.needed)));
    const received = (list: AgentWatcher[]) => sum(list.flatMap((w) => during(w).map((d) => d.bytes)));
    bench.figure({
      key: key('churn.gateway-needed'),
      label: 'what one gateway node needed of the churn (changed pieces)',
      value: needed([gateway[0]!]),
      unit: 'B',
      digits: 0,
    });
    bench.figure({
      key: key('churn.gateway-received'),
      label: 'what it received',
      value: received([gateway[0]!]),
      unit: 'B',
      digits: 0,
      baseline: key('churn.gateway-needed'),
    });
    bench.figure({
      key: key('churn.nodes-needed'),
      label: `what the ${nodes.length} other nodes needed, all together`,
      value: needed(nodes),
      unit: 'B',
      digits: 0,
    });
    bench.figure({
      key: key('churn.nodes-received'),
      label: 'what they received',
      value: received(nodes),
      unit: 'B',
      digits: 0,
      baseline: key('churn.nodes-needed'),
      note: `${sum(nodes.map((w) => during(w).length))} events`,
    });
    bench.figure({
      key: key('churn.operator-cpu'),
      label: 'operator CPU per pod change (created or deleted), to idle again',
      value: (1000 * cpu) / (2 * count),
      unit: 'ms',
      note: `${cpu.toFixed(1)} s in all`,
    });
  }

  #memoryFigures(
    shape: Shape,
    key: (name: string) => string,
    resync: { rss: number; peak: number },
    end: { rss: number; peak: number },
    resyncCpu: number,
  ): void {
    const bench = this.#bench;
    bench.section("  the operator (with the chart's heap bound, as the chart runs it):");
    bench.figure({
      key: key('operator.rss-resync'),
      label: 'VmRSS after its resync',
      value: resync.rss,
      unit: 'MiB',
      digits: 0,
      note: `resync took ${resyncCpu.toFixed(1)} s of CPU`,
    });
    bench.figure({
      key: key('operator.rss-end'),
      label: 'VmRSS after the changes and the churn',
      value: end.rss,
      unit: 'MiB',
      digits: 0,
      ...(rssGoal(shape.pods) ? { goal: rssGoal(shape.pods)! } : {}),
      note: `peak ${end.peak.toFixed(0)} MiB`,
    });
    this.summary.push(
      `${String(shape.pods).padStart(6)} pods ${String(shape.nodes).padStart(5)} nodes ${String(shape.policies).padStart(5)} policies: ` +
        `largest object ${bench.figures.find((f) => f.key === key('objects.largest'))?.value.toFixed(1)} %, ` +
        `apply p99 ${ms(bench.figures.find((f) => f.key === key('apply.to-nodes.p99'))?.value ?? NaN)}, ` +
        `churn settle ${ms(bench.figures.find((f) => f.key === key('churn.settle'))?.value ?? NaN)}, ` +
        `RSS ${end.rss.toFixed(0)} MiB (peak ${end.peak.toFixed(0)})`,
    );
  }
}

await runBenchmark<Size>({
  name: 'scale',
  sizes: {
    full: { pods: [1000, 5000, 10000], changes: 20, churnSeconds: 5 },
    quick: { pods: [1000, 2000], changes: 10, churnSeconds: 3 },
    smoke: { pods: [100, 200], changes: 3, churnSeconds: 1 },
  },
  options: {
    usage: {
      pods: '  --pods N,N,…       served pods at each size, growing (nodes: N/50, policies: N/10)',
      changes: '  --changes N        policy changes at each size',
      'churn-seconds': '  --churn-seconds S  how long pods are created and deleted at 100/s at each size',
    },
    apply: (size, values) => ({
      pods: values.pods === undefined ? size.pods : parseSizes(values.pods),
      changes: values.changes === undefined ? size.changes : positiveInteger('changes', values.changes),
      churnSeconds:
        values['churn-seconds'] === undefined
          ? size.churnSeconds
          : positiveInteger('churn-seconds', values['churn-seconds']),
    }),
  },
  async run(bench, size) {
    const first = shapeOf(size.pods[0]!);
    const nodes = [
      ...gatewayNodeNames.map((name, i) => ({
        name,
        labels: { 'naat.dev/gateway': 'true' },
        addresses: [`100.63.0.${i + 1}`],
      })),
      ...Array.from({ length: first.workers }, (_, i) => workerNode(i)),
    ];
    const bc = await BenchCluster.start('scale', nodes, progress);
    try {
      await bc.apply(list([1, 2, 3].map(uplinkObject)));
      await bc.apply(JSON.stringify(gatewayObject));
      const run = new ScaleRun(bench, bc, size);
      for (const pods of size.pods) await run.measure(await run.grow(pods));
      bench.section('\ngrowth:');
      for (const line of run.summary) bench.note(line);
    } finally {
      await bc.cleanup();
    }
  },
});
