// A gateway's compiled config as the operator stores it in the cluster: an index and slices, in
// the manner of EndpointSlices. One ConfigMap could not hold it (the apiserver takes at most
// 1 MiB, which about 3,800 served pods reach) and every change would resend all of it to every
// gateway node. The lists that grow with the cluster (served pods, the rules of every policy, the
// nodes that steer to the gateway) go into slices, each placed by a stable hash of its key, so
// that one pod's change alters one slice; the index is the rest of the config, with those lists
// left empty, and the name and hash of every slice. Assembly gives back the very config that was
// sliced, and refuses a set of slices that does not match the index: a half-written set (some
// slices of the new version, the index of the old one) is never taken for a config.
import { createHash } from 'node:crypto';
import type { CompiledRule, GatewayConfig } from './config.ts';
import { agentConfigKey, configIndexKey, configSliceKey, gatewayObjectName, gatewaySliceName } from './objects.ts';
import type { TunnelEndpoint } from './tunnel.ts';

/**
 * The most a slice's text holds by default: an eighth of the 1 MiB a ConfigMap's data may hold,
 * so that a slice stays under a quarter of the limit with room for its metadata, and a change
 * resends at most that much to each gateway node.
 */
export const sliceBudgetBytes = 128 * 1024;

/** More slices than this would only make the index and the agents' Role long; a config this big does not fit. */
const maxSlices = 4096;

type Pod = GatewayConfig['pods'][number];

/** A served pod in a slice; `sidecar` and `strict` say that its addresses are in those lists of `association`. */
export interface SlicedPod {
  pod: Pod;
  sidecar?: true;
  strict?: true;
  /** Its place in `pods`, only when the config's pods are not in the order assembly restores. */
  at?: number;
}

/**
 * The rules of one policy (a run of consecutive rules with the same `policy`). When they all have
 * the same sources (as the compiler makes them: the policy's pods), they are held once here and
 * each rule's `sources` is left empty.
 */
export interface SlicedPolicy {
  sources?: string[];
  rules: CompiledRule[];
  at?: number;
}

export interface SlicedNode {
  node: TunnelEndpoint;
  at?: number;
}

export interface ConfigSlice {
  gateway: string;
  slice: number;
  pods: SlicedPod[];
  policies: SlicedPolicy[];
  /** steering.sources: the nodes that steer flows to the gateway. */
  steering: SlicedNode[];
}

export interface SliceRef {
  name: string;
  /** sha256 of the slice's text as stored. */
  hash: string;
}

/**
 * The config without what the slices hold (pods, rules, steering.sources: empty lists here), with
 * the slices' names and hashes. The address lists made of the pods' addresses (sources, and the
 * association's sidecarSources and strictSources) are empty here too when `derived` says they are
 * made again from the pods on assembly.
 */
export type ConfigIndex = GatewayConfig & {
  slices: SliceRef[];
  derived: { sources: boolean; sidecarSources: boolean; strictSources: boolean };
};

export interface SlicedConfig {
  index: ConfigIndex;
  /** Each slice's text, by name: what the operator stores and the agent reads back. */
  slices: Map<string, string>;
}

/** The sha256 of a slice's text, as the index holds it. */
export const sliceHash = (text: string): string => `sha256:${createHash('sha256').update(text).digest('hex')}`;

/**
 * Splits `config` into an index and as few slices as keep every slice's text within
 * `budgetBytes` (a power of two of them, at most 4,096). An entry larger than the budget by itself
 * (one pod, one policy with its rules) gets a slice of its own, which then exceeds the budget.
 */
export function sliceConfig(config: GatewayConfig, budgetBytes = sliceBudgetBytes): SlicedConfig {
  const sidecar = marksOf(config.pods, config.association?.sidecarSources);
  const strict = marksOf(config.pods, config.association?.strictSources);
  const derivesSources = marksOf(config.pods, config.sources)?.every(Boolean) ?? false;
  const entries = [
    ...placed(
      'pod',
      config.pods.map((pod, i): { place: string; entry: SlicedPod } => ({
        place: podKey(pod),
        entry: { pod, ...(sidecar?.[i] ? { sidecar: true } : {}), ...(strict?.[i] ? { strict: true } : {}) },
      })),
      comparePods,
    ),
    ...placed('policy', policyRuns(config.rules), comparePolicies),
    ...placed(
      'node',
      (config.steering?.sources ?? []).map((node) => ({ place: node.node, entry: { node } })),
      compareNodes,
    ),
  ];
  const count = sliceCount(entries, budgetBytes - config.gateway.length - 100);
  const slices: ConfigSlice[] = Array.from({ length: count }, (_, slice) => ({
    gateway: config.gateway,
    slice,
    pods: [],
    policies: [],
    steering: [],
  }));
  for (const e of entries) {
    const slice = slices[e.hash % count]!;
    if (e.kind === 'pod') slice.pods.push(e.entry as SlicedPod);
    else if (e.kind === 'policy') slice.policies.push(e.entry as SlicedPolicy);
    else slice.steering.push(e.entry as SlicedNode);
  }
  const texts = new Map(slices.map((s) => [gatewaySliceName(config.gateway, s.slice), JSON.stringify(s)]));
  const derived = {
    sources: derivesSources,
    sidecarSources: sidecar !== undefined,
    strictSources: strict !== undefined,
  };
  const index: ConfigIndex = {
    ...config,
    sources: derivesSources ? [] : config.sources,
    pods: [],
    ...(config.association
      ? {
          association: {
            ...config.association,
            sidecarSources: sidecar ? [] : config.association.sidecarSources,
            strictSources: strict ? [] : config.association.strictSources,
          },
        }
      : {}),
    ...(config.steering ? { steering: { ...config.steering, sources: [] } } : {}),
    rules: [],
    slices: [...texts].map(([name, text]) => ({ name, hash: sliceHash(text) })),
    derived,
  };
  return { index, slices: texts };
}

/**
 * The config `index` and `slices` (texts by name) were cut from, exactly. Throws, naming the
 * slice, when one the index names is missing or is not the version the index was written with.
 */
export function assembleConfig(index: ConfigIndex, slices: ReadonlyMap<string, string>): GatewayConfig {
  const parsed = index.slices.map(({ name, hash }) => {
    const text = slices.get(name);
    if (text === undefined) throw new Error(`config slice ${name} is missing`);
    if (sliceHash(text) !== hash) throw new Error(`config slice ${name} does not match the index (not ${hash})`);
    return JSON.parse(text) as ConfigSlice;
  });
  const pods = ordered(
    parsed.flatMap((s) => s.pods),
    comparePods,
  );
  const policies = ordered(
    parsed.flatMap((s) => s.policies),
    comparePolicies,
  );
  const nodes = ordered(
    parsed.flatMap((s) => s.steering),
    compareNodes,
  );
  const { derived } = index;
  const config = withoutSlices(index);
  const addressesOf = (wanted: (p: SlicedPod) => boolean | undefined) =>
    pods.filter(wanted).flatMap((p) => p.pod.addresses);
  return {
    ...config,
    sources: derived.sources ? addressesOf(() => true) : config.sources,
    pods: pods.map((p) => p.pod),
    ...(config.association
      ? {
          association: {
            ...config.association,
            sidecarSources: derived.sidecarSources ? addressesOf((p) => p.sidecar) : config.association.sidecarSources,
            strictSources: derived.strictSources ? addressesOf((p) => p.strict) : config.association.strictSources,
          },
        }
      : {}),
    ...(config.steering ? { steering: { ...config.steering, sources: nodes.map((n) => n.node) } } : {}),
    rules: policies.flatMap(({ sources, rules }) => (sources ? rules.map((r) => ({ ...r, sources })) : rules)),
  };
}

const withoutSlices = ({ slices: _, derived: __, ...config }: ConfigIndex): GatewayConfig => config;

interface Placed {
  kind: 'pod' | 'policy' | 'node';
  hash: number;
  bytes: number;
  entry: { at?: number };
}

/**
 * Entries with the hash that places them (of `place`: a pod's namespace/name, a policy's, a
 * node's name) and their size. Assembly puts them back in the order `compare` gives (the
 * compiler's); only a list not in that order has each entry carry its place in it, which makes
 * any change of the list move every later entry.
 */
function placed<E extends object>(
  kind: Placed['kind'],
  items: Array<{ place: string; entry: E }>,
  compare: (a: E, b: E) => number,
): Placed[] {
  const inOrder = items.every((item, i) => i === 0 || compare(items[i - 1]!.entry, item.entry) <= 0);
  return items.map(({ place, entry }, at) => {
    const value = inOrder ? entry : { ...entry, at };
    const bytes = Buffer.byteLength(JSON.stringify(value)) + 1;
    return { kind, hash: placement(`${kind}/${place}`), bytes, entry: value };
  });
}

/** A stable hash of an entry's key: the same key lands in the same slice while their number holds. */
const placement = (key: string) => createHash('sha256').update(key).digest().readUInt32BE(0);

/**
 * The fewest slices (a power of two) that keep each slice's entries within `budget` bytes, or
 * leave over it only slices of one entry, which more slices would not make smaller.
 */
function sliceCount(entries: readonly Placed[], budget: number): number {
  for (let count = 1; ; count *= 2) {
    const sizes = new Array<number>(count).fill(0);
    const counts = new Array<number>(count).fill(0);
    for (const e of entries) {
      sizes[e.hash % count]! += e.bytes;
      counts[e.hash % count]! += 1;
    }
    if (count >= maxSlices || sizes.every((size, i) => size <= budget || counts[i] === 1)) return count;
  }
}

/** Restores the original order: by place where entries carry one, otherwise by key (a stable sort). */
function ordered<E extends { at?: number }>(entries: E[], compare: (a: E, b: E) => number): E[] {
  return entries.some((e) => e.at !== undefined)
    ? [...entries].sort((a, b) => a.at! - b.at!).map(({ at: _, ...e }) => e as E)
    : [...entries].sort(compare);
}

/** Runs of consecutive rules of one policy, each placed by its policy. */
function policyRuns(rules: readonly CompiledRule[]): Array<{ place: string; entry: SlicedPolicy }> {
  const runs: CompiledRule[][] = [];
  for (const rule of rules) {
    const last = runs.at(-1);
    if (last && last[0]!.policy === rule.policy) last.push(rule);
    else runs.push([rule]);
  }
  return runs.map((run) => {
    const first = run[0]!.sources;
    const shared = run.every((r) => sameList(r.sources, first));
    const entry: SlicedPolicy = shared
      ? { sources: first, rules: run.map((r) => ({ ...r, sources: [] })) }
      : { rules: run };
    return { place: run[0]!.policy, entry };
  });
}

/** By UTF-16 code unit, the same everywhere: for object names it is the compiler's order too. */
const compareText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const podKey = (pod: Pod) => `${pod.namespace}/${pod.name}`;
const comparePods = (a: SlicedPod, b: SlicedPod) => compareText(podKey(a.pod), podKey(b.pod));
/** The compiler's order of policies: by priority, then namespace/name. */
const comparePolicies = (a: SlicedPolicy, b: SlicedPolicy) =>
  a.rules[0]!.priority - b.rules[0]!.priority || compareText(a.rules[0]!.policy, b.rules[0]!.policy);
const compareNodes = (a: SlicedNode, b: SlicedNode) => compareText(a.node.node, b.node.node);

/**
 * Which pods' addresses make up `list`, in order, when it is such a list (the compiler makes
 * sources and the association's lists so); undefined when it is not, or there is no list.
 */
function marksOf(pods: readonly Pod[], list: readonly string[] | undefined): boolean[] | undefined {
  if (!list) return undefined;
  let next = 0;
  const marks = pods.map((pod) => {
    const matches = pod.addresses.every((a, i) => list[next + i] === a);
    if (matches) next += pod.addresses.length;
    return matches;
  });
  return next === list.length ? marks : undefined;
}

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * A gateway's config as stored in the cluster, read through `read` (a ConfigMap's data by name,
 * undefined when there is none): its index and each slice the index names, assembled, or the
 * whole config of a ConfigMap written by hand. Undefined when the gateway has no ConfigMap. A
 * slice rewritten between the reads fails assembly: the caller reads again.
 */
export async function readGatewayConfig(
  gateway: string,
  read: (name: string) => Promise<Record<string, string> | undefined>,
): Promise<GatewayConfig | undefined> {
  const name = gatewayObjectName(gateway);
  const data = await read(name);
  if (!data) return undefined;
  const whole = data[agentConfigKey];
  if (whole !== undefined) return JSON.parse(whole) as GatewayConfig;
  const indexText = data[configIndexKey];
  if (indexText === undefined) throw new Error(`configmap ${name} has neither ${configIndexKey} nor ${agentConfigKey}`);
  const index = JSON.parse(indexText) as ConfigIndex;
  const slices = new Map<string, string>();
  for (const { name: slice } of index.slices) {
    const text = (await read(slice))?.[configSliceKey];
    if (text !== undefined) slices.set(slice, text);
  }
  return assembleConfig(index, slices);
}
