// The pure heart of the operator: from a snapshot of the API (one EgressGateway, the Uplinks,
// the EgressPolicies that name it, pods, namespaces and nodes) to the compiled gateway config
// its dataplanes apply, plus what the status of each object should say. Deterministic: the same
// snapshot gives byte-identical output, so the content hash changes only when the config does;
// what it keeps of earlier compiles (podEntries, policyParts) only saves making the same again.
import { isIP } from 'node:net';
import { rendezvous } from '../common/index.ts';
import { matchersOverlap } from '../contracts/index.ts';
import type { EgressGateway, EgressPolicy, Uplink } from '../crds/index.ts';
import {
  canonicalAddress,
  configHash,
  configVersion,
  contains,
  type CompiledRule,
  type CompiledUplink,
  type GatewayConfig,
  type NodeAssociation,
  type SteeredPod,
  type Tunnel,
  type TunnelEndpoint,
} from '../contracts/gateway/index.ts';
import { compare } from './canonical.ts';
import { matchesLabels, matchesSelector, type Labels } from './selector.ts';

/** The name of the container the admission webhook injects; pods that have it are associated. */
export const sidecarContainerName = 'naat-sidecar';

export interface PodFacts {
  namespace: string;
  name: string;
  labels?: Labels;
  /** status.podIPs; a pod without addresses yet is left out until it has them. */
  ips: string[];
  containers: string[];
  /**
   * When the webhook made the node agent the pod's association driver: the pod's uid and its
   * running containers by the runtime's id.
   */
  nodeAssociation?: NodeAssociation;
  /** Whether the webhook put the pod in strict association mode (its programs stamp their packets). */
  strict?: boolean;
  /** Succeeded or Failed pods hold no flows. */
  phase?: string;
  /** spec.nodeName: the node the pod runs on. */
  node?: string;
}

export interface NodeFacts {
  name: string;
  labels?: Labels;
  /** The node's InternalIP addresses: the outer addresses of the tunnel packets it sends and receives. */
  addresses?: readonly string[];
  /** Cordoned (spec.unschedulable): a gateway node that gives up its failover addresses. */
  unschedulable?: boolean;
}

/** The gateway's tunnel, or the gateway that holds the VNI it would use (operator/steering.ts). */
export type TunnelFacts = { tunnel: Tunnel; markMask: number } | { vniTakenBy: string; vni: number };

export interface Snapshot {
  gateway: EgressGateway;
  uplinks: readonly Uplink[];
  policies: readonly EgressPolicy[];
  pods: readonly PodFacts[];
  namespaces: ReadonlyMap<string, Labels>;
  nodes: readonly NodeFacts[];
  /** Destinations that never leave through an uplink (the cluster's pod and service networks). */
  bypass: readonly string[];
  /** Cluster-wide egress; without it, pods away from the gateway's nodes are compiled but not steered. */
  steering?: TunnelFacts;
  /** The gateway agents' mark bits (the operator's settings); the dataplane's defaults without them. */
  marks?: { uplinks: number };
  /** Nodes its nodeSelector matches where the gateway's agent may not run (operator/host-ports.ts). */
  excludedNodes?: readonly string[];
}

/** A served pod on a node that is not one of the gateway's: its flows reach the gateway through the tunnel. */
export type AwayPod = SteeredPod & { node: string };

/** What the node agents of the nodes that host the gateway's away pods need of the gateway. */
export interface GatewaySteering {
  tunnel: Tunnel;
  selection: 'Pod' | 'Flow';
  associationPort: number;
  bypass: string[];
  /** The gateway's nodes that have an uplink and an address: where flows can be steered to. */
  peers: TunnelEndpoint[];
  /** The nodes that host away pods and have an address, with their pods. */
  sources: Array<TunnelEndpoint & { pods: SteeredPod[] }>;
  /** The gateway's failover addresses, which the away pods' egress addresses are taken from. */
  failover?: { addresses: string[] };
}

export interface PolicyFacts {
  matchedPods: number;
  /** Uplinks the policy names that the gateway does not balance over. */
  missingUplinks: string[];
  /** "rule r conflicts with namespace/policy#rule" for rules of equal priority that overlap and disagree. */
  conflicts: string[];
}

export interface Compiled {
  config: GatewayConfig;
  /** Nodes that match the gateway's nodeSelector, but the excluded ones: where its dataplane runs. */
  nodes: string[];
  /** Nodes that match the gateway's nodeSelector where its dataplane may not run. */
  excludedNodes: string[];
  servedPods: number;
  /** Uplinks the gateway names that do not exist. */
  missingUplinks: string[];
  /** By namespace/name of every policy that names the gateway. */
  policies: Map<string, PolicyFacts>;
  /** Served pods on nodes that are not the gateway's, whether or not they can be steered. */
  away: AwayPod[];
  /** Present when there are away pods on nodes with an address and the gateway has its tunnel. */
  steering?: GatewaySteering;
}

const key = (o: { metadata: { namespace?: string; name: string } }) =>
  o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name;
const byName = <T extends { metadata: { namespace?: string; name: string } }>(a: T, b: T) => compare(key(a), key(b));

export function compileGateway(snapshot: Snapshot): Compiled {
  const { gateway } = snapshot;
  const spec = gateway.spec;
  const excludedNodes = selectedNodes(gateway, snapshot.nodes).filter((n) => snapshot.excludedNodes?.includes(n));
  const nodes = selectedNodes(gateway, snapshot.nodes).filter((n) => !excludedNodes.includes(n));

  const wanted = spec.uplinks.names
    ? snapshot.uplinks.filter((u) => spec.uplinks.names!.includes(u.metadata.name))
    : snapshot.uplinks.filter((u) => matchesSelector(spec.uplinks.selector!, u.metadata.labels));
  const missingUplinks = (spec.uplinks.names ?? []).filter((n) => !snapshot.uplinks.some((u) => u.metadata.name === n));
  const uplinks: CompiledUplink[] = [...wanted].sort(byName).map((u) => {
    const on = u.spec.nodeSelector ? nodes.filter((n) => nodeHas(snapshot, n, u.spec.nodeSelector)) : undefined;
    return { name: u.metadata.name, ...(on ? { nodes: on } : {}), ...u.spec };
  });
  const uplinkNames = new Set(uplinks.map((u) => u.name));
  const floating = (spec.failover?.addresses ?? [])
    .filter((a) => uplinkNames.has(a.uplink))
    .map((a) => ({ address: canonicalAddress(a.address), uplink: a.uplink }));
  missingUplinks.push(
    ...(spec.failover?.addresses ?? [])
      .map((a) => a.uplink)
      .filter((u) => !uplinkNames.has(u) && !missingUplinks.includes(u)),
  );

  const served = snapshot.pods
    .filter((p) => p.ips.length && p.phase !== 'Succeeded' && p.phase !== 'Failed')
    .filter(
      (p) => !spec.namespaceSelector || matchesSelector(spec.namespaceSelector, snapshot.namespaces.get(p.namespace)),
    )
    .filter((p) => !spec.podSelector || matchesSelector(spec.podSelector, p.labels))
    .map((p) => ({ p, key: `${p.namespace}/${p.name}` }))
    .sort((a, b) => compare(a.key, b.key))
    .map(({ p }) => p);
  const sources = served.flatMap((p) => p.ips);
  const floatingAddresses = floating.map((a) => a.address);
  const gatewayNodes = new Set(nodes);
  const away: AwayPod[] = served
    .filter((p) => p.node !== undefined && !gatewayNodes.has(p.node))
    .map((p) => {
      const egress = egressAddresses(p, floatingAddresses);
      return {
        namespace: p.namespace,
        name: p.name,
        addresses: p.ips,
        ...(egress.length ? { egress } : {}),
        ...(p.nodeAssociation ? { association: p.nodeAssociation } : {}),
        node: p.node!,
      };
    });
  const egressOf = new Map(away.filter((p) => p.egress).map((p) => [`${p.namespace}/${p.name}`, p.egress!]));
  const associated = served.filter((p) => p.containers.includes(sidecarContainerName) || p.nodeAssociation);

  const policies = snapshot.policies
    .filter((p) => p.spec.gateway === gateway.metadata.name)
    .sort((a, b) => a.spec.priority - b.spec.priority || byName(a, b));
  // A policy selects pods of its own namespace only.
  const servedIn = Map.groupBy(served, (p) => p.namespace);
  const facts = new Map<string, PolicyFacts>();
  const rules: CompiledRule[] = [];
  for (const policy of policies) {
    const compiled = compilePolicy(policy, servedIn.get(policy.metadata.namespace!) ?? [], uplinkNames);
    rules.push(...compiled.rules);
    facts.set(key(policy), compiled.facts);
  }
  markConflicts(rules, facts);
  const tunnel = snapshot.steering && 'tunnel' in snapshot.steering ? snapshot.steering : undefined;
  const steering = tunnel && gatewaySteering(snapshot, tunnel.tunnel, nodes, uplinks, away, floating);

  const withoutHash: GatewayConfig = {
    version: configVersion,
    gateway: gateway.metadata.name,
    sources,
    pods: served.map((p) =>
      podEntry(p, {
        namespace: p.namespace,
        name: p.name,
        addresses: p.ips,
        ...(p.node ? { node: p.node } : {}),
        // A node-driven pod of one of the gateway's nodes: that node's gateway agent drives it (away
        // pods are their node agent's, in its NodeConfig).
        ...(p.nodeAssociation && p.node && gatewayNodes.has(p.node) ? { association: p.nodeAssociation } : {}),
        ...(egressOf.has(`${p.namespace}/${p.name}`) ? { egress: egressOf.get(`${p.namespace}/${p.name}`)! } : {}),
      }),
    ),
    bypass: [...snapshot.bypass],
    uplinks,
    balancing: spec.balancing,
    timeouts: spec.timeouts,
    defaultAction: spec.defaultAction,
    association: {
      port: spec.association.port,
      unassociatedFlows: spec.association.unassociatedFlows,
      sidecarSources: associated.flatMap((p) => p.ips),
      strictSources: associated.filter((p) => p.strict).flatMap((p) => p.ips),
    },
    ...(steering && tunnel
      ? {
          steering: {
            tunnel: steering.tunnel,
            markMask: tunnel.markMask,
            sources: steering.sources.map(({ node, addresses }) => ({ node, addresses })),
          },
        }
      : {}),
    rules,
    ...(spec.failover && floating.length
      ? {
          failover: {
            addresses: floating,
            leaseDurationMs: spec.failover.leaseDurationMilliseconds,
            failback: spec.failover.failback,
            failbackDelaySeconds: spec.failover.failbackDelaySeconds,
            nodes: nodes
              .map((node) => ({
                node,
                addresses: tunnelAddresses(snapshot.nodes.find((n) => n.name === node)?.addresses ?? []),
              }))
              .filter((n) => n.addresses.length),
            draining: nodes.filter(
              (node) =>
                spec.failover!.drainNodes?.includes(node) || snapshot.nodes.find((n) => n.name === node)?.unschedulable,
            ),
          },
        }
      : {}),
    // What the agent asks at SIGTERM: whether its node still belongs to the gateway.
    placement: { nodeSelector: spec.nodeSelector ?? {}, excludedNodes },
    ...(snapshot.marks ? { marks: { uplinks: snapshot.marks.uplinks } } : {}),
  };
  return {
    config: { ...withoutHash, hash: configHash(withoutHash) },
    nodes,
    excludedNodes,
    servedPods: served.length,
    missingUplinks,
    policies: facts,
    away,
    ...(steering ? { steering } : {}),
  };
}

type ConfigPod = GatewayConfig['pods'][number];

/**
 * What the last compile made of each pod and each policy, by the object it was made of: the caches
 * hand an unchanged pod (its facts, operator/reconcilers/cluster.ts) or policy on as the same
 * object, and a part made again equal to the last one is handed on as that same object, whose
 * text the config's hash and slices already hold (contracts/gateway/texts.ts).
 */
const podEntries = new WeakMap<PodFacts, ConfigPod>();
const policyParts = new WeakMap<
  EgressPolicy,
  { served: readonly PodFacts[]; uplinks: ReadonlySet<string>; rules: CompiledRule[]; facts: PolicyFacts }
>();

/**
 * The pod's entry, the last one when equal. Only its association and its egress addresses can
 * differ for the same facts: they depend on the gateway's nodes and failover addresses.
 */
function podEntry(pod: PodFacts, entry: ConfigPod): ConfigPod {
  const last = podEntries.get(pod);
  if (
    last &&
    last.association === entry.association &&
    (last.egress === undefined) === (entry.egress === undefined) &&
    sameList(last.egress ?? [], entry.egress ?? [])
  ) {
    return last;
  }
  podEntries.set(pod, entry);
  return entry;
}

const sameList = <T>(a: readonly T[], b: readonly T[]) => a.length === b.length && a.every((x, i) => x === b[i]);

/** The nodes the gateway's nodeSelector matches, sorted. */
export function selectedNodes(gateway: EgressGateway, nodes: readonly NodeFacts[]): string[] {
  return nodes
    .filter((n) => matchesLabels(gateway.spec.nodeSelector, n.labels))
    .map((n) => n.name)
    .sort();
}

/**
 * The gateway's part in cluster-wide egress: none when no served pod runs away from its nodes on
 * a node with an address (such a node cannot be a tunnel's end).
 */
function gatewaySteering(
  snapshot: Snapshot,
  tunnel: Tunnel,
  nodes: readonly string[],
  uplinks: readonly CompiledUplink[],
  away: readonly AwayPod[],
  floating: readonly { address: string }[],
): GatewaySteering | undefined {
  const addresses = new Map(snapshot.nodes.map((n) => [n.name, tunnelAddresses(n.addresses ?? [])]));
  const awayOn = Map.groupBy(away, (p) => p.node);
  const sources = [...awayOn.keys()]
    .sort()
    .filter((node) => addresses.get(node)?.length)
    .map((node) => ({
      node,
      addresses: addresses.get(node)!,
      pods: awayOn.get(node)!.map(({ node: _, ...pod }) => pod),
    }));
  if (!sources.length) return undefined;
  const spec = snapshot.gateway.spec;
  return {
    tunnel,
    selection: spec.steering.selection,
    associationPort: spec.association.port,
    bypass: [...snapshot.bypass],
    // A gateway node without an uplink has nowhere to send a flow on.
    peers: nodes
      .filter((node) => uplinks.some((u) => !u.nodes || u.nodes.includes(node)))
      .filter((node) => addresses.get(node)?.length)
      .map((node) => ({ node, addresses: addresses.get(node)! })),
    sources,
    ...(floating.length ? { failover: { addresses: floating.map((a) => a.address) } } : {}),
  };
}

/**
 * A pod's failover addresses, one per family it has an address of: rendezvous hashing on the pod,
 * so that every pod keeps its address while the list stays, and a removed address moves only its
 * own pods.
 */
function egressAddresses(pod: PodFacts, floating: readonly string[]): string[] {
  const last = egressKept.get(pod);
  if (last && sameList(last.floating, floating)) return last.egress;
  const egress = ([4, 6] as const).flatMap((family) => {
    if (!pod.ips.some((ip) => isIP(ip) === family)) return [];
    const chosen = rendezvous(
      `${pod.namespace}/${pod.name}`,
      floating.filter((a) => isIP(a) === family),
    );
    return chosen ? [chosen] : [];
  });
  egressKept.set(pod, { floating, egress });
  return egress;
}
/** Each pod's last failover addresses and the gateway's they were chosen from: a hash per pod and address. */
const egressKept = new WeakMap<PodFacts, { floating: readonly string[]; egress: string[] }>();

/** A node's tunnel addresses: its first InternalIP of each family, IPv4 first. */
function tunnelAddresses(addresses: readonly string[]): string[] {
  const v4 = addresses.find((a) => isIP(a) === 4);
  const v6 = addresses.find((a) => isIP(a) === 6);
  return [v4, v6].filter((a): a is string => a !== undefined);
}

function nodeHas(snapshot: Snapshot, node: string, selector: Labels): boolean {
  return matchesLabels(selector, snapshot.nodes.find((n) => n.name === node)?.labels);
}

/** compiledPolicy, made again only when the policy, its namespace's served pods or the uplinks changed. */
function compilePolicy(
  policy: EgressPolicy,
  served: readonly PodFacts[],
  uplinkNames: ReadonlySet<string>,
): { rules: CompiledRule[]; facts: PolicyFacts } {
  let last = policyParts.get(policy);
  if (
    !last ||
    !sameList(last.served, served) ||
    last.uplinks.size !== uplinkNames.size ||
    ![...last.uplinks].every((u) => uplinkNames.has(u))
  ) {
    last = { served, uplinks: uplinkNames, ...compiledPolicy(policy, served, uplinkNames) };
    policyParts.set(policy, last);
  }
  // Conflicts are found among all of the gateway's policies, afresh (markConflicts).
  return { rules: last.rules, facts: { ...last.facts, conflicts: [] } };
}

/**
 * One EgressPolicy: the served pods it selects, its rules resolved to their addresses, and the
 * uplinks it names that the gateway does not balance over. Beyond spec.gateway and spec.priority,
 * which place the policy among the gateway's (compileGateway), the operator reads an EgressPolicy's
 * fields here and a rule's in compileRule.
 */
function compiledPolicy(
  policy: EgressPolicy,
  served: readonly PodFacts[],
  uplinkNames: ReadonlySet<string>,
): { rules: CompiledRule[]; facts: PolicyFacts } {
  const pods = served.filter((p) => matchesSelector(policy.spec.podSelector, p.labels));
  const sources = pods.flatMap((p) => p.ips);
  const missing = new Set<string>();
  const rules: CompiledRule[] = [];
  for (const rule of policy.spec.rules) {
    for (const name of [...(rule.uplinks?.allowed ?? []), ...(rule.uplinks?.preferred ?? [])]) {
      if (!uplinkNames.has(name)) missing.add(name);
    }
    // A policy that selects no pod yet compiles to no rules: there is no source to match.
    if (sources.length) rules.push(compileRule(policy, rule, sources, uplinkNames));
  }
  return { rules, facts: { matchedPods: pods.length, missingUplinks: [...missing].sort(), conflicts: [] } };
}

type ApiRule = EgressPolicy['spec']['rules'][number];

function compileRule(
  policy: EgressPolicy,
  rule: ApiRule,
  sources: string[],
  uplinks: ReadonlySet<string>,
): CompiledRule {
  const base = {
    policy: key(policy),
    rule: rule.name,
    priority: policy.spec.priority,
    sources,
    ...(rule.applications ? { applications: rule.applications } : {}),
    ...(rule.destinations ? { destinations: rule.destinations } : {}),
  };
  if (rule.action === 'Deny' || !rule.uplinks) return { ...base, action: rule.action };
  const allowed = rule.uplinks.allowed?.filter((n) => uplinks.has(n));
  const preferred = rule.uplinks.preferred?.filter((n) => uplinks.has(n));
  // Only uplinks that do not exist were allowed: such flows may leave through none.
  if (rule.uplinks.allowed && !allowed?.length) return { ...base, action: 'Deny' };
  const restricted = {
    ...(allowed ? { allowed } : {}),
    ...(preferred?.length ? { preferred } : {}),
  };
  return { ...base, action: 'Allow', ...(Object.keys(restricted).length ? { uplinks: restricted } : {}) };
}

/**
 * Rules of different policies with the same priority that apply to a common pod, can match a
 * common flow and decide differently: the one evaluated first (by policy name) wins, and both
 * policies say so rather than leaving it silent.
 */
function markConflicts(rules: CompiledRule[], facts: Map<string, PolicyFacts>): void {
  // Only rules with a source in common can conflict: pairs are found through their sources rather
  // than by comparing every rule with every other, which grows with the square of the policies.
  const rulesOf = new Map<string, number[]>();
  rules.forEach((rule, i) => {
    for (const source of rule.sources) {
      const list = rulesOf.get(source);
      if (list) list.push(i);
      else rulesOf.set(source, [i]);
    }
  });
  const later = new Map<number, Set<number>>();
  for (const list of rulesOf.values()) {
    for (const [n, i] of list.entries()) {
      const a = rules[i]!;
      for (const j of list.slice(n + 1)) {
        const b = rules[j]!;
        if (a.policy === b.policy || a.priority !== b.priority || a.action === b.action) continue;
        later.set(i, (later.get(i) ?? new Set()).add(j));
      }
    }
  }
  // In the order of the rules, as every policy's conflicts are listed.
  for (const i of [...later.keys()].sort((x, y) => x - y)) {
    for (const j of [...later.get(i)!].sort((x, y) => x - y)) {
      const a = rules[i]!;
      const b = rules[j]!;
      if (!overlap(a, b)) continue;
      facts.get(a.policy)?.conflicts.push(`rule ${a.rule} overlaps ${b.policy}#${b.rule}, which it shadows`);
      facts.get(b.policy)?.conflicts.push(`rule ${b.rule} is shadowed by ${a.policy}#${a.rule}`);
    }
  }
}

/** Whether two rules can match one flow: their applications and destinations can both overlap. */
function overlap(a: CompiledRule, b: CompiledRule): boolean {
  const apps =
    !a.applications ||
    !b.applications ||
    a.applications.some((x) => b.applications!.some((y) => matchersOverlap(x, y)));
  const destinations =
    !a.destinations ||
    !b.destinations ||
    a.destinations.some((x) => b.destinations!.some((y) => destinationsOverlap(x, y)));
  return apps && destinations;
}

type Destination = NonNullable<CompiledRule['destinations']>[number];

function destinationsOverlap(x: Destination, y: Destination): boolean {
  if (x.protocol !== 'Any' && y.protocol !== 'Any' && x.protocol !== y.protocol) return false;
  if (x.cidr && y.cidr && !prefixesOverlap(x.cidr, y.cidr)) return false;
  if (!x.ports || !y.ports) return true;
  return x.ports.some((p) => y.ports!.some((q) => p.port <= (q.endPort ?? q.port) && q.port <= (p.endPort ?? p.port)));
}

function prefixesOverlap(a: string, b: string): boolean {
  return contains(a, b.split('/')[0]!) || contains(b, a.split('/')[0]!);
}
