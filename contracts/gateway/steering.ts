// Cluster-wide egress: the contract between the operator and the node agents that steer served
// pods' flows from the nodes they run on to the gateway nodes, through a VXLAN tunnel per gateway.
// The operator writes one NodeConfig per node that hosts pods a gateway serves away from that
// gateway's own nodes, holding only that node's share: its served pods, and per gateway the
// gateway nodes to steer to. The gateway's own config (config.ts, `steering`) tells its agents
// which nodes send them tunnelled flows, so that replies go back the way they came.
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { isIP } from 'node:net';
import { ConfigError, parsePrefix } from './config.ts';
import { canonicalAddress } from './prefixes.ts';
import { isContiguous } from './marks.ts';
import { NodeAssociation } from './node-association.ts';

export { isContiguous };
import { Tunnel, TunnelEndpoint } from './tunnel.ts';

export const nodeConfigVersion = 1;

/**
 * The field manager with which a node's agent server-side applies its entry of an EgressGateway's
 * `status.steering.nodes`. The operator applies an empty list under the same name to remove the
 * entry of an agent that is gone: an entry goes only with an apply of the manager that owns it.
 */
export const nodeAgentFieldManager = (node: string) => `naat-node-${node}`;

const Name = Type.String({ minLength: 1, maxLength: 253, pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$' });
const Prefix = Type.String({ description: 'An IPv4 or IPv6 address or CIDR.', minLength: 2, maxLength: 49 });
const Address = Type.String({ description: 'An IPv4 or IPv6 address.', minLength: 2, maxLength: 45 });

export const SteeredPod = Type.Object({
  namespace: Name,
  name: Name,
  addresses: Type.Array(Address, { minItems: 1 }),
  association: Type.Optional(NodeAssociation),
  egress: Type.Optional(
    Type.Array(Address, {
      maxItems: 2,
      description:
        "The pod's failover addresses, one per family (the gateway's failover.addresses): its flows of that family go to the node that owns the address.",
    }),
  ),
});
export type SteeredPod = Static<typeof SteeredPod>;

export const NodeGateway = Type.Object({
  gateway: Name,
  tunnel: Tunnel,
  selection: Type.Union([Type.Literal('Pod'), Type.Literal('Flow')], {
    description:
      'Pod: every flow of a pod goes to the same gateway node while it is up (rendezvous hashing, the same answer on every node). Flow: each new flow is placed on its own.',
    default: 'Pod',
  }),
  associationPort: Type.Integer({
    minimum: 1,
    maximum: 65535,
    description:
      "The gateway's NAA port: the node agent listens on it for the node's sidecars and relays to the peers.",
  }),
  healthPort: Type.Integer({
    minimum: 1,
    maximum: 65535,
    description: "The port of the gateway agents' health endpoint, which says whether a gateway node can take flows.",
  }),
  bypass: Type.Array(Prefix, { description: 'Destinations never steered, such as the cluster networks.', default: [] }),
  pods: Type.Array(SteeredPod, { description: "The gateway's served pods on this node.", default: [] }),
  peers: Type.Array(TunnelEndpoint, { description: "The gateway's nodes, the candidates for its flows.", default: [] }),
  failover: Type.Optional(
    Type.Object(
      {
        addresses: Type.Array(Address, { minItems: 1, maxItems: 64 }),
      },
      {
        description:
          "The gateway's failover addresses. A pod with egress addresses is steered, per family, to the peer whose /steering answer says it owns the pod's address, and its flows follow the address when it moves.",
      },
    ),
  ),
});
export type NodeGateway = Static<typeof NodeGateway>;

export const NodeConfig = Type.Object({
  version: Type.Literal(nodeConfigVersion),
  node: Name,
  hash: Type.Optional(Type.String({ description: 'Content hash the operator computed; reported back once applied.' })),
  markMask: Type.Integer({
    minimum: 1,
    maximum: 0xffffffff,
    description:
      'The contiguous bits of the conntrack and packet marks that pin a steered flow to its gateway node; they must not overlap the bits of the CNI, kube-proxy or the gateway agents.',
  }),
  gateways: Type.Array(NodeGateway, { default: [] }),
});
export type NodeConfig = Static<typeof NodeConfig>;

/** Applies defaults, checks the node config and returns it; throws a ConfigError naming every problem. */
export function parseNodeConfig(input: unknown): NodeConfig {
  const value = Value.Default(NodeConfig, Value.Clone(input));
  const schemaErrors = [...Value.Errors(NodeConfig, value)].map((e) => `${e.path || '/'}: ${e.message}`);
  if (schemaErrors.length) throw new ConfigError(schemaErrors);
  const config = value as NodeConfig;
  const problems = nodeConfigProblems(config);
  if (problems.length) throw new ConfigError(problems);
  return config;
}

function nodeConfigProblems(config: NodeConfig): string[] {
  const problems: string[] = [];
  if (!isContiguous(config.markMask))
    problems.push(`markMask: 0x${config.markMask.toString(16)} is not one run of bits`);
  const address = (where: string, text: string) => {
    if (!isIP(text)) problems.push(`${where}: ${JSON.stringify(text)} is not an IP address`);
  };
  const vnis = new Map<number, string>();
  config.gateways.forEach((g, i) => {
    const at = `gateways[${i}]`;
    const other = vnis.get(g.tunnel.vni);
    if (other) problems.push(`${at}.tunnel.vni: ${g.tunnel.vni} is also the VNI of gateway ${other}`);
    vnis.set(g.tunnel.vni, g.gateway);
    g.bypass.forEach((p, j) => {
      if (!parsePrefix(p)) problems.push(`${at}.bypass[${j}]: ${JSON.stringify(p)} is not an IP address or CIDR`);
    });
    g.pods.forEach((pod, j) => pod.addresses.forEach((a, k) => address(`${at}.pods[${j}].addresses[${k}]`, a)));
    g.failover?.addresses.forEach((a, k) => address(`${at}.failover.addresses[${k}]`, a));
    // A pod's egress address decides where its flows of that family go: one per family, and one
    // the gateway fails over (whose owner its nodes announce).
    const floating = new Set(g.failover?.addresses.filter((a) => isIP(a)).map(canonicalAddress));
    g.pods.forEach((pod, j) => {
      const families = new Set<number>();
      pod.egress?.forEach((a, k) => {
        const where = `${at}.pods[${j}].egress[${k}]`;
        if (!isIP(a) || !floating.has(canonicalAddress(a))) {
          problems.push(`${where}: ${JSON.stringify(a)} is not one of the gateway's failover.addresses`);
        } else if (families.has(isIP(a))) problems.push(`${where}: a second IPv${isIP(a)} egress address`);
        families.add(isIP(a));
      });
    });
    g.peers.forEach((peer, j) => peer.addresses.forEach((a, k) => address(`${at}.peers[${j}].addresses[${k}]`, a)));
  });
  return problems;
}
