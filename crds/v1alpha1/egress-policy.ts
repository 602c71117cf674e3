// EgressPolicy: ordered rules that allow or deny the egress of applications in selected pods,
// and choose which uplinks allowed flows may leave through.
import { Type, type Static } from '@sinclair/typebox';
import { withRules, type CelRule } from './cel.ts';
import {
  Cidr,
  conditionColumn,
  LabelSelector,
  ListEntryName,
  ObjectName,
  ObjectNameList,
  Port,
  StatusObject,
  StringEnum,
  type KindDefinition,
} from './common.ts';

// What each field means (matching, overlap, its form in the NAA protocol) is defined in
// contracts/applications.ts, which every component uses.
const applicationFields = {
  processName: Type.Optional(
    Type.String({
      description:
        'The name the program was started as: the last segment of its argv[0], what ps shows, such as curl, python3 or node. Not /proc/PID/comm, which programs may rename (Node.js names its main thread MainThread) and the kernel cuts at 15 characters.',
      minLength: 1,
      maxLength: 255,
    }),
  ),
  executable: Type.Optional(
    withRules(
      Type.String({
        description:
          'Absolute path of the executable inside the container, or a glob over it: * matches within a path segment, ** across segments, ? one character, such as /usr/bin/curl or /opt/**/java.',
        minLength: 1,
        maxLength: 1024,
      }),
      {
        rule: "self.startsWith('/') || self.startsWith('*')",
        message: 'executable must be an absolute path or a glob starting with / or *',
        holds: (self) => self.startsWith('/') || self.startsWith('*'),
      },
    ),
  ),
  container: Type.Optional(ListEntryName("Name of the container in the pod's spec that runs the process.")),
  uid: Type.Optional(Type.Integer({ description: 'User ID the process runs as.', minimum: 0, maximum: 4294967294 })),
};
const applicationFieldNames = Object.keys(applicationFields) as (keyof typeof applicationFields)[];

export const Application = withRules(
  Type.Object(applicationFields, {
    description: 'An application: a process that matches every field set here. At least one field must be set.',
  }),
  {
    rule: applicationFieldNames.map((name) => `has(self.${name})`).join(' || '),
    message: `each applications entry must set at least one of ${applicationFieldNames.join(', ')}`,
    holds: (self) => applicationFieldNames.some((name) => self[name] !== undefined),
  },
);
export type Application = Static<typeof Application>;

export const DestinationPort = withRules(
  Type.Object(
    {
      port: Port('Destination port, or the first port of a range when endPort is set.'),
      endPort: Type.Optional(Port('Last port of the range that starts at port (inclusive).')),
    },
    {
      description: 'A destination port or an inclusive range of ports.',
    },
  ),
  {
    rule: '!has(self.endPort) || self.endPort >= self.port',
    message: 'ports endPort must be greater than or equal to port',
    fieldPath: '.endPort',
    holds: (self) => self.endPort === undefined || self.endPort >= self.port,
  },
);

export const Destination = withRules(
  Type.Object(
    {
      cidr: Type.Optional(
        Cidr(
          'Destination network, IPv4 or IPv6, such as 203.0.113.0/24 or 2001:db8::/32; every address of both families when omitted.',
          'destinations cidr',
        ),
      ),
      protocol: StringEnum(['TCP', 'UDP', 'ICMP', 'Any'], {
        description: 'Transport protocol; ICMP means ICMPv6 for IPv6 destinations.',
        default: 'Any',
      }),
      ports: Type.Optional(
        Type.Array(DestinationPort, {
          description: 'Destination ports, for protocol TCP or UDP only; every port when omitted.',
          minItems: 1,
          maxItems: 32,
          'x-kubernetes-list-type': 'atomic',
        }),
      ),
    },
    {
      description: 'Where flows go: a network, a protocol and ports, all of which must match.',
    },
  ),
  {
    rule: "!has(self.ports) || self.protocol in ['TCP', 'UDP']",
    message: 'destinations ports require protocol TCP or UDP',
    fieldPath: '.ports',
    holds: (self) => self.ports === undefined || self.protocol === 'TCP' || self.protocol === 'UDP',
  },
);
export type Destination = Static<typeof Destination>;

export const RuleUplinks = withRules(
  Type.Object(
    {
      allowed: Type.Optional(
        ObjectNameList(
          'The only uplinks these flows may leave through; every uplink of the gateway when omitted. When none of them is healthy the flows are dropped, not sent elsewhere.',
          'Name of an Uplink of the gateway.',
          16,
        ),
      ),
      preferred: Type.Optional(
        ObjectNameList(
          'Uplinks used while at least one of them is healthy, regardless of tier; the other allowed uplinks are used only when all preferred ones are down.',
          'Name of an Uplink of the gateway.',
          16,
        ),
      ),
    },
    {
      description:
        "Restricts or steers the uplinks of the rule's flows. At least one of allowed and preferred must be set.",
    },
  ),
  {
    rule: 'has(self.allowed) || has(self.preferred)',
    message: 'uplinks must set allowed, preferred or both',
    holds: (self) => self.allowed !== undefined || self.preferred !== undefined,
  },
  {
    rule: '!has(self.allowed) || !has(self.preferred) || self.preferred.all(name, name in self.allowed)',
    message: 'every uplinks.preferred entry must also be listed in uplinks.allowed',
    fieldPath: '.preferred',
    holds: (self) => !self.allowed || !self.preferred || self.preferred.every((name) => self.allowed!.includes(name)),
  },
);

/** Also a rule of the compiled gateway config, whose rules keep their action and uplinks. */
export const uplinksOnlyWhenAllowed: CelRule<{ action: 'Allow' | 'Deny'; uplinks?: unknown }> = {
  rule: "self.action == 'Allow' || !has(self.uplinks)",
  message: 'rules uplinks can only be set when action is Allow',
  fieldPath: '.uplinks',
  holds: (self) => self.action === 'Allow' || self.uplinks === undefined,
};

export const Rule = withRules(
  Type.Object(
    {
      name: ListEntryName('Name of the rule, unique in the policy; flow logs and status refer to it.'),
      applications: Type.Optional(
        Type.Array(Application, {
          description:
            "Applications the rule applies to, any one of which may match; every flow of the selected pods when omitted. A rule that names applications matches only flows whose association arrived (see the gateway's association.unassociatedFlows).",
          minItems: 1,
          maxItems: 16,
          'x-kubernetes-list-type': 'atomic',
        }),
      ),
      destinations: Type.Optional(
        Type.Array(Destination, {
          description: 'Destinations the rule applies to, any one of which may match; every destination when omitted.',
          minItems: 1,
          maxItems: 64,
          'x-kubernetes-list-type': 'atomic',
        }),
      ),
      action: StringEnum(['Allow', 'Deny'], {
        description:
          'What matching flows get: Allow sends them out through an uplink (see uplinks), Deny drops them and ends flows already open.',
      }),
      uplinks: Type.Optional(RuleUplinks),
    },
    {
      description: 'A rule matches a new flow when one of its applications and one of its destinations match.',
    },
  ),
  uplinksOnlyWhenAllowed,
);
export type Rule = Static<typeof Rule>;

export const EgressPolicySpec = Type.Object(
  {
    gateway: ObjectName('Name of the EgressGateway whose flows this policy governs.'),
    podSelector: LabelSelector(
      "Pods in the policy's namespace that the policy applies to; an empty selector selects every pod in it. Only pods the gateway serves are affected.",
      { default: {} },
    ),
    priority: Type.Integer({
      description:
        'Order among the policies that apply to a pod: lower values are evaluated first; equal priorities are ordered by name, and the Conflicting condition flags the rules they shadow.',
      minimum: 0,
      maximum: 1000,
      default: 100,
    }),
    rules: Type.Array(Rule, {
      description:
        "Rules evaluated in order; the first that matches a flow decides. A flow no rule of any policy matches gets the gateway's defaultAction.",
      minItems: 1,
      maxItems: 64,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['name'],
    }),
  },
  { description: 'Desired state of the policy.' },
);
export type EgressPolicySpec = Static<typeof EgressPolicySpec>;

export const EgressPolicyStatus = StatusObject(
  'Observed state of the policy, written by the operator.',
  'Accepted: the gateway and every named uplink exist and belong together. Programmed: the gateway nodes enforce the current generation. Conflicting: a rule is shadowed by a policy of equal priority.',
  {
    matchedPods: Type.Optional(
      Type.Integer({
        description: 'Pods the policy currently applies to (selected and served by the gateway).',
        minimum: 0,
      }),
    ),
  },
);
export type EgressPolicyStatus = Static<typeof EgressPolicyStatus>;

export const egressPolicyDefinition = {
  kind: 'EgressPolicy',
  plural: 'egresspolicies',
  singular: 'egresspolicy',
  shortNames: ['epol'],
  scope: 'Namespaced',
  description:
    'An EgressPolicy allows or denies the egress of applications in the pods it selects, by process, executable, container or user and by destination, and chooses which uplinks allowed flows may leave through. It applies to flows handled by the EgressGateway it names.',
  spec: EgressPolicySpec,
  status: EgressPolicyStatus,
  printerColumns: [
    { name: 'Gateway', type: 'string', jsonPath: '.spec.gateway', description: 'The EgressGateway governed.' },
    { name: 'Priority', type: 'integer', jsonPath: '.spec.priority', description: 'Lower is evaluated first.' },
    { name: 'Pods', type: 'integer', jsonPath: '.status.matchedPods', description: 'Pods the policy applies to.' },
    conditionColumn('Programmed', 'Whether the gateway nodes enforce the current generation.'),
  ],
} satisfies KindDefinition;
