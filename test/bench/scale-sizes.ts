// The sizes of a gateway's stored config at the scale goal and on the way, computed by the
// operator's own pure functions (compileGateway, sliceConfig, desiredGatewayObjects) on the
// objects bench:scale makes, without a cluster: `npm run bench:scale-sizes [-- --pods
// 1000,10000,50000]`. For each size: the whole config, the index, the slices (how many, the
// largest, all together), the index's bypass, the Role that names them, what one pod's change
// rewrites, the time to compile and to slice, and the time to compile and slice again after one
// pod's change (what the operator does per change). Prints one JSON line per size.
import { parseCommandLine, usageError } from '../../common/index.ts';
import { sliceConfig } from '../../contracts/gateway/index.ts';
import { validate, type EgressGateway, type EgressPolicy, type Kind, type Uplink } from '../../crds/index.ts';
import { compileGateway, type PodFacts, type Snapshot } from '../../operator/compile.ts';
import { desiredGatewayObjects } from '../../operator/desired.ts';
import { parseSettings } from '../../operator/settings.ts';
import { operatorSettings } from '../cluster/operator.ts';
import {
  gatewayObject,
  namespaceName,
  podObject,
  policyObject,
  servedLabel,
  uplinkObject,
} from './operator-cluster.ts';
import { gatewayNodes, parseSizes, shapeOf } from './scale-figures.ts';

function valid<T>(kind: Kind, object: unknown): T {
  const result = validate(kind, object);
  if (!result.ok) throw new Error(`${kind}: ${result.errors.join('; ')}`);
  return result.value as T;
}

/** The cluster bench:scale grows to `pods` served pods, as the operator's snapshot of it. */
function snapshotOf(pods: number): Snapshot {
  const shape = shapeOf(pods);
  const workers = Array.from({ length: shape.workers }, (_, i) => `worker-${i}`);
  const nodes = [
    ...Array.from({ length: gatewayNodes }, (_, i) => ({
      name: `gateway-${i}`,
      labels: { 'naat.dev/gateway': 'true' },
      addresses: [`172.30.0.${i + 1}`],
    })),
    ...workers.map((name, i) => ({ name, addresses: [`172.31.${i >> 8}.${i & 255}`] })),
  ];
  const served: PodFacts[] = [];
  for (let n = 0; n < shape.namespaces; n++) {
    for (let i = 0; i < shape.podsPerNamespace; i++) {
      const at = n * shape.podsPerNamespace + i;
      const pod = podObject(shape, n, i, workers[at % shape.workers]!);
      served.push({
        namespace: pod.metadata.namespace,
        name: pod.metadata.name,
        labels: pod.metadata.labels,
        ips: [`10.${(at >> 16) + 1}.${(at >> 8) & 255}.${at & 255}`],
        containers: pod.spec.containers.map((c) => c.name),
        phase: 'Running',
        node: pod.spec.nodeName,
      });
    }
  }
  const policies: EgressPolicy[] = [];
  for (let n = 0; n < shape.namespaces; n++) {
    for (let a = 0; a < shape.appsPerNamespace; a++) policies.push(valid('EgressPolicy', policyObject(shape, n, a)));
  }
  return {
    gateway: valid<EgressGateway>('EgressGateway', gatewayObject),
    uplinks: [1, 2, 3].map((n) => valid<Uplink>('Uplink', uplinkObject(n))),
    policies,
    pods: served,
    namespaces: new Map(
      Array.from({ length: shape.namespaces }, (_, n) => [namespaceName(n), { [servedLabel]: 'served' }]),
    ),
    nodes,
    bypass: ['10.96.0.0/16', ...nodes.map((_, i) => `10.244.${i >> 8}.${i & 255}/24`)],
    steering: { tunnel: { vni: 100, port: 4789 }, markMask: 0xf000 },
  };
}

const bytes = (value: unknown) => Buffer.byteLength(typeof value === 'string' ? value : JSON.stringify(value));

const usage = `usage: npm run bench:scale-sizes [-- --pods 1000,4000,10000,50000]
  prints, for each size in served pods (nodes and policies as bench:scale grows them), one JSON
  line: the whole config, its index, its slices, their Role, what one pod's change rewrites`;
const { values } = parseCommandLine(usage, {
  options: { pods: { type: 'string', default: '1000,4000,10000,50000' } },
});
const settings = parseSettings(operatorSettings('naat', { metrics: 9090, health: 9091, webhook: 9443 }));
let sizes: number[];
try {
  sizes = parseSizes(values.pods);
} catch (error) {
  usageError(usage, (error as Error).message);
}
for (const pods of sizes) {
  const snapshot = snapshotOf(pods);
  let started = performance.now();
  const compiled = compileGateway(snapshot);
  const compileMs = performance.now() - started;
  started = performance.now();
  const sliced = sliceConfig(compiled.config);
  const sliceMs = performance.now() - started;
  const slices = [...sliced.slices.values()].map(bytes).sort((a, b) => a - b);
  const objects = desiredGatewayObjects(snapshot.gateway, compiled, settings, 'naat-system', sliced);
  // One pod's change, as the operator's caches hand it on: a new object for that pod, the same
  // objects for the others. It moves to another node.
  const changed = [...snapshot.pods];
  const pod = changed[pods >> 1]!;
  changed[pods >> 1] = { ...pod, node: pod.node === 'worker-0' ? 'worker-1' : 'worker-0' };
  started = performance.now();
  const recompiled = compileGateway({ ...snapshot, pods: changed });
  const after = sliceConfig(recompiled.config);
  const changeMs = performance.now() - started;
  const rewritten = [...after.slices].filter(([name, text]) => sliced.slices.get(name) !== text);
  console.log(
    JSON.stringify({
      pods,
      nodes: snapshot.nodes.length,
      policies: snapshot.policies.length,
      rules: compiled.config.rules.length,
      whole: bytes(compiled.config),
      index: bytes(sliced.index),
      slices: slices.length,
      largestSlice: slices.at(-1),
      medianSlice: slices[slices.length >> 1],
      allSlices: slices.reduce((sum, size) => sum + size, 0),
      bypass: bytes(compiled.config.bypass),
      role: bytes(objects.find((o) => o.kind === 'Role')),
      podChange: {
        slices: rewritten.length,
        bytes: rewritten.reduce((sum, [, t]) => sum + bytes(t), bytes(after.index)),
      },
      compileMs: Math.round(compileMs),
      sliceMs: Math.round(sliceMs),
      changeMs: Math.round(changeMs),
    }),
  );
}
