// `naat status`: what the gateways are doing, read from what the apiserver holds: each
// EgressGateway's status, its compiled config (ConfigMap) and agent pods, and its Uplinks' status,
// which every gateway node's agent writes its own entry of. Pure: the shell reads the objects.
import type { GatewayConfig } from '../contracts/gateway/index.ts';
import type { Condition, EgressGateway, Uplink } from '../crds/index.ts';
import { age, type View } from './output.ts';

/** A gateway agent's pod, as the DaemonSet runs it on a gateway node. */
export interface AgentPod {
  gateway: string;
  node: string;
  pod: string;
  ready: boolean;
}

export interface StatusInput {
  gateways: readonly EgressGateway[];
  uplinks: readonly Uplink[];
  /** Each gateway's compiled config, by gateway name; missing before the operator wrote it. */
  configs: ReadonlyMap<string, GatewayConfig>;
  agents: readonly AgentPod[];
  now: Date;
  /** How far back a change of an uplink's health on a node counts as a recent failover. */
  failoverWindowMs: number;
}

export interface GatewaySummary {
  name: string;
  ready: string;
  accepted: string;
  steeringReady: string;
  readyNodes: number;
  desiredNodes: number;
  uplinks: string[];
  configHash?: string;
  message?: string;
}

export interface UplinkOnNode {
  uplink: string;
  gateway: string;
  node: string;
  /** Unknown until the node's agent reported. */
  healthy?: boolean;
  since?: string;
  activeFlows?: number;
  portUtilisationPercent?: number;
  latencyMs?: number;
  lossPercent?: number;
  interface: string;
}

export interface EgressAddress {
  /** The SNAT address, or `interface NAME` where the uplink translates to its interface's own. */
  address: string;
  uplink: string;
  gateway: string;
  /** The gateway nodes that translate to it now: the uplink is there and healthy. */
  owners: string[];
}

export interface SteeringNode {
  gateway: string;
  node: string;
  ready: boolean;
  reason?: string;
  since: string;
  message?: string;
}

export interface Failover {
  at: string;
  uplink: string;
  node: string;
  /** What the uplink became on the node then: unhealthy takes it out of use, healthy brings it back. */
  healthy: boolean;
}

export interface Status {
  gateways: GatewaySummary[];
  nodes: AgentPod[];
  uplinks: UplinkOnNode[];
  addresses: EgressAddress[];
  steering: SteeringNode[];
  failovers: Failover[];
}

const conditionOf = (conditions: readonly Condition[] | undefined, type: string) =>
  conditions?.find((c) => c.type === type);
const conditionStatus = (conditions: readonly Condition[] | undefined, type: string) =>
  conditionOf(conditions, type)?.status ?? 'Unknown';
const byName = <T extends { metadata: { name: string } }>(a: T, b: T) => a.metadata.name.localeCompare(b.metadata.name);

export function gatewayStatus(input: StatusInput): Status {
  const gateways = [...input.gateways].sort(byName);
  const uplinkObjects = new Map(input.uplinks.map((u) => [u.metadata.name, u]));
  const nodes = [...input.agents].sort((a, b) => a.gateway.localeCompare(b.gateway) || a.node.localeCompare(b.node));
  const uplinks: UplinkOnNode[] = [];
  const addresses: EgressAddress[] = [];
  for (const gateway of gateways) {
    const name = gateway.metadata.name;
    const config = input.configs.get(name);
    const gatewayNodes = nodes.filter((n) => n.gateway === name).map((n) => n.node);
    for (const compiled of config?.uplinks ?? []) {
      const reported = new Map((uplinkObjects.get(compiled.name)?.status?.nodes ?? []).map((n) => [n.node, n]));
      // The nodes the uplink is on: those it names, or every node of the gateway, and any that reported it.
      const on = [...new Set([...(compiled.nodes ?? gatewayNodes), ...reported.keys()])].sort();
      for (const node of on) {
        const report = reported.get(node);
        uplinks.push({
          uplink: compiled.name,
          gateway: name,
          node,
          interface: compiled.interface,
          ...(report
            ? {
                healthy: report.healthy,
                since: report.since,
                activeFlows: report.activeFlows,
                portUtilisationPercent: report.portUtilisationPercent,
                ...(report.latencyMs !== undefined ? { latencyMs: report.latencyMs } : {}),
                ...(report.lossPercent !== undefined ? { lossPercent: report.lossPercent } : {}),
              }
            : {}),
        });
      }
      const owners = on.filter((node) => reported.get(node)?.healthy === true);
      const snat = compiled.snat.addresses ?? [];
      for (const address of snat.length ? snat : [`interface ${compiled.interface}`]) {
        addresses.push({ address, uplink: compiled.name, gateway: name, owners });
      }
    }
  }
  const steering = gateways.flatMap((gateway) =>
    (gateway.status?.steering?.nodes ?? [])
      .map((n): SteeringNode => ({
        gateway: gateway.metadata.name,
        node: n.node,
        ready: n.ready,
        since: n.since,
        ...(n.reason ? { reason: n.reason } : {}),
        ...(n.message ? { message: n.message } : {}),
      }))
      .sort((a, b) => a.node.localeCompare(b.node)),
  );
  const since = input.now.getTime() - input.failoverWindowMs;
  const failovers = uplinks
    .filter((u) => u.since !== undefined && u.healthy !== undefined && Date.parse(u.since) >= since)
    .map((u): Failover => ({ at: u.since!, uplink: u.uplink, node: u.node, healthy: u.healthy! }))
    .sort((a, b) => b.at.localeCompare(a.at));
  return {
    gateways: gateways.map((gateway) => summary(gateway, input.configs.get(gateway.metadata.name))),
    nodes,
    uplinks,
    addresses,
    steering,
    failovers,
  };
}

function summary(gateway: EgressGateway, config: GatewayConfig | undefined): GatewaySummary {
  const { status } = gateway;
  const conditions = status?.conditions;
  const problem = (conditions ?? []).find((c) => c.status === 'False' && c.message);
  return {
    name: gateway.metadata.name,
    ready: conditionStatus(conditions, 'Ready'),
    accepted: conditionStatus(conditions, 'Accepted'),
    steeringReady: conditionStatus(conditions, 'SteeringReady'),
    readyNodes: status?.readyNodes ?? 0,
    desiredNodes: status?.desiredNodes ?? 0,
    uplinks: (config?.uplinks ?? []).map((u) => u.name),
    ...(status?.configHash ? { configHash: status.configHash } : {}),
    ...(problem ? { message: `${problem.type}: ${problem.message}` } : {}),
  };
}

const yesNo = (value: boolean | undefined) => (value === undefined ? 'unknown' : value ? 'yes' : 'no');
const number = (value: number | undefined, digits = 0) => (value === undefined ? '' : value.toFixed(digits));

export function statusView(status: Status, now: Date): View {
  return {
    data: status,
    sections: [
      {
        title: 'Gateways',
        columns: [
          { header: 'name' },
          { header: 'ready' },
          { header: 'nodes' },
          { header: 'steering' },
          { header: 'uplinks' },
          { header: 'accepted', wide: true },
          { header: 'config', wide: true },
          { header: 'message', wide: true },
        ],
        rows: status.gateways.map((g) => [
          g.name,
          g.ready,
          `${g.readyNodes}/${g.desiredNodes}`,
          g.steeringReady,
          g.uplinks.join(','),
          g.accepted,
          g.configHash ?? '',
          g.message ?? '',
        ]),
        empty: 'No EgressGateways.',
      },
      {
        title: 'Nodes',
        columns: [{ header: 'gateway' }, { header: 'node' }, { header: 'agent ready' }, { header: 'pod', wide: true }],
        rows: status.nodes.map((n) => [n.gateway, n.node, yesNo(n.ready), n.pod]),
        empty: 'No gateway agents run.',
      },
      {
        title: 'Uplinks',
        columns: [
          { header: 'uplink' },
          { header: 'gateway' },
          { header: 'node' },
          { header: 'healthy' },
          { header: 'since' },
          { header: 'flows' },
          { header: 'ports %' },
          { header: 'interface', wide: true },
          { header: 'latency ms', wide: true },
          { header: 'loss %', wide: true },
        ],
        rows: status.uplinks.map((u) => [
          u.uplink,
          u.gateway,
          u.node,
          yesNo(u.healthy),
          age(u.since, now),
          number(u.activeFlows),
          number(u.portUtilisationPercent, 1),
          u.interface,
          number(u.latencyMs, 1),
          number(u.lossPercent, 1),
        ]),
        empty: 'No uplinks.',
      },
      {
        title: 'Egress addresses',
        columns: [{ header: 'address' }, { header: 'uplink' }, { header: 'gateway' }, { header: 'owners' }],
        rows: status.addresses.map((a) => [a.address, a.uplink, a.gateway, a.owners.join(',') || '<none>']),
        empty: 'No egress addresses.',
      },
      {
        title: 'Steering',
        columns: [
          { header: 'gateway' },
          { header: 'node' },
          { header: 'ready' },
          { header: 'reason' },
          { header: 'since' },
          { header: 'message', wide: true },
        ],
        rows: status.steering.map((s) => [
          s.gateway,
          s.node,
          yesNo(s.ready),
          s.reason ?? '',
          age(s.since, now),
          s.message ?? '',
        ]),
        empty: 'No node steers pods to a gateway.',
      },
      {
        title: 'Recent failovers',
        columns: [{ header: 'age' }, { header: 'uplink' }, { header: 'node' }, { header: 'became' }],
        rows: status.failovers.map((f) => [age(f.at, now), f.uplink, f.node, f.healthy ? 'healthy' : 'unhealthy']),
        empty: 'No uplink changed health recently.',
      },
    ],
  };
}
