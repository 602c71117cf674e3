// What an agent needs to be the association driver of a pod with the Node driver (docs/naa.md):
// the pod's uid and its containers by runtime id, which its processes' cgroups name. The node
// agents get it in their NodeConfig (steering.ts), for their node's pods; the gateway agents in
// the gateway's config (config.ts), for the pods of the gateway's own nodes.
import { Type, type Static } from '@sinclair/typebox';

const Name = Type.String({ minLength: 1, maxLength: 253, pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$' });
const ContainerId = Type.String({ minLength: 64, maxLength: 64, pattern: '^[0-9a-f]{64}$' });

export const NodeAssociation = Type.Object(
  {
    uid: Type.String({ minLength: 1, maxLength: 64, pattern: '^[0-9a-f-]+$' }),
    containers: Type.Array(Type.Object({ id: ContainerId, name: Name }), {
      default: [],
      description: "The pod's running containers by the runtime's id, which its processes' cgroups name.",
    }),
    strict: Type.Optional(
      Type.Boolean({
        description:
          "Strict association mode: the agent answers the pod's programs' requests for a stamp, on the socket in the pod's shared folder.",
      }),
    ),
  },
  {
    description:
      "Present when the agent of the pod's node is the pod's association driver (association.driver Node): the node agent, in a NodeConfig; the gateway agent, in a gateway's config, for a pod of one of the gateway's nodes. The pod's uid, which its processes' cgroups name, and its containers.",
  },
);
export type NodeAssociation = Static<typeof NodeAssociation>;
