// EgressGateway: a set of gateway nodes running the dataplane, the uplinks they balance over,
// the pods they serve and how flows are classified, balanced and timed out.
import { Type, type Static } from '@sinclair/typebox';
import { withRules } from './cel.ts';
import {
  DefaultedObject,
  conditionColumn,
  IpAddress,
  LabelMap,
  ObjectName,
  LabelSelector,
  ObjectNameList,
  Port,
  StatusObject,
  StringEnum,
  type KindDefinition,
} from './common.ts';

/** Used when balancing.mode is SourceSticky and stickySeconds is omitted. */
export const defaultStickySeconds = 300;

export const GatewayUplinks = withRules(
  Type.Object(
    {
      names: Type.Optional(ObjectNameList('Uplinks chosen by name.', 'Name of an Uplink.', 32)),
      selector: Type.Optional(LabelSelector('Uplinks chosen by their labels.')),
    },
    {
      description:
        'The uplinks this gateway balances flows over, by names or by a label selector (exactly one). Uplinks that do not exist yet are ignored until they do; the Accepted condition names them.',
    },
  ),
  {
    rule: 'has(self.names) != has(self.selector)',
    message: 'uplinks must set exactly one of names or selector',
    holds: (self) => (self.names !== undefined) !== (self.selector !== undefined),
  },
);

export const Balancing = withRules(
  DefaultedObject(
    {
      mode: StringEnum(['Weighted', 'LeastLoaded', 'SourceSticky'], {
        description:
          "How a new flow picks an uplink among the healthy ones of the lowest usable tier that the flow's rule allows. Weighted: per flow, in proportion to the uplinks' weights. LeastLoaded: per flow, favouring the uplink with the fewest active flows relative to its weight. SourceSticky: every flow of one source address uses the same uplink (paired pooling, RFC 4787) for stickySeconds after its last flow, weighted across sources.",
        default: 'Weighted',
      }),
      stickySeconds: Type.Optional(
        Type.Integer({
          description: `How long a source keeps its uplink after its last flow ended, in SourceSticky mode only; ${defaultStickySeconds} when omitted.`,
          minimum: 1,
          maximum: 86400,
        }),
      ),
    },
    {
      description:
        'How new flows are spread over uplinks. A flow stays on its uplink until it ends or that uplink fails.',
    },
  ),
  {
    rule: "self.mode == 'SourceSticky' || !has(self.stickySeconds)",
    message: 'balancing.stickySeconds is only valid when balancing.mode is SourceSticky',
    fieldPath: '.stickySeconds',
    holds: (self) => self.mode === 'SourceSticky' || self.stickySeconds === undefined,
  },
);

export const Timeouts = DefaultedObject(
  {
    tcpEstablishedSeconds: Type.Integer({
      description:
        'Idle time after which an established TCP flow and its translation are forgotten. The default is the minimum RFC 5382 allows.',
      minimum: 60,
      maximum: 2592000,
      default: 7440,
    }),
    tcpTransitorySeconds: Type.Integer({
      description: 'Idle time of TCP flows that are opening or closing (RFC 5382 transitory state).',
      minimum: 10,
      maximum: 3600,
      default: 240,
    }),
    udpSeconds: Type.Integer({
      description: 'Idle time after which a UDP flow is forgotten (RFC 4787 recommends at least 300).',
      minimum: 10,
      maximum: 3600,
      default: 300,
    }),
    icmpSeconds: Type.Integer({
      description: 'Idle time after which an ICMP query mapping is forgotten (RFC 5508 requires at least 60).',
      minimum: 10,
      maximum: 3600,
      default: 60,
    }),
  },
  {
    description: 'Connection-tracking idle timeouts of translated flows on the gateway nodes.',
  },
);

export const SidecarInjection = withRules(
  Type.Object(
    {
      podSelector: Type.Optional(
        LabelSelector('Pods that get the sidecar; every served pod in the selected namespaces when omitted.'),
      ),
      namespaceSelector: Type.Optional(
        LabelSelector("Namespaces whose pods get the sidecar; every served pod's namespace when omitted."),
      ),
    },
    {
      description:
        'Which served pods get the association sidecar injected when they are created. Only pods with the sidecar have their flows associated with applications; rules naming applications never match the others.',
    },
  ),
  {
    rule: 'has(self.podSelector) || has(self.namespaceSelector)',
    message: 'association.sidecar must set podSelector, namespaceSelector or both (an empty selector {} selects all)',
    holds: (self) => self.podSelector !== undefined || self.namespaceSelector !== undefined,
  },
);

export const Association = DefaultedObject(
  {
    driver: StringEnum(['Sidecar', 'Node'], {
      description:
        "What finds which process owns each socket of a selected pod. Sidecar: a sidecar injected into the pod (it needs SYS_PTRACE and a shared process namespace, and costs each pod its memory). Node: the agent of the pod's node (its node agent, or on this gateway's own nodes its gateway agent), for every selected pod of that node at once, from the host's process view, in Observe or Strict mode. A pod can choose for itself with the annotation naat.dev/association-driver: Sidecar or Node.",
      default: 'Sidecar',
    }),
    mode: StringEnum(['Observe', 'Strict'], {
      description:
        "How flows are associated with the application that opened them. Observe: the driver reports each socket as it sees it, so a flow can start before its association arrives (see unassociatedFlows). Strict: a library preloaded into the pod's programs stamps each socket with its application before connect(), so the gateway classifies every new flow from its first packet (programs that cannot preload it, such as static binaries, fall back to Observe). A pod can choose for itself with the annotation naat.dev/association-mode: Observe or Strict.",
      default: 'Observe',
    }),
    unassociatedFlows: StringEnum(['PodRules', 'Hold'], {
      description:
        "What a flow gets while its application is not known yet. PodRules: the pod's rules that name no applications decide, then defaultAction; when the association arrives the flow is evaluated again and ended if now denied. Hold: the flow's packets are dropped until the association arrives, so TCP connects are delayed by a SYN retransmission (about one second) instead of racing the association; flows of pods without the sidecar are never associated and never leave.",
      default: 'PodRules',
    }),
    port: Port(
      'Port the association server listens on at each gateway node, and the node agent relays the sidecars at on other nodes; the sidecars connect to it. Gateways whose pods or nodes can share a node need distinct ports: the younger one is kept off a node where another holds its port (PortConflict).',
      7740,
    ),
    sidecar: Type.Optional(SidecarInjection),
  },
  {
    description:
      'Network application association: a driver (a sidecar in each selected pod, or the node agent of its node) tells the gateway which process, executable, container and user owns each outbound socket, so that rules can match applications.',
  },
);

/** The VXLAN network identifiers a gateway's tunnel can use (24 bits, 0 reserved). */
export const maxVni = 16777215;

export const Steering = DefaultedObject(
  {
    selection: StringEnum(['Pod', 'Flow'], {
      description:
        "How the node a served pod runs on picks one of the gateway's nodes for a new flow, among those that are up and have a healthy uplink. Pod: every flow of a pod leaves through the same gateway node while that node is up (rendezvous hashing: every node computes the same answer, and losing a gateway node moves only its own pods). Flow: each new flow is placed on its own, spreading one pod's flows over the gateway nodes. Either way a flow keeps its gateway node for its whole life.",
      default: 'Pod',
    }),
    vni: Type.Optional(
      Type.Integer({
        description:
          "The VXLAN network identifier of this gateway's tunnel, unique among the cluster's gateways. When omitted the operator derives one from the gateway's name. Should two gateways end up with the same one, the gateway that set it here keeps it, else the one whose name sorts first; the other steers nothing and its SteeringReady condition says VniConflict until one of them sets another.",
        minimum: 1,
        maximum: maxVni,
      }),
    ),
  },
  {
    description:
      "Cluster-wide egress: served pods on nodes that are not this gateway's nodes have their flows steered to a gateway node through a VXLAN tunnel, by a node agent the operator runs on each such node. Pods on the gateway's own nodes take the local path.",
  },
);

export const FailoverAddress = Type.Object(
  {
    address: IpAddress(
      'An egress address: flows of the pods it is given to leave with it as their source, from whichever gateway node owns it.',
      'each failover.addresses entry address',
    ),
    uplink: ObjectName(
      "The Uplink whose interface carries the address on the node that owns it, one of the gateway's uplinks: the address must be routed to that interface's network.",
    ),
  },
  { description: 'One egress address that moves between the gateway nodes.' },
);

export const Failover = Type.Object(
  {
    addresses: Type.Array(FailoverAddress, {
      description:
        "Egress addresses not tied to a node: one healthy gateway node owns each at a time and claims it on its uplink's network (gratuitous ARP, unsolicited neighbour advertisement). Each served pod away from the gateway's nodes is given one address per family (rendezvous hashing on the pod), and its flows go to the address's owner and leave with that address; when the owner fails, another node takes the address over with the flows' connection-tracking state.",
      minItems: 1,
      maxItems: 64,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['address'],
    }),
    leaseDurationMilliseconds: Type.Integer({
      description:
        "How long a gateway node owns its addresses after its last renewal of its Lease: a node that cannot renew for this long gives them up (unless every gateway node it still hears cannot reach the API server either), and another takes them over once the Lease is this much older than its last renewal. It bounds the failover time after a node's loss; it is renewed three times in this period (at 300 ms, 10 writes a second per gateway node). Raise it where the API server's writes may take longer than two thirds of it.",
      minimum: 200,
      maximum: 60000,
      default: 300,
    }),
    failback: Type.Boolean({
      description:
        'Whether an address moves back to the node rendezvous hashing prefers for it once that node has been healthy for failbackDelaySeconds. By default an address stays with its owner while the owner is healthy, so a node that comes back takes nothing back.',
      default: false,
    }),
    failbackDelaySeconds: Type.Integer({
      description: 'How long a preferred node must stay healthy before an address moves back to it (failback only).',
      minimum: 0,
      maximum: 86400,
      default: 30,
    }),
    drainNodes: Type.Optional(
      Type.Array(ObjectName('A gateway node name.'), {
        description:
          'Gateway nodes that give up their addresses (to other healthy nodes, with their flows) and take none: a node being taken out. A cordoned node (spec.unschedulable) is drained too.',
        maxItems: 64,
        'x-kubernetes-list-type': 'set',
      }),
    ),
  },
  {
    description:
      'Gateway-node high availability for pods away from the gateway nodes: egress addresses that move between the gateway nodes, with their established flows.',
  },
);

export const EgressGatewaySpec = withRules(
  Type.Object(
    {
      nodeSelector: LabelMap(
        'Labels of the nodes that act as this gateway and run its dataplane; an empty map selects every node.',
      ),
      uplinks: GatewayUplinks,
      podSelector: Type.Optional(
        LabelSelector(
          'Pods whose egress this gateway handles, within the namespaces namespaceSelector selects; every pod there when omitted.',
        ),
      ),
      namespaceSelector: Type.Optional(
        LabelSelector(
          "Namespaces whose pods this gateway serves; the pod's own namespace when omitted, that is every namespace.",
        ),
      ),
      balancing: Balancing,
      timeouts: Timeouts,
      defaultAction: StringEnum(['Allow', 'Deny'], {
        description:
          'What happens to a flow from a served pod that no EgressPolicy rule matches: Allow sends it out through any healthy uplink, Deny drops it.',
        default: 'Allow',
      }),
      association: Association,
      steering: Steering,
      failover: Type.Optional(Failover),
    },
    {
      description:
        'Desired state of the gateway. At least one of podSelector and namespaceSelector must be set, so that serving every pod of the cluster is a deliberate `namespaceSelector: {}`.',
    },
  ),
  {
    rule: 'has(self.podSelector) || has(self.namespaceSelector)',
    message: 'spec must set podSelector, namespaceSelector or both (an empty selector {} selects all)',
    holds: (self) => self.podSelector !== undefined || self.namespaceSelector !== undefined,
  },
);
export type EgressGatewaySpec = Static<typeof EgressGatewaySpec>;

export const SteeringNodeStatus = Type.Object(
  {
    node: Type.String({ description: 'Name of the node that steers served pods to this gateway.', maxLength: 253 }),
    ready: Type.Boolean({
      description:
        "Whether the node's steering to this gateway is in place: its tunnel, routes and rules hold the node config the operator wrote.",
    }),
    reason: Type.Optional(
      Type.String({
        description: 'A CamelCase, machine-readable reason for ready, such as Applied or ApplyFailed.',
        minLength: 1,
        maxLength: 128,
        pattern: '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$',
      }),
    ),
    message: Type.Optional(Type.String({ description: 'What went wrong, for people.', maxLength: 1024 })),
    hash: Type.Optional(
      Type.String({ description: 'Hash of the node config the node agent applied.', maxLength: 128 }),
    ),
    since: Type.String({ description: 'When ready last changed (RFC 3339).', format: 'date-time' }),
  },
  { description: "One node's steering to this gateway, as its node agent last reported." },
);

export const FailoverStatus = Type.Object(
  {
    addresses: Type.Optional(
      Type.Array(
        Type.Object(
          {
            address: Type.String({ description: 'The egress address.', maxLength: 45 }),
            node: Type.Optional(
              Type.String({
                description: 'The gateway node that owns it now; none while no node does.',
                maxLength: 253,
              }),
            ),
          },
          { description: 'One failover address and its owner.' },
        ),
        {
          description: 'Who owns each failover address, as the gateway nodes last renewed their Leases.',
          maxItems: 64,
          'x-kubernetes-list-type': 'map',
          'x-kubernetes-list-map-keys': ['address'],
        },
      ),
    ),
    healthyNodes: Type.Optional(
      Type.Array(Type.String({ description: 'A gateway node name.', maxLength: 253 }), {
        description: 'Gateway nodes whose Lease is current and that are not drained: the candidates for an address.',
        maxItems: 1000,
        'x-kubernetes-list-type': 'set',
      }),
    ),
    lastFailover: Type.Optional(
      Type.Object(
        {
          address: Type.String({ description: 'The address that moved.', maxLength: 45 }),
          from: Type.Optional(Type.String({ description: 'The node that owned it before.', maxLength: 253 })),
          to: Type.String({ description: 'The node that owns it since.', maxLength: 253 }),
          at: Type.String({ description: 'When the new owner claimed it (RFC 3339).', format: 'date-time' }),
          reason: Type.String({
            description:
              'Why it moved: LeaseExpired (the owner stopped renewing), Released (the owner gave it up: drained, uplink unhealthy, or shutting down), Failback, or Unowned (nobody held it).',
            maxLength: 64,
          }),
          milliseconds: Type.Optional(
            Type.Integer({
              description:
                "How long the address had no owner: from the old owner's last renewal or release to the claim.",
              minimum: 0,
            }),
          ),
        },
        { description: 'The most recent move of an address.' },
      ),
    ),
  },
  { description: 'Gateway-node high availability: who owns the failover addresses.' },
);

export const EgressGatewayStatus = StatusObject(
  'Observed state of the gateway, written by the operator and, for steering, by the node agents.',
  "Accepted: the spec resolved (its uplinks exist). Ready: at least one node applied the current configuration and has a healthy uplink. SteeringReady: every node that hosts served pods away from the gateway's nodes steers them to it with its current node config (status.steering.nodes), or there is no such pod.",
  {
    desiredNodes: Type.Optional(
      Type.Integer({ description: 'Nodes that match nodeSelector and should run the dataplane.', minimum: 0 }),
    ),
    readyNodes: Type.Optional(
      Type.Integer({
        description: "Nodes whose dataplane runs and has applied the gateway's current configuration.",
        minimum: 0,
      }),
    ),
    configHash: Type.Optional(
      Type.String({
        description: 'Hash of the compiled configuration the dataplanes are asked to apply.',
        maxLength: 128,
      }),
    ),
    steering: Type.Optional(
      Type.Object(
        {
          nodes: Type.Optional(
            Type.Array(SteeringNodeStatus, {
              description:
                'Per node that hosts pods this gateway serves away from its own nodes; each node agent applies its own entry.',
              maxItems: 5000,
              'x-kubernetes-list-type': 'map',
              'x-kubernetes-list-map-keys': ['node'],
            }),
          ),
        },
        { description: 'Cluster-wide egress: how the nodes that steer served pods to this gateway are doing.' },
      ),
    ),
    failover: Type.Optional(FailoverStatus),
  },
);
export type EgressGatewayStatus = Static<typeof EgressGatewayStatus>;

export const egressGatewayDefinition = {
  kind: 'EgressGateway',
  plural: 'egressgateways',
  singular: 'egressgateway',
  shortNames: ['egw'],
  scope: 'Cluster',
  description:
    'An EgressGateway makes a set of nodes the NAT gateway for a set of pods: the operator runs the dataplane on the selected nodes, and their flows leave through the chosen uplinks, balanced, health-checked and filtered by the EgressPolicies that name this gateway.',
  spec: EgressGatewaySpec,
  status: EgressGatewayStatus,
  printerColumns: [
    { name: 'Mode', type: 'string', jsonPath: '.spec.balancing.mode', description: 'Balancing mode.' },
    { name: 'Default', type: 'string', jsonPath: '.spec.defaultAction', description: 'Action for unmatched flows.' },
    {
      name: 'Desired',
      type: 'integer',
      jsonPath: '.status.desiredNodes',
      description: 'Nodes that should run the dataplane.',
    },
    {
      name: 'Available',
      type: 'integer',
      jsonPath: '.status.readyNodes',
      description: 'Nodes that applied the current configuration.',
    },
    conditionColumn('Ready', 'Whether the gateway is serving.'),
    {
      name: 'Last-Failover',
      type: 'date',
      jsonPath: '.status.failover.lastFailover.at',
      description: 'When a failover address last moved between gateway nodes.',
      priority: 1,
    },
  ],
} satisfies KindDefinition;
