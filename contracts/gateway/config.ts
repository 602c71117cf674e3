// The compiled gateway config: everything one gateway's dataplane needs, resolved from the API
// objects (uplinks by name, policies to the addresses of the pods they select, rules in the order
// they are evaluated). The operator writes one per gateway; standalone, it is read from a file.
// The dataplane trusts nothing in it: `parseGatewayConfig` checks every CEL rule of the API
// schemas the config is made of (through the rules' TypeScript counterparts), because a file
// never passed the apiserver, and what the compiler guarantees beyond them.
import { Type, type Static } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { isIP } from 'node:net';
import { addressToBytes, bytesToAddress } from '../../common/index.ts';
import {
  Application,
  Balancing,
  Destination,
  FailoverAddress,
  RuleUplinks,
  ruleViolations,
  Timeouts,
  UplinkSpec,
  uplinksOnlyWhenAllowed,
  withRules,
} from '../../crds/index.ts';
import { defaultMarks, hexMark as hex, isContiguous, markField } from './marks.ts';
import { NodeAssociation } from './node-association.ts';
import { Tunnel, TunnelEndpoint } from './tunnel.ts';

export const configVersion = 1;

const Name = Type.String({ minLength: 1, maxLength: 253, pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$' });
const Prefix = Type.String({ description: 'An IPv4 or IPv6 address or CIDR.', minLength: 2, maxLength: 49 });

export const CompiledUplink = Type.Composite([
  Type.Object({
    name: Name,
    nodes: Type.Optional(
      Type.Array(Type.String(), { description: 'Gateway nodes that have this uplink; every node when omitted.' }),
    ),
  }),
  UplinkSpec,
]);
export type CompiledUplink = Static<typeof CompiledUplink>;

export const CompiledRule = withRules(
  Type.Object({
    policy: Type.String({ description: 'namespace/name of the EgressPolicy the rule comes from.', minLength: 3 }),
    rule: Type.String({ minLength: 1 }),
    priority: Type.Integer(),
    sources: Type.Array(Prefix, { description: 'Addresses of the pods the policy selects.' }),
    applications: Type.Optional(Type.Array(Application, { minItems: 1 })),
    destinations: Type.Optional(Type.Array(Destination, { minItems: 1 })),
    action: Type.Union([Type.Literal('Allow'), Type.Literal('Deny')]),
    uplinks: Type.Optional(RuleUplinks),
  }),
  uplinksOnlyWhenAllowed,
);
export type CompiledRule = Static<typeof CompiledRule>;

export const GatewayConfig = Type.Object({
  version: Type.Literal(configVersion),
  gateway: Name,
  hash: Type.Optional(Type.String({ description: 'Content hash the operator computed; reported back once applied.' })),
  sources: Type.Array(Prefix, { description: 'Addresses of the pods this gateway serves.' }),
  pods: Type.Array(
    Type.Object({
      namespace: Name,
      name: Name,
      addresses: Type.Array(Type.String({ minLength: 2, maxLength: 45 }), { minItems: 1 }),
      node: Type.Optional(Type.String({ minLength: 1, maxLength: 253, description: 'The node the pod runs on.' })),
      association: Type.Optional(NodeAssociation),
      egress: Type.Optional(
        Type.Array(Type.String({ minLength: 2, maxLength: 45 }), {
          maxItems: 2,
          description:
            "The pod's failover addresses, one per family: its tunnelled flows leave with the one of their family from the node that owns it.",
        }),
      ),
    }),
    {
      description:
        'The served pods and their addresses, so that flows are attributed to their pod also without a sidecar. ' +
        'An address listed twice (a pod that is going while its address is reused) belongs to the first.',
      default: [],
    },
  ),
  bypass: Type.Array(Prefix, {
    description: 'Destinations that never leave through an uplink, such as the cluster pod and service networks.',
    default: [],
  }),
  uplinks: Type.Array(CompiledUplink, { maxItems: 200 }),
  balancing: Balancing,
  timeouts: Timeouts,
  defaultAction: Type.Union([Type.Literal('Allow'), Type.Literal('Deny')], { default: 'Allow' }),
  association: Type.Optional(
    Type.Object({
      port: Type.Integer({ minimum: 1, maximum: 65535, default: 7740 }),
      unassociatedFlows: Type.Union([Type.Literal('PodRules'), Type.Literal('Hold')], { default: 'PodRules' }),
      sidecarSources: Type.Array(Prefix, {
        description: 'Addresses of the pods that run the sidecar: Hold applies to them, not to pods without one.',
        default: [],
      }),
      strictSources: Type.Array(Prefix, {
        description:
          'Addresses of the pods in strict mode: their packets carry an application stamp in the DSCP field, which classifies a new flow from its first packet and is cleared before the packet leaves.',
        default: [],
      }),
    }),
  ),
  steering: Type.Optional(
    Type.Object(
      {
        tunnel: Tunnel,
        markMask: Type.Integer({
          minimum: 1,
          maximum: 0xffffffff,
          description:
            "The contiguous bits of the conntrack and packet marks that send a tunnelled flow's replies back into the tunnel.",
        }),
        sources: Type.Array(TunnelEndpoint, {
          description:
            "The nodes that steer served pods' flows to this gateway: a reply goes back to the node its pod runs on (pods[].node).",
          default: [],
        }),
      },
      { description: 'Cluster-wide egress: flows of served pods on other nodes arrive through the tunnel.' },
    ),
  ),
  rules: Type.Array(CompiledRule, {
    description: 'In evaluation order: the first rule that matches a flow decides.',
    default: [],
  }),
  placement: Type.Optional(
    Type.Object(
      {
        nodeSelector: Type.Record(Type.String(), Type.String(), {
          description: "The gateway's nodeSelector: a node whose labels no longer match it has left the gateway.",
        }),
        excludedNodes: Type.Array(Name, {
          description: 'Nodes nodeSelector matches where the agent may not run (another gateway holds its ports).',
          default: [],
        }),
      },
      {
        description:
          "Which nodes are the gateway's: an agent stopped on a node that is no longer one of them takes away what it put in the node's kernel. Without it, only a deleted config does.",
      },
    ),
  ),
  failover: Type.Optional(
    Type.Object(
      {
        addresses: Type.Array(FailoverAddress, {
          minItems: 1,
          maxItems: 64,
        }),
        leaseDurationMs: Type.Integer({ minimum: 200, maximum: 60000 }),
        failback: Type.Boolean(),
        failbackDelaySeconds: Type.Integer({ minimum: 0, maximum: 86400 }),
        nodes: Type.Array(TunnelEndpoint, {
          description:
            "The gateway's nodes that have an address: each follows the others' /steering directly, to tell its own partition from an API server outage.",
          default: [],
        }),
        draining: Type.Array(Name, {
          description:
            'Gateway nodes that give up their addresses and take none (failover.drainNodes, and cordoned nodes).',
          default: [],
        }),
      },
      {
        description: "The gateway's failover addresses and how their ownership is held (EgressGateway spec.failover).",
      },
    ),
  ),
  marks: Type.Optional(
    Type.Object(
      {
        uplinks: Type.Integer({
          minimum: 1,
          maximum: 0xffffffff,
          default: defaultMarks.uplinks,
          description:
            "The contiguous bits of the conntrack and packet marks that hold a flow's uplink id (1 to the largest number they hold, so 15 uplinks with the default 0x0000000f); they must not overlap the bits of the CNI, kube-proxy or steering.markMask.",
        }),
      },
      { description: 'The mark bits the gateway agents use; the defaults when omitted.' },
    ),
  ),
});
export type GatewayConfig = Static<typeof GatewayConfig>;

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid gateway config: ${problems.join('; ')}`);
    this.problems = problems;
  }
}

/**
 * Applies defaults, checks the config and returns it; throws a ConfigError naming every problem.
 * A broken CEL rule of the API reads `rules[0].destinations[0].ports: <the rule's message>`.
 */
export function parseGatewayConfig(input: unknown): GatewayConfig {
  const value = Value.Default(GatewayConfig, Value.Clone(input));
  const schemaErrors = [...Value.Errors(GatewayConfig, value)].map((e) => `${e.path || '/'}: ${e.message}`);
  if (schemaErrors.length) throw new ConfigError(schemaErrors);
  const config = value as GatewayConfig;
  const problems = [...ruleViolations(GatewayConfig, config), ...semanticProblems(config)];
  if (problems.length) throw new ConfigError(problems);
  return config;
}

/** What the compiler guarantees beyond the API's rules: addresses parse, uplink names are unique and known. */
function semanticProblems(config: GatewayConfig): string[] {
  const problems: string[] = [];
  const prefix = (where: string, text: string) => {
    if (!parsePrefix(text)) problems.push(`${where}: ${JSON.stringify(text)} is not an IP address or CIDR`);
  };
  config.sources.forEach((s, i) => prefix(`sources[${i}]`, s));
  config.bypass.forEach((s, i) => prefix(`bypass[${i}]`, s));
  config.association?.sidecarSources.forEach((s, i) => prefix(`association.sidecarSources[${i}]`, s));
  config.association?.strictSources.forEach((s, i) => prefix(`association.strictSources[${i}]`, s));
  config.pods.forEach((pod, i) => {
    pod.addresses.forEach((address, j) => {
      if (!isIP(address)) problems.push(`pods[${i}].addresses[${j}]: ${JSON.stringify(address)} is not an IP address`);
    });
  });
  // One address written two ways (2001:db8::a, 2001:DB8:0::A) is one address.
  const canonicalAddress = (address: string) => bytesToAddress(addressToBytes(address));
  const floating = new Set<string>();
  config.failover?.addresses.forEach(({ address }, i) => {
    if (!isIP(address)) problems.push(`failover.addresses[${i}]: ${JSON.stringify(address)} is not an IP address`);
    else if (floating.has(canonicalAddress(address)))
      problems.push(`failover.addresses[${i}]: ${address} is listed twice`);
    floating.add(canonicalAddress(address));
  });
  config.pods.forEach((pod, i) => {
    pod.egress?.forEach((address, j) => {
      if (!isIP(address) || !floating.has(canonicalAddress(address)))
        problems.push(`pods[${i}].egress[${j}]: ${JSON.stringify(address)} is not one of failover.addresses`);
    });
  });
  const names = new Set<string>();
  config.uplinks.forEach((uplink, i) => {
    const at = `uplinks[${i}]`;
    if (names.has(uplink.name)) problems.push(`${at}.name: ${uplink.name} is listed twice`);
    names.add(uplink.name);
  });
  config.failover?.addresses.forEach(({ uplink }, i) => {
    if (!names.has(uplink)) problems.push(`failover.addresses[${i}].uplink: no uplink named ${uplink}`);
  });
  problems.push(...markProblems(config));
  config.rules.forEach((rule, i) => {
    const at = `rules[${i}]`;
    rule.sources.forEach((s, j) => prefix(`${at}.sources[${j}]`, s));
    for (const field of ['allowed', 'preferred'] as const) {
      rule.uplinks?.[field]?.forEach((name, j) => {
        if (!names.has(name)) problems.push(`${at}.uplinks.${field}[${j}]: no uplink named ${name}`);
      });
    }
  });
  return problems;
}

/** Uplink ids must fit their mark bits, and those bits must not be steering's. */
function markProblems(config: GatewayConfig): string[] {
  const mask = uplinkMarkMask(config);
  if (!isContiguous(mask)) return [`marks.uplinks: ${hex(mask)} is not one run of bits`];
  const problems: string[] = [];
  const { max } = markField(mask);
  if (config.uplinks.length > max)
    problems.push(
      `marks.uplinks: ${hex(mask)} has room for ${max} uplink${max === 1 ? '' : 's'}, too few for the ${config.uplinks.length} listed; give it more bits`,
    );
  const steering = config.steering?.markMask;
  if (steering !== undefined && (steering & mask) !== 0)
    problems.push(`marks.uplinks: ${hex(mask)} overlaps steering.markMask ${hex(steering)}`);
  return problems;
}

/** The mark bits of the config's uplink ids. */
export const uplinkMarkMask = (config: GatewayConfig): number => config.marks?.uplinks ?? defaultMarks.uplinks;

export interface Prefix {
  family: 4 | 6;
  address: string;
  length: number;
}

/** `10.0.0.0/8` or a bare address (a host prefix); undefined when it is neither. */
export function parsePrefix(text: string): Prefix | undefined {
  const [address = '', length, extra] = text.split('/');
  const family = isIP(address);
  // A zone (fe80::1%eth0) names a link of one host, not a network: isIP takes it, nothing after does.
  if ((family !== 4 && family !== 6) || extra !== undefined || address.includes('%')) return undefined;
  const max = family === 4 ? 32 : 128;
  if (length === undefined) return { family, address, length: max };
  if (!/^\d{1,3}$/.test(length) || Number(length) > max) return undefined;
  return { family, address, length: Number(length) };
}
