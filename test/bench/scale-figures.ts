// The pure parts of `npm run bench:scale`: how a size in served pods sets the cluster's shape (in
// the proportions: 50 served pods a node, 10 a policy), what part of a config an agent
// needed to learn of a change, and the size of an object against the limit the apiserver holds it to.

/** Served pods a node hosts and a policy selects, as at 50,000 pods, 1,000 nodes and 5,000 policies. */
export const podsPerNode = 50;
export const podsPerPolicy = 10;
export const podsPerNamespace = 50;
/** The nodes the gateway runs on; they host no served pod, so every served pod is away from them. */
export const gatewayNodes = 2;

export interface Shape {
  pods: number;
  namespaces: number;
  podsPerNamespace: number;
  /** Policies (and apps) per namespace. */
  appsPerNamespace: number;
  policies: number;
  /** Nodes hosting served pods, beside the gateway's. */
  workers: number;
  nodes: number;
}

export function shapeOf(pods: number): Shape {
  if (!Number.isInteger(pods) || pods < podsPerNamespace || pods % podsPerNamespace !== 0) {
    throw new Error(`${pods} pods: a size must be a positive multiple of ${podsPerNamespace}`);
  }
  const workers = Math.max(2, pods / podsPerNode);
  const appsPerNamespace = podsPerNamespace / podsPerPolicy;
  const namespaces = pods / podsPerNamespace;
  return {
    pods,
    namespaces,
    podsPerNamespace,
    appsPerNamespace,
    policies: namespaces * appsPerNamespace,
    workers,
    nodes: workers + gatewayNodes,
  };
}

/** `1000,5000,10000`: served pod counts, growing. */
export function parseSizes(text: string): number[] {
  const sizes = text.split(',').map((part) => Number(part.trim()));
  sizes.forEach(shapeOf);
  if (sizes.some((size, i) => i > 0 && size <= sizes[i - 1]!)) {
    throw new Error(`--pods ${text}: the sizes must grow (the cluster only grows between them)`);
  }
  return sizes;
}

/** Fields that name an element of a list: rules by policy and rule, pods by namespace and name, … */
const identities = ['policy', 'rule', 'namespace', 'name', 'gateway', 'node'];

/**
 * A config as the smallest pieces an agent could be told of one by one, each with its size in
 * bytes (as JSON): every scalar field by its path, every element of a list of scalars (a rule's
 * source address, a bypass network) and, for elements of a list of objects, their fields under
 * the element's identity (rules[default/web#https].sources[]=10.0.0.1). Two versions' pieces
 * differ only where the content did.
 */
export function pieces(config: unknown): Map<string, number> {
  const out = new Map<string, number>();
  const add = (path: string, value: unknown) => {
    const text = JSON.stringify(value);
    out.set(`${path}=${text}`, Buffer.byteLength(text));
  };
  const walk = (value: unknown, path: string) => {
    if (Array.isArray(value)) {
      for (const item of value) {
        if (!isRecord(item)) {
          add(`${path}[]`, item);
          continue;
        }
        const named = identities.filter((field) => typeof item[field] === 'string');
        if (!named.length) {
          add(`${path}[]`, item);
          continue;
        }
        walk(item, `${path}[${named.map((field) => item[field]).join('#')}]`);
      }
    } else if (isRecord(value)) {
      for (const [field, inner] of Object.entries(value)) walk(inner, path ? `${path}.${field}` : field);
    } else {
      add(path, value);
    }
  };
  walk(config, '');
  return out;
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** The bytes of the pieces one version has and the other has not: what a change had to tell. */
export function changedBytes(before: ReadonlyMap<string, number>, after: ReadonlyMap<string, number>): number {
  let sum = 0;
  for (const [piece, bytes] of after) if (!before.has(piece)) sum += bytes;
  for (const [piece, bytes] of before) if (!after.has(piece)) sum += bytes;
  return sum;
}

/** The most the apiserver stores: a ConfigMap's data, and any object as etcd takes it (--max-request-bytes). */
export const configMapDataLimit = 1024 * 1024;
export const etcdRequestLimit = 1.5 * 1024 * 1024;

export interface StoredObject {
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  data?: Record<string, string>;
}

/** An object's size as its limit counts it, and that limit: a ConfigMap's data, any other object whole. */
export function sizeAgainstLimit(object: StoredObject): { bytes: number; limit: number } {
  if (object.kind === 'ConfigMap') {
    const bytes = Object.entries(object.data ?? {}).reduce(
      (sum, [key, value]) => sum + Buffer.byteLength(key) + Buffer.byteLength(value),
      0,
    );
    return { bytes, limit: configMapDataLimit };
  }
  return { bytes: Buffer.byteLength(JSON.stringify(object)), limit: etcdRequestLimit };
}
