// The tunnels of cluster-wide egress, as both sides of one see it: the node agents that send a
// gateway's flows into it and the gateway agents that receive them and send the replies back.
import { Type, type Static } from '@sinclair/typebox';

const Name = Type.String({ minLength: 1, maxLength: 253, pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$' });
const Address = Type.String({ description: 'An IPv4 or IPv6 address.', minLength: 2, maxLength: 45 });

export const Tunnel = Type.Object(
  {
    vni: Type.Integer({
      minimum: 1,
      maximum: 16777215,
      description: "The VXLAN network identifier of the gateway's tunnel.",
    }),
    port: Type.Integer({
      minimum: 1,
      maximum: 65535,
      description: 'The UDP port of every naat tunnel in the cluster.',
    }),
  },
  { description: "The gateway's tunnel: one VXLAN device per gateway on each node that sends or receives its flows." },
);
export type Tunnel = Static<typeof Tunnel>;

/** A node at the other end of a tunnel, by the addresses its tunnel packets are sent to. */
export const TunnelEndpoint = Type.Object({
  node: Name,
  addresses: Type.Array(Address, {
    minItems: 1,
    maxItems: 2,
    description: "The node's own addresses (its InternalIP, one per family): outer addresses of tunnel packets.",
  }),
});
export type TunnelEndpoint = Static<typeof TunnelEndpoint>;
