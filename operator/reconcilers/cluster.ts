// Every gateway compiled from the caches at once, with the node configs of cluster-wide egress and
// what the node agents reported: one node's config holds the pods of every gateway that steers
// from it, so neither a gateway's SteeringReady condition (is the node's current config applied?)
// nor the node agents' objects can be judged from one gateway alone.
import type { KubernetesObject, V1Namespace, V1Node, V1Pod } from '@kubernetes/client-node';
import type { Informer } from '../../common/kube/index.ts';
import type { NodeConfig } from '../../contracts/gateway/index.ts';
import { driverAnnotation } from '../../contracts/index.ts';
import type { EgressGateway, EgressPolicy, Uplink } from '../../crds/index.ts';
import { factsChanged } from '../facts.ts';
import type { Caches } from '../caches.ts';
import {
  compileGateway,
  selectedNodes,
  type Compiled,
  type NodeFacts,
  type PodFacts,
  type TunnelFacts,
} from '../compile.ts';
import { gatewayNodeConflicts, relayConflicts, type PortClaimant, type PortConflict } from '../host-ports.ts';
import { modeAnnotation } from '../inject.ts';
import type { OperatorSettings } from '../settings.ts';
import {
  desiredNodeConfigs,
  gatewayTunnels,
  nodeSteering,
  type NodeSteering,
  type SteeringReport,
} from '../steering.ts';

/**
 * What the compiler reads of a pod, the same object while the cached pod is: the compiler hands
 * an unchanged pod's part of the config on as it was (operator/compile.ts).
 */
export function podFacts(pod: V1Pod): PodFacts {
  let facts = factsOfPods.get(pod);
  if (!facts) factsOfPods.set(pod, (facts = readPodFacts(pod)));
  return facts;
}
const factsOfPods = new WeakMap<V1Pod, PodFacts>();

function readPodFacts(pod: V1Pod): PodFacts {
  return {
    namespace: pod.metadata?.namespace ?? '',
    name: pod.metadata?.name ?? '',
    labels: pod.metadata?.labels,
    ips: (pod.status?.podIPs ?? []).map((ip) => ip.ip).filter((ip): ip is string => Boolean(ip)),
    // Native sidecars (init containers that keep running) run alongside the others.
    containers: [
      ...(pod.spec?.initContainers ?? []).filter((c) => c.restartPolicy === 'Always'),
      ...(pod.spec?.containers ?? []),
    ].map((c) => c.name),
    ...(pod.metadata?.annotations?.[driverAnnotation] === 'Node' && pod.metadata.uid
      ? {
          nodeAssociation: {
            uid: pod.metadata.uid,
            containers: runningContainers(pod),
            ...(pod.metadata.annotations[modeAnnotation] === 'Strict' ? { strict: true } : {}),
          },
        }
      : {}),
    ...(pod.metadata?.annotations?.[modeAnnotation] === 'Strict' ? { strict: true } : {}),
    ...(pod.status?.phase ? { phase: pod.status.phase } : {}),
    ...(pod.spec?.nodeName ? { node: pod.spec.nodeName } : {}),
  };
}

/**
 * The pod's containers that have a runtime id, by that id (status.containerStatuses gives it as
 * `runtime://id`): what names a container its processes' cgroups point at.
 */
function runningContainers(pod: V1Pod): Array<{ id: string; name: string }> {
  return [...(pod.status?.initContainerStatuses ?? []), ...(pod.status?.containerStatuses ?? [])]
    .map((c) => ({ id: /^[a-z0-9.-]+:\/\/([0-9a-f]{64})$/.exec(c.containerID ?? '')?.[1], name: c.name }))
    .filter((c): c is { id: string; name: string } => c.id !== undefined)
    .sort((a, b) => a.id.localeCompare(b.id));
}

/** What the compiler reads of a node. */
export function nodeFacts(node: V1Node): NodeFacts {
  return {
    name: node.metadata?.name ?? '',
    labels: node.metadata?.labels,
    addresses: (node.status?.addresses ?? []).filter((a) => a.type === 'InternalIP').map((a) => a.address),
    ...(node.spec?.unschedulable ? { unschedulable: true } : {}),
  };
}

export interface CompiledGateway {
  gateway: EgressGateway;
  compiled: Compiled;
  tunnel: TunnelFacts | undefined;
  /** Per node that hosts its away pods: whether they are steered (operator/steering.ts). */
  steering: NodeSteering[];
  /** Its nodes where another gateway's agent holds a port its agent needs: it does not run there. */
  nodeConflicts: PortConflict[];
}

export interface CompiledCluster {
  gateways: Map<string, CompiledGateway>;
  nodeConfigs: NodeConfig[];
}

/** The node agents' entries of a gateway's status. */
const reportsOf = (gateway: EgressGateway): SteeringReport[] => gateway.status?.steering?.nodes ?? [];

export function compileCluster(caches: Caches, settings: OperatorSettings): CompiledCluster {
  const gateways = caches.gateways.list();
  const tunnels = gatewayTunnels(gateways, settings.steering.port, settings.marks.tunnel);
  const pods = caches.pods.list().map(podFacts);
  const namespaces = new Map(caches.namespaces.list().map((n) => [n.metadata?.name ?? '', n.metadata?.labels]));
  const nodes = caches.nodes.list();
  // Traffic inside the cluster never leaves through an uplink: the service networks from the
  // settings and every node's pod network.
  const bypass = [...settings.bypass, ...nodes.flatMap((n) => n.spec?.podCIDRs ?? [])];
  const policies = caches.policies.list();
  const facts = nodes.map(nodeFacts);
  const claimants = gateways.map(claimantOf);
  const agentPorts = { health: settings.dataplane.healthPort, metrics: settings.dataplane.metricsPort };
  const nodeConflicts = gatewayNodeConflicts(
    claimants,
    new Map(gateways.map((g) => [g.metadata.name, selectedNodes(g, facts)])),
    agentPorts,
  );
  const compiled = gateways.map((gateway) => ({
    gateway,
    tunnel: tunnels.get(gateway.metadata.name),
    nodeConflicts: nodeConflicts.get(gateway.metadata.name) ?? [],
    compiled: compileGateway({
      gateway,
      uplinks: caches.uplinks.list(),
      policies: policies.filter((p) => p.spec.gateway === gateway.metadata.name),
      pods,
      namespaces,
      nodes: facts,
      bypass,
      steering: tunnels.get(gateway.metadata.name),
      marks: { uplinks: settings.marks.uplinks },
      excludedNodes: (nodeConflicts.get(gateway.metadata.name) ?? []).map((c) => c.node),
    }),
  }));
  const relays = relayConflicts(
    claimants,
    new Map(compiled.map((c) => [c.gateway.metadata.name, c.compiled.nodes])),
    new Map(compiled.map((c) => [c.gateway.metadata.name, (c.compiled.steering?.sources ?? []).map((s) => s.node)])),
    agentPorts,
  );
  const nodeConfigs = desiredNodeConfigs(
    compiled.map((c) => c.compiled),
    { markMask: settings.marks.steering, healthPort: settings.dataplane.healthPort },
    relays,
  );
  const byNode = new Map(nodeConfigs.map((c) => [c.node, c]));
  return {
    gateways: new Map(
      compiled.map((c) => [
        c.gateway.metadata.name,
        {
          ...c,
          steering: nodeSteering(
            c.compiled,
            c.tunnel,
            byNode,
            reportsOf(c.gateway),
            relays.get(c.gateway.metadata.name) ?? [],
          ),
        },
      ]),
    ),
    nodeConfigs,
  };
}

/**
 * What compileCluster reads of each kind, so that a change that leaves these facts as they were
 * (a status the operator wrote, a node's heartbeat) compiles nothing again.
 */
export const compiledFacts = {
  /** Its spec and age, and the node agents' reports. */
  gateways: (gateway: EgressGateway & KubernetesObject) => ({
    spec: gateway.spec,
    created: gateway.metadata?.creationTimestamp,
    reports: gateway.status?.steering,
  }),
  /** Its spec and the labels a gateway's uplink selector matches. */
  uplinks: (uplink: Uplink & KubernetesObject) => ({ spec: uplink.spec, labels: uplink.metadata?.labels }),
  policies: (policy: EgressPolicy) => policy.spec,
  pods: podFacts,
  namespaces: (namespace: V1Namespace) => namespace.metadata?.labels,
  /** The gateways it belongs to, its pod network, its tunnel addresses. */
  nodes: (node: V1Node) => ({ ...nodeFacts(node), podCIDRs: node.spec?.podCIDRs }),
};

/**
 * compileCluster of the caches as they are now, compiled once until what it reads of them
 * changes: the gateway controller (for each gateway) and the steering controller would otherwise
 * each compile the same cluster again, a pass over every pod and policy. Caches call their
 * handlers as they change, before any reconcile can read them, so no reconcile gets the compile
 * of an older state.
 */
export function clusterCompiler(caches: Caches, settings: OperatorSettings): () => CompiledCluster {
  let last: CompiledCluster | undefined;
  const follow = <T extends KubernetesObject>(cache: Informer<T>, facts: (object: T) => unknown) => {
    const changed = factsChanged(cache, facts);
    cache.onChange((key, object) => {
      if (changed(key, object)) last = undefined;
    });
  };
  follow(caches.gateways, compiledFacts.gateways);
  follow(caches.uplinks, compiledFacts.uplinks);
  follow(caches.policies, compiledFacts.policies);
  follow(caches.pods, compiledFacts.pods);
  follow(caches.namespaces, compiledFacts.namespaces);
  follow(caches.nodes, compiledFacts.nodes);
  return () => (last ??= compileCluster(caches, settings));
}

/** A gateway as host ports are decided: the older one keeps a port both want (operator/host-ports.ts). */
function claimantOf(gateway: EgressGateway): PortClaimant {
  // Typed as a string, but a client may have turned it into a Date.
  const created: unknown = (gateway.metadata as { creationTimestamp?: unknown }).creationTimestamp;
  return {
    gateway: gateway.metadata.name,
    created: created ? new Date(created as string).toISOString() : '',
    associationPort: gateway.spec.association.port,
  };
}
