// Cluster-wide egress across gateways, pure: which VNI each gateway's tunnel gets, the NodeConfig
// of every node that hosts pods a gateway serves away from that gateway's nodes, and whether the
// node agents report steering ready with the config they were given. Deterministic, as compile.ts:
// the same gateways give byte-identical node configs, so a hash changes only with the content.
import { createHash } from 'node:crypto';
import type { Static } from '@sinclair/typebox';
import { maxVni, type EgressGateway, type SteeringNodeStatus } from '../crds/index.ts';
import { nodeConfigHash, nodeConfigVersion, type NodeConfig, type NodeGateway } from '../contracts/gateway/index.ts';
import type { Compiled, TunnelFacts } from './compile.ts';
import { describeConflict, type PortConflict } from './host-ports.ts';

/** Why a node does not steer yet while its agent catches up (status.ts lets new pods wait for them). */
export const settlingReasons = { notReported: 'NotReported', configPending: 'ConfigPending' } as const;

/** A VNI from the gateway's name, spread over the whole range: 1–16777215. */
export function derivedVni(gateway: string): number {
  return (createHash('sha256').update(gateway).digest().readUInt32BE(0) % maxVni) + 1;
}

/**
 * The tunnel of each gateway, by name. A VNI two gateways would share goes to the one that set it
 * in spec.steering.vni, then to the one whose name sorts first; the other gets no tunnel and is
 * told which gateway holds its VNI. Two gateways on one node with one VNI would share a device.
 */
export function gatewayTunnels(
  gateways: readonly EgressGateway[],
  port: number,
  markMask: number,
): Map<string, TunnelFacts> {
  const wanted = gateways
    .map((g) => ({ name: g.metadata.name, explicit: g.spec.steering.vni !== undefined, vni: vniOf(g) }))
    .sort((a, b) => Number(b.explicit) - Number(a.explicit) || a.name.localeCompare(b.name));
  const holders = new Map<number, string>();
  const tunnels = new Map<string, TunnelFacts>();
  for (const { name, vni } of wanted) {
    const holder = holders.get(vni);
    if (holder) {
      tunnels.set(name, { vniTakenBy: holder, vni });
      continue;
    }
    holders.set(vni, name);
    tunnels.set(name, { tunnel: { vni, port }, markMask });
  }
  return tunnels;
}

const vniOf = (gateway: EgressGateway) => gateway.spec.steering.vni ?? derivedVni(gateway.metadata.name);

export interface NodeAgentSettings {
  /** The node agents' bits of the marks: which gateway node a steered flow is pinned to. */
  markMask: number;
  /** The gateway agents' health port, whose /steering says whether a gateway node takes flows. */
  healthPort: number;
}

/**
 * One NodeConfig per node that hosts pods some gateway serves away from that gateway's nodes,
 * holding only that node's pods, and per such gateway what its node agent steers them with.
 * Sorted by node, and within a node by gateway. A gateway's own nodes get no entry for it, nor does
 * a node where another gateway holds its association port (`relayConflicts`, by gateway).
 */
export function desiredNodeConfigs(
  compiled: readonly Compiled[],
  settings: NodeAgentSettings,
  relayConflicts: ReadonlyMap<string, readonly PortConflict[]> = new Map(),
): NodeConfig[] {
  const byNode = new Map<string, NodeGateway[]>();
  const ordered = [...compiled].sort((a, b) => a.config.gateway.localeCompare(b.config.gateway));
  for (const { config, steering } of ordered) {
    if (!steering) continue;
    const taken = new Set((relayConflicts.get(config.gateway) ?? []).map((c) => c.node));
    for (const source of steering.sources) {
      if (taken.has(source.node)) continue;
      const entries = byNode.get(source.node) ?? [];
      entries.push({
        gateway: config.gateway,
        tunnel: steering.tunnel,
        selection: steering.selection,
        associationPort: steering.associationPort,
        healthPort: settings.healthPort,
        bypass: steering.bypass,
        pods: source.pods,
        peers: steering.peers,
        ...(steering.failover ? { failover: steering.failover } : {}),
      });
      byNode.set(source.node, entries);
    }
  }
  return [...byNode.keys()].sort().map((node) => {
    const withoutHash: NodeConfig = {
      version: nodeConfigVersion,
      node,
      markMask: settings.markMask,
      gateways: byNode.get(node)!,
    };
    return { ...withoutHash, hash: nodeConfigHash(withoutHash) };
  });
}

/** A node agent's entry in an EgressGateway's status.steering.nodes, as it applies it. */
export type SteeringReport = Static<typeof SteeringNodeStatus>;

/**
 * The nodes whose entries in the gateway's status.steering.nodes no node agent keeps current any
 * more, sorted: the node's config does not hold the gateway (the node is gone, it no longer hosts
 * the gateway's pods, or they cannot be steered from there). `configs` are the node configs by node.
 */
export function staleReports(
  gateway: string,
  reports: readonly SteeringReport[],
  configs: ReadonlyMap<string, NodeConfig>,
): string[] {
  return reports
    .map((r) => r.node)
    .filter((node) => !configs.get(node)?.gateways.some((g) => g.gateway === gateway))
    .sort();
}

/** Whether a gateway's served pods on one node are steered, and if not, why (a condition reason). */
export interface NodeSteering {
  node: string;
  ready: boolean;
  reason: string;
  message: string;
}

const conditionReason = /^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/;

/**
 * For each node that hosts the gateway's away pods, sorted: ready only when the node agent there
 * reported ready with the node's current config (its hash), never merely because nothing said
 * otherwise. `configs` are the node configs by node (desiredNodeConfigs), `relayConflicts` the
 * gateway's nodes that another gateway holds its association port on.
 */
export function nodeSteering(
  compiled: Compiled,
  tunnel: TunnelFacts | undefined,
  configs: ReadonlyMap<string, NodeConfig>,
  reports: readonly SteeringReport[],
  relayConflicts: readonly PortConflict[] = [],
): NodeSteering[] {
  const gateway = compiled.config.gateway;
  return [...new Set(compiled.away.map((p) => p.node))].sort().map((node): NodeSteering => {
    const notReady = (reason: string, message: string) => ({ node, ready: false, reason, message });
    if (tunnel && 'vniTakenBy' in tunnel) {
      return notReady(
        'VniConflict',
        `VNI ${tunnel.vni} is also EgressGateway ${tunnel.vniTakenBy}'s; set spec.steering.vni of one of them`,
      );
    }
    const conflict = relayConflicts.find((c) => c.node === node);
    if (conflict) {
      return notReady(
        'PortConflict',
        `${describeConflict(conflict)}, the association port of this gateway too; give one of them another spec.association.port`,
      );
    }
    const config = configs.get(node);
    if (!config?.gateways.some((g) => g.gateway === gateway)) {
      return notReady('NodeAddressUnknown', `node ${node} has no InternalIP address to tunnel from`);
    }
    const report = reports.find((r) => r.node === node);
    if (!report) return notReady(settlingReasons.notReported, `the node agent on ${node} has not reported yet`);
    if (!report.ready) {
      const reason = report.reason && conditionReason.test(report.reason) ? report.reason : 'NotReady';
      return notReady(reason, `the node agent on ${node} is not ready${report.message ? `: ${report.message}` : ''}`);
    }
    if (report.hash !== config.hash) {
      return notReady(
        settlingReasons.configPending,
        `the node agent on ${node} has not applied its current config yet`,
      );
    }
    return { node, ready: true, reason: 'Steered', message: `the node agent on ${node} steers to the gateway nodes` };
  });
}
