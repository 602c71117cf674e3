// Which gateway may listen where, pure. Every agent runs on the host network, so on one node only
// one process can listen at a port: a gateway's agent at the chart's health and metrics ports and
// at its association port on each of its nodes, and the node agent's relay of each gateway at that
// gateway's association port on each node that hosts its pods away from its nodes. Two gateways
// whose agents meet on a node with one port would have the second fail to listen, or a sidecar's
// stream reach the other gateway's agent. The operator decides who holds each port, before
// anything runs, and keeps the other gateway off that node, saying why:
// - gateway agents before relays: a gateway's nodes are chosen by its nodeSelector and carry its
//   egress, while relays follow pods as they are scheduled; a pod never takes a gateway node away;
// - among equals, the older gateway (creationTimestamp, then name): a new gateway never displaces
//   one that runs.
// A gateway node also holds the agent's own kernel state (the `inet naat` table, its routing
// tables), so a node is the gateway node of one gateway only, whatever the ports.

export interface PortClaimant {
  gateway: string;
  /** metadata.creationTimestamp (RFC 3339); '' when unknown, which sorts first. */
  created: string;
  associationPort: number;
}

/** What another gateway holds on a node, as told to the gateway that wanted it too. */
export interface PortConflict {
  node: string;
  port: number;
  /** The gateway that holds the port there. */
  heldBy: string;
  /** What listens there: that gateway's agent, or the node agent's relay of that gateway's pods. */
  holder: 'gateway agent' | 'relay';
}

/** The gateway agents' ports that do not depend on the gateway (the chart's). */
export interface AgentPorts {
  health: number;
  metrics: number;
}

const byAge = (a: PortClaimant, b: PortClaimant) =>
  a.created.localeCompare(b.created) || a.gateway.localeCompare(b.gateway);

/** Who listens at each port of each node, as the decisions are made. */
class Ports {
  readonly #held = new Map<string, { gateway: string; holder: PortConflict['holder'] }>();

  /** The first of `ports` another gateway holds on `node`, if any. */
  taken(node: string, ports: readonly number[], gateway: string): PortConflict | undefined {
    for (const port of ports) {
      const held = this.#held.get(`${node} ${port}`);
      if (held && held.gateway !== gateway) return { node, port, heldBy: held.gateway, holder: held.holder };
    }
    return undefined;
  }

  hold(node: string, ports: readonly number[], gateway: string, holder: PortConflict['holder']): void {
    for (const port of ports) this.#held.set(`${node} ${port}`, { gateway, holder });
  }
}

/**
 * The nodes each gateway's agent may not run on, by gateway: those where another gateway's agent
 * holds one of its ports (`nodes`: the nodes each gateway's nodeSelector matches). Sorted by node.
 */
export function gatewayNodeConflicts(
  claimants: readonly PortClaimant[],
  nodes: ReadonlyMap<string, readonly string[]>,
  agentPorts: AgentPorts,
): Map<string, PortConflict[]> {
  const ports = new Ports();
  const lost = new Map<string, PortConflict[]>();
  for (const claimant of [...claimants].sort(byAge)) {
    const wanted = [agentPorts.health, agentPorts.metrics, claimant.associationPort];
    const conflicts: PortConflict[] = [];
    for (const node of [...(nodes.get(claimant.gateway) ?? [])].sort()) {
      const conflict = ports.taken(node, wanted, claimant.gateway);
      if (conflict) conflicts.push(conflict);
      else ports.hold(node, wanted, claimant.gateway, 'gateway agent');
    }
    lost.set(claimant.gateway, conflicts);
  }
  return lost;
}

/**
 * The nodes from which each gateway's pods cannot be relayed, by gateway: those where a gateway
 * agent or an older gateway's relay holds its association port. `gatewayNodes` are where the
 * gateway agents run (after gatewayNodeConflicts), `sources` the nodes that host each gateway's
 * pods away from its nodes. Sorted by node.
 */
export function relayConflicts(
  claimants: readonly PortClaimant[],
  gatewayNodes: ReadonlyMap<string, readonly string[]>,
  sources: ReadonlyMap<string, readonly string[]>,
  agentPorts: AgentPorts,
): Map<string, PortConflict[]> {
  const ordered = [...claimants].sort(byAge);
  const ports = new Ports();
  for (const claimant of ordered) {
    const wanted = [agentPorts.health, agentPorts.metrics, claimant.associationPort];
    for (const node of gatewayNodes.get(claimant.gateway) ?? [])
      ports.hold(node, wanted, claimant.gateway, 'gateway agent');
  }
  const lost = new Map<string, PortConflict[]>();
  for (const claimant of ordered) {
    const conflicts: PortConflict[] = [];
    for (const node of [...(sources.get(claimant.gateway) ?? [])].sort()) {
      const conflict = ports.taken(node, [claimant.associationPort], claimant.gateway);
      if (conflict) conflicts.push(conflict);
      else ports.hold(node, [claimant.associationPort], claimant.gateway, 'relay');
    }
    lost.set(claimant.gateway, conflicts);
  }
  return lost;
}

/** The conflict in words, for a condition's message. */
export function describeConflict(c: PortConflict): string {
  return c.holder === 'gateway agent'
    ? `node ${c.node} runs the agent of EgressGateway ${c.heldBy}, which listens at port ${c.port}`
    : `node ${c.node} relays the association streams of EgressGateway ${c.heldBy}'s pods at port ${c.port}`;
}
