// The naat.dev/v1alpha1 API: schemas, TypeScript types, names and a validator. Other
// components import the API only from here.
import { FormatRegistry, type Static, type TSchema } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { customResourceDefinition, type JsonSchema } from './crd.ts';
import { ruleViolations } from './v1alpha1/cel.ts';
import { KindObject, type KindDefinition } from './v1alpha1/common.ts';
import { egressGatewayDefinition } from './v1alpha1/egress-gateway.ts';
import { egressPolicyDefinition } from './v1alpha1/egress-policy.ts';
import { uplinkDefinition } from './v1alpha1/uplink.ts';

export { rulesWithin, ruleViolations, withRules, type CelRule } from './v1alpha1/cel.ts';
export {
  Condition,
  LabelSelector,
  type KindDefinition,
  type ObjectMeta,
  type PrinterColumn,
} from './v1alpha1/common.ts';
export {
  HealthCheck,
  NextHop,
  PortRange,
  Snat,
  UplinkNodeStatus,
  UplinkSpec,
  UplinkStatus,
  uplinkDefinition,
} from './v1alpha1/uplink.ts';
export {
  Association,
  Balancing,
  defaultStickySeconds,
  EgressGatewaySpec,
  EgressGatewayStatus,
  FailoverAddress,
  GatewayUplinks,
  maxVni,
  SidecarInjection,
  Steering,
  SteeringNodeStatus,
  Timeouts,
  egressGatewayDefinition,
} from './v1alpha1/egress-gateway.ts';
export {
  Application,
  Destination,
  DestinationPort,
  EgressPolicySpec,
  EgressPolicyStatus,
  Rule,
  RuleUplinks,
  egressPolicyDefinition,
  uplinksOnlyWhenAllowed,
} from './v1alpha1/egress-policy.ts';

export const group = 'naat.dev';
export const version = 'v1alpha1';
export const apiVersion = `${group}/${version}` as const;

export const UplinkObject = KindObject(
  apiVersion,
  uplinkDefinition.kind,
  uplinkDefinition.spec,
  uplinkDefinition.status,
);
export const EgressGatewayObject = KindObject(
  apiVersion,
  egressGatewayDefinition.kind,
  egressGatewayDefinition.spec,
  egressGatewayDefinition.status,
);
export const EgressPolicyObject = KindObject(
  apiVersion,
  egressPolicyDefinition.kind,
  egressPolicyDefinition.spec,
  egressPolicyDefinition.status,
);
export type Uplink = Static<typeof UplinkObject>;
export type EgressGateway = Static<typeof EgressGatewayObject>;
export type EgressPolicy = Static<typeof EgressPolicyObject>;

const objectSchemas = {
  Uplink: UplinkObject,
  EgressGateway: EgressGatewayObject,
  EgressPolicy: EgressPolicyObject,
};
export type Kind = keyof typeof objectSchemas;

/** Names, scope, schemas and columns of each kind, e.g. the plural for API paths. */
export const definitionOf: Readonly<Record<Kind, KindDefinition>> = {
  Uplink: uplinkDefinition,
  EgressGateway: egressGatewayDefinition,
  EgressPolicy: egressPolicyDefinition,
};

/** Every kind of the API, in the order documentation lists them. */
export const definitions: readonly KindDefinition[] = Object.values(definitionOf);

/** The API's CustomResourceDefinitions, as crds/ holds them (crds/generate.ts writes these). */
export const customResourceDefinitions = (): JsonSchema[] =>
  definitions.map((definition) => customResourceDefinition(group, version, definition));
export interface ObjectOfKind {
  Uplink: Uplink;
  EgressGateway: EgressGateway;
  EgressPolicy: EgressPolicy;
}

/** Condition types written to status, by kind. */
export const conditionTypes = {
  Uplink: { ready: 'Ready' },
  EgressGateway: { accepted: 'Accepted', ready: 'Ready' },
  EgressPolicy: { accepted: 'Accepted', programmed: 'Programmed', conflicting: 'Conflicting' },
} as const;

// metav1 timestamps are RFC 3339 date-times; TypeBox checks a format only once it is registered.
const rfc3339 = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/i;
FormatRegistry.Set('date-time', (value) => rfc3339.test(value) && !Number.isNaN(Date.parse(value)));

export type Validation<T> = { ok: true; value: T } | { ok: false; errors: string[] };

/**
 * Checks an object against its kind's schema after applying the schema's defaults, and returns
 * the defaulted copy: first the OpenAPI part, then, on an object of the right shape, the CEL
 * rules through their TypeScript counterparts. Objects read from the apiserver have passed both;
 * this check is for objects built or received elsewhere and to narrow `unknown` to the kind's
 * type. Errors read `spec.rules[0].action: <message>`, with a CEL rule's own message.
 */
export function validate<K extends Kind>(kind: K, object: unknown): Validation<ObjectOfKind[K]> {
  const schema = objectSchemas[kind];
  const value = Value.Default(schema, Value.Clone(object));
  if (!Value.Check(schema, value)) {
    const errors = [...Value.Errors(schema, value)].map(
      (error) => `${fieldPath(error.path)}: ${enumMessage(error.schema) ?? error.message}`,
    );
    return { ok: false, errors };
  }
  const errors = ruleViolations(schema, value);
  return errors.length ? { ok: false, errors } : { ok: true, value: value as ObjectOfKind[K] };
}

/** Enums are unions of literals to TypeBox, which would only say "Expected union value". */
function enumMessage(schema: TSchema): string | undefined {
  const values = (schema.anyOf as TSchema[] | undefined)?.map((variant) => variant.const as unknown);
  if (!values?.every((value) => typeof value === 'string')) return undefined;
  return `Expected one of ${values.join(', ')}`;
}

/** `/spec/rules/0/action` → `spec.rules[0].action` */
function fieldPath(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((path, part) => (/^\d+$/.test(part) ? `${path}[${part}]` : path ? `${path}.${part}` : part), '');
}
