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
import { jsonText } from './texts.ts';
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
      podEntries,
      config.pods.map((pod, i): SlicedPod => ({
        pod,
        ...(sidecar?.[i] ? { sidecar: true } : {}),
        ...(strict?.[i] ? { strict: true } : {}),
      })),
    ),
    ...placed(policyEntries, policyRuns(config.rules)),
    ...placed(
      nodeEntries,
      (config.steering?.sources ?? []).map((node) => ({ node })),
    ),
  ];
  const count = sliceCount(entries, budgetBytes - config.gateway.length - 100);
  const slices = Array.from({ length: count }, () => ({
    pod: [] as string[],
    policy: [] as string[],
    node: [] as string[],
  }));
  for (const e of entries) slices[e.hash % count]![e.kind].push(e.text);
  // JSON.stringify of a ConfigSlice, from its entries' texts.
  const gateway = JSON.stringify(config.gateway);
  const texts = new Map(
    slices.map((s, slice) => [
      gatewaySliceName(config.gateway, slice),
      `{"gateway":${gateway},"slice":${slice},"pods":[${s.pod.join(',')}],"policies":[${s.policy.join(',')}],"steering":[${s.node.join(',')}]}`,
    ]),
  );
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
    podEntries.compare,
  );
  const policies = ordered(
    parsed.flatMap((s) => s.policies),
    policyEntries.compare,
  );
  const nodes = ordered(
    parsed.flatMap((s) => s.steering),
    nodeEntries.compare,
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
  /** The entry's JSON text, as its slice holds it. */
  text: string;
}

/** How the entries of one list are placed, ordered, written and told apart. */
interface EntryKind<E> {
  kind: Placed['kind'];
  /** What places the entry in a slice: a pod's namespace/name, a policy's, a node's name. */
  place: (entry: E) => string;
  /** The compiler's order, which assembly restores. */
  compare: (a: E, b: E) => number;
  /** JSON.stringify(entry). */
  text: (entry: E) => string;
  /** The object the entry is made of (a pod, a policy's first rule, a node): its last placing is kept by it. */
  owner: (entry: E) => object;
  same: (a: E, b: E) => boolean;
}

const podEntries: EntryKind<SlicedPod> = {
  kind: 'pod',
  place: (e) => podKey(e.pod),
  compare: (a, b) => compareText(podKey(a.pod), podKey(b.pod)),
  text: ({ pod, sidecar, strict }) =>
    `{"pod":${jsonText(pod)}${sidecar ? ',"sidecar":true' : ''}${strict ? ',"strict":true' : ''}}`,
  owner: (e) => e.pod,
  same: (a, b) => a.pod === b.pod && a.sidecar === b.sidecar && a.strict === b.strict,
};

const policyEntries: EntryKind<SlicedPolicy> = {
  kind: 'policy',
  place: (e) => e.rules[0]!.policy,
  /** The compiler's order of policies: by priority, then namespace/name. */
  compare: (a, b) => a.rules[0]!.priority - b.rules[0]!.priority || compareText(a.rules[0]!.policy, b.rules[0]!.policy),
  text: ({ sources, rules }) =>
    `{${sources ? `"sources":${JSON.stringify(sources)},` : ''}"rules":[${rules.map(jsonText).join(',')}]}`,
  owner: (e) => e.rules[0]!,
  same: (a, b) => a.sources === b.sources && sameList(a.rules, b.rules),
};

const nodeEntries: EntryKind<SlicedNode> = {
  kind: 'node',
  place: (e) => e.node.node,
  compare: (a, b) => compareText(a.node.node, b.node.node),
  text: (e) => JSON.stringify(e),
  owner: (e) => e.node,
  same: (a, b) => a.node === b.node,
};

/**
 * The entries with the hash that places them, their text and its size; an entry equal to the last
 * one made of the same object is placed as it was. Assembly puts them back in the compiler's order;
 * only a list not in that order has each entry carry its place in it, which makes any change of
 * the list move every later entry.
 */
function placed<E extends object>(kind: EntryKind<E>, entries: readonly E[]): Placed[] {
  const inOrder = entries.every((entry, i) => i === 0 || kind.compare(entries[i - 1]!, entry) <= 0);
  const place = (entry: E, text: string): Placed => ({
    kind: kind.kind,
    hash: placement(`${kind.kind}/${kind.place(entry)}`),
    bytes: Buffer.byteLength(text) + 1,
    text,
  });
  return entries.map((entry, at) => {
    if (!inOrder) return place(entry, JSON.stringify({ ...entry, at }));
    const owner = kind.owner(entry);
    const last = keptPlacings.get(owner);
    if (last?.placed.kind === kind.kind && kind.same(last.entry as E, entry)) return last.placed;
    const placing = place(entry, kind.text(entry));
    keptPlacings.set(owner, { entry, placed: placing });
    return placing;
  });
}
const keptPlacings = new WeakMap<object, { entry: object; placed: Placed }>();

/**
 * A stable hash of an entry's key, so that the same key lands in the same slice while their number
 * holds: FNV-1a, then MurmurHash3's finaliser, which mixes the low bits a slice is picked by.
 */
function placement(key: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) hash = Math.imul(hash ^ key.charCodeAt(i), 0x01000193);
  hash = Math.imul(hash ^ (hash >>> 16), 0x85ebca6b);
  hash = Math.imul(hash ^ (hash >>> 13), 0xc2b2ae35);
  return (hash ^ (hash >>> 16)) >>> 0;
}

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
function policyRuns(rules: readonly CompiledRule[]): SlicedPolicy[] {
  const runs: CompiledRule[][] = [];
  for (const rule of rules) {
    const last = runs.at(-1);
    if (last && last[0]!.policy === rule.policy) last.push(rule);
    else runs.push([rule]);
  }
  return runs.map((run) => {
    const first = run[0]!.sources;
    const shared = run.every((r) => sameList(r.sources, first));
    return shared ? { sources: first, rules: run.map(withoutSources) } : { rules: run };
  });
}

/** The rule with its sources left to its run, the same object for the same rule (for its text). */
function withoutSources(rule: CompiledRule): CompiledRule {
  let bare = bareRules.get(rule);
  if (!bare) bareRules.set(rule, (bare = { ...rule, sources: [] }));
  return bare;
}
const bareRules = new WeakMap<CompiledRule, CompiledRule>();

/** By UTF-16 code unit, the same everywhere: for object names it is the compiler's order too. */
const compareText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
const podKey = (pod: Pod) => `${pod.namespace}/${pod.name}`;

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

const sameList = <T>(a: readonly T[], b: readonly T[]) => a.length === b.length && a.every((x, i) => x === b[i]);

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
