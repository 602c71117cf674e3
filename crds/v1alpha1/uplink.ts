// Uplink: one egress path out of the gateway nodes (an interface, its next hop and the addresses
// flows are translated to), with the health check that decides whether new flows may use it.
import { Type, type Static } from '@sinclair/typebox';
import { withRules } from './cel.ts';
import {
  DefaultedObject,
  conditionColumn,
  FamilyAddress,
  IpAddress,
  LabelMap,
  Port,
  StatusObject,
  StringEnum,
  type KindDefinition,
} from './common.ts';

export const PortRange = withRules(
  DefaultedObject(
    {
      min: Port('Lowest source port flows are translated to.', 1024),
      max: Port('Highest source port flows are translated to.', 65535),
    },
    {
      description:
        'Source ports that flows are translated to. Each SNAT address carries at most max-min+1 simultaneous flows to one destination address and port; when none is free the kernel drops the new flow, and the uplink status reports the utilisation.',
    },
  ),
  {
    rule: 'self.min <= self.max',
    message: 'snat.ports.min must be less than or equal to snat.ports.max',
    holds: (self) => self.min <= self.max,
  },
);

export const Snat = DefaultedObject(
  {
    addresses: Type.Optional(
      Type.Array(IpAddress('An address owned by this uplink on the gateway node.', 'each snat.addresses entry'), {
        description:
          "Source addresses flows are translated to, IPv4 and IPv6 mixed; flows of each family use the addresses of that family, spread by source address. When empty, each node uses the interface's own primary address of the flow's family.",
        maxItems: 16,
        'x-kubernetes-list-type': 'set',
      }),
    ),
    ports: PortRange,
  },
  {
    description: 'Source NAT of flows that leave through this uplink.',
  },
);

export const NextHop = withRules(
  Type.Object(
    {
      ipv4: Type.Optional(FamilyAddress(4, 'Next hop of IPv4 flows.', 'nextHop.ipv4')),
      ipv6: Type.Optional(FamilyAddress(6, 'Next hop of IPv6 flows; a link-local address is usual.', 'nextHop.ipv6')),
    },
    {
      description:
        'The router flows are sent to through the interface. Omit it for point-to-point links (PPP, WireGuard, GRE), where the interface itself is the route; a family without a next hop is routed on-link.',
    },
  ),
  {
    rule: 'has(self.ipv4) || has(self.ipv6)',
    message: 'nextHop must set ipv4, ipv6 or both; omit nextHop for a point-to-point interface',
    holds: (self) => self.ipv4 !== undefined || self.ipv6 !== undefined,
  },
);

export const HealthCheck = withRules(
  Type.Object(
    {
      targets: Type.Array(IpAddress('An address to probe.', 'each healthCheck.targets entry'), {
        description:
          'Addresses probed through this uplink (the probes leave by its interface and next hop with its SNAT address), IPv4 and IPv6 mixed. Pick hosts beyond the provider, such as public resolvers.',
        minItems: 1,
        maxItems: 8,
        'x-kubernetes-list-type': 'set',
      }),
      protocol: StringEnum(['ICMP', 'TCP', 'HTTP'], {
        description:
          'How a target is probed: ICMP sends an echo request; TCP opens a connection to port; HTTP sends GET path to port and expects a 2xx or 3xx answer.',
        default: 'ICMP',
      }),
      port: Type.Optional(Port('Destination port of TCP and HTTP probes; required for TCP, 80 when HTTP omits it.')),
      path: Type.Optional(
        Type.String({
          description: 'Request path of HTTP probes; / when omitted.',
          maxLength: 1024,
          pattern: '^/',
        }),
      ),
      intervalMs: Type.Integer({
        description: 'Milliseconds between probe rounds. Each round probes every target once.',
        minimum: 100,
        maximum: 600000,
        default: 1000,
      }),
      timeoutMs: Type.Integer({
        description: 'Milliseconds a probe may wait for its answer; must be less than intervalMs.',
        minimum: 10,
        maximum: 60000,
        default: 800,
      }),
      failureThreshold: Type.Integer({
        description: 'Consecutive failed rounds after which a healthy uplink is taken out of use on that node.',
        minimum: 1,
        maximum: 100,
        default: 3,
      }),
      successThreshold: Type.Integer({
        description: 'Consecutive successful rounds after which an unhealthy uplink is put back in use on that node.',
        minimum: 1,
        maximum: 100,
        default: 2,
      }),
      maxLossPercent: Type.Integer({
        description:
          'A round fails when more than this share of its probes get no answer within timeoutMs. With one target any loss fails the round unless this is 100.',
        minimum: 0,
        maximum: 100,
        default: 50,
      }),
      maxLatencyMs: Type.Optional(
        Type.Integer({
          description:
            'A round also fails when the mean round-trip time of its answered probes exceeds this; no latency limit when omitted. At most timeoutMs.',
          minimum: 1,
          maximum: 60000,
        }),
      ),
    },
    {
      description:
        'Probes sent through the uplink from every gateway node; an uplink that fails them on a node stops receiving new flows there and its existing flows are moved to other uplinks.',
    },
  ),
  {
    rule: 'self.timeoutMs < self.intervalMs',
    message: 'healthCheck.timeoutMs must be less than healthCheck.intervalMs',
    fieldPath: '.timeoutMs',
    holds: (self) => self.timeoutMs < self.intervalMs,
  },
  {
    rule: '!has(self.maxLatencyMs) || self.maxLatencyMs <= self.timeoutMs',
    message: 'healthCheck.maxLatencyMs must not exceed healthCheck.timeoutMs',
    fieldPath: '.maxLatencyMs',
    holds: (self) => self.maxLatencyMs === undefined || self.maxLatencyMs <= self.timeoutMs,
  },
  {
    rule: "self.protocol != 'TCP' || has(self.port)",
    message: 'healthCheck.port is required when protocol is TCP',
    holds: (self) => self.protocol !== 'TCP' || self.port !== undefined,
  },
  {
    rule: "self.protocol != 'ICMP' || !has(self.port)",
    message: 'healthCheck.port must not be set when protocol is ICMP',
    fieldPath: '.port',
    holds: (self) => self.protocol !== 'ICMP' || self.port === undefined,
  },
  {
    rule: "self.protocol == 'HTTP' || !has(self.path)",
    message: 'healthCheck.path is only valid when protocol is HTTP',
    fieldPath: '.path',
    holds: (self) => self.protocol === 'HTTP' || self.path === undefined,
  },
);

export const UplinkSpec = Type.Object(
  {
    interface: withRules(
      Type.String({
        description: 'Name of the network interface on the gateway nodes, such as eth1, ppp0 or wg0.',
        minLength: 1,
        maxLength: 15,
        pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]*$',
      }),
      {
        rule: "self != '.' && self != '..'",
        message: 'interface must be a network interface name',
        holds: (self) => self !== '.' && self !== '..',
      },
    ),
    nodeSelector: Type.Optional(
      LabelMap(
        "Labels of the gateway nodes that have this uplink; every node of a gateway that lists it when omitted. Nodes outside the gateway's nodeSelector are never used.",
      ),
    ),
    nextHop: Type.Optional(NextHop),
    snat: Snat,
    weight: Type.Integer({
      description:
        'Share of new flows this uplink gets among the healthy uplinks of its tier: an uplink of weight 2 gets twice the flows of one of weight 1.',
      minimum: 1,
      maximum: 1000,
      default: 1,
    }),
    tier: Type.Integer({
      description:
        'Lower tiers are used first: new flows go to the lowest tier that has a healthy uplink, so a backup link sits in a higher tier than the links it stands in for.',
      minimum: 0,
      maximum: 255,
      default: 0,
    }),
    healthCheck: Type.Optional(HealthCheck),
  },
  {
    description:
      'Desired state of the uplink. Without a healthCheck the uplink counts as healthy on a node while its interface is up.',
  },
);
export type UplinkSpec = Static<typeof UplinkSpec>;

export const UplinkNodeStatus = Type.Object(
  {
    node: Type.String({ description: 'Name of the gateway node.', maxLength: 253 }),
    healthy: Type.Boolean({ description: 'Whether the uplink passes its health check on this node.' }),
    since: Type.String({ description: 'When healthy last changed (RFC 3339).', format: 'date-time' }),
    latencyMs: Type.Optional(
      Type.Number({ description: 'Mean round-trip time of the last probe round, in milliseconds.', minimum: 0 }),
    ),
    lossPercent: Type.Optional(
      Type.Number({ description: 'Share of unanswered probes in the last probe round.', minimum: 0, maximum: 100 }),
    ),
    activeFlows: Type.Integer({ description: 'Flows currently leaving through this uplink on this node.', minimum: 0 }),
    portUtilisationPercent: Type.Number({
      description:
        'Highest share of the SNAT port range in use for any single SNAT address and destination; new flows to that destination are dropped at 100.',
      minimum: 0,
      maximum: 100,
    }),
  },
  { description: 'Health and load of the uplink on one gateway node, as its dataplane last reported.' },
);

export const UplinkStatus = StatusObject(
  'Observed state of the uplink, written by the operator from the dataplane reports.',
  'Ready is True while the uplink is healthy on at least one gateway node; its reason says why not otherwise (NoNodes, Unhealthy, InterfaceMissing).',
  {
    healthyNodes: Type.Optional(
      Type.Integer({ description: 'Number of gateway nodes where the uplink is healthy.', minimum: 0 }),
    ),
    activeFlows: Type.Optional(
      Type.Integer({ description: 'Flows currently leaving through this uplink, summed over nodes.', minimum: 0 }),
    ),
    nodes: Type.Optional(
      Type.Array(UplinkNodeStatus, {
        description: 'Per-node health and load.',
        maxItems: 5000,
        'x-kubernetes-list-type': 'map',
        'x-kubernetes-list-map-keys': ['node'],
      }),
    ),
  },
);
export type UplinkStatus = Static<typeof UplinkStatus>;

export const uplinkDefinition = {
  kind: 'Uplink',
  plural: 'uplinks',
  singular: 'uplink',
  shortNames: ['ul'],
  scope: 'Cluster',
  description:
    'An Uplink is one egress path out of the gateway nodes: an interface, its next hop, the addresses and ports flows are translated to, its weight and tier in balancing, and the health check that decides whether new flows may use it. EgressGateways choose which uplinks they balance over.',
  spec: UplinkSpec,
  status: UplinkStatus,
  printerColumns: [
    { name: 'Interface', type: 'string', jsonPath: '.spec.interface', description: 'Network interface.' },
    { name: 'Tier', type: 'integer', jsonPath: '.spec.tier', description: 'Lower tiers are used first.' },
    { name: 'Weight', type: 'integer', jsonPath: '.spec.weight', description: 'Share of new flows within its tier.' },
    {
      name: 'Healthy',
      type: 'integer',
      jsonPath: '.status.healthyNodes',
      description: 'Gateway nodes where the uplink is healthy.',
    },
    {
      name: 'Flows',
      type: 'integer',
      jsonPath: '.status.activeFlows',
      description: 'Flows leaving through the uplink.',
    },
    conditionColumn('Ready', 'Whether the uplink is healthy on at least one node.'),
  ],
} satisfies KindDefinition;
