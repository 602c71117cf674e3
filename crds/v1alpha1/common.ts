// Building blocks shared by the three kinds: names, selectors, addresses, ports and the
// metav1.Condition shape. Every schema carries a description because `kubectl explain` shows it,
// and every string or list that a CEL rule reads is bounded because the apiserver's cost
// estimator rejects rules over unbounded values.
import {
  Type,
  type ObjectOptions,
  type Static,
  type TLiteral,
  type TObject,
  type TProperties,
  type TSchema,
  type TUnion,
} from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { isCidr, isMasked, isUsableIp, withRules } from './cel.ts';

/** A string enum; the CRD emitter turns TypeBox's union of literals into OpenAPI `enum`. */
export function StringEnum<const T extends readonly [string, ...string[]]>(
  values: T,
  options: { description: string; default?: T[number] },
): TUnion<{ -readonly [K in keyof T]: TLiteral<T[K]> }> {
  return Type.Union(
    values.map((value) => Type.Literal(value)),
    options,
  ) as unknown as TUnion<{ -readonly [K in keyof T]: TLiteral<T[K]> }>;
}

/**
 * An object whose every property has a default, so that the object itself defaults to the
 * complete default value. Spelling it out matters: the apiserver checks a default against the
 * object's CEL rules without first defaulting the default's own fields.
 */
export function DefaultedObject<T extends TProperties>(properties: T, options: ObjectOptions): TObject<T> {
  return Type.Object(properties, { ...options, default: Value.Default(Type.Object(properties), {}) });
}

const dnsLabelPattern = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
const dnsSubdomainPattern = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$';

/** The name of another object (RFC 1123 subdomain, as Kubernetes object names are). */
export function ObjectName(description: string) {
  return Type.String({ description, minLength: 1, maxLength: 253, pattern: dnsSubdomainPattern });
}

/** A name unique within a list (RFC 1123 label). */
export function ListEntryName(description: string) {
  return Type.String({ description, minLength: 1, maxLength: 63, pattern: dnsLabelPattern });
}

/** A list of object names without duplicates. */
export function ObjectNameList(description: string, itemDescription: string, maxItems: number) {
  return Type.Array(ObjectName(itemDescription), {
    description,
    minItems: 1,
    maxItems,
    'x-kubernetes-list-type': 'set',
  });
}

/** Label key → value, as in a Pod's `nodeSelector` or a selector's `matchLabels`. */
export function LabelMap(description: string) {
  return Type.Record(Type.String(), Type.String({ description: 'Label value.', maxLength: 63 }), {
    description,
    maxProperties: 64,
  });
}

const LabelSelectorRequirement = withRules(
  Type.Object(
    {
      key: Type.String({ description: 'The label key the requirement applies to.', minLength: 1, maxLength: 317 }),
      operator: StringEnum(['In', 'NotIn', 'Exists', 'DoesNotExist'], {
        description:
          "How the key's value is compared: In and NotIn test membership in `values`; Exists and DoesNotExist test only the key.",
      }),
      values: Type.Optional(
        Type.Array(Type.String({ description: 'A label value.', maxLength: 63 }), {
          description: 'Label values; required and non-empty for In and NotIn, empty for Exists and DoesNotExist.',
          maxItems: 64,
          'x-kubernetes-list-type': 'atomic',
        }),
      ),
    },
    { description: 'A label requirement: a key, an operator and, for In and NotIn, the values.' },
  ),
  {
    rule: "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0 : !has(self.values) || size(self.values) == 0",
    message: 'values must be non-empty for operators In and NotIn and empty for Exists and DoesNotExist',
    holds: (self) => (['In', 'NotIn'].includes(self.operator) ? !!self.values?.length : !self.values?.length),
  },
);

/** metav1.LabelSelector: the requirements are ANDed; an empty selector selects everything. */
export function LabelSelector(description: string, options: { default?: Record<string, never> } = {}) {
  return Type.Object(
    {
      matchLabels: Type.Optional(
        LabelMap('Labels that must all be present with these values. Combined with matchExpressions by AND.'),
      ),
      matchExpressions: Type.Optional(
        Type.Array(LabelSelectorRequirement, {
          description: 'Label requirements that must all hold. Combined with matchLabels by AND.',
          maxItems: 32,
          'x-kubernetes-list-type': 'atomic',
        }),
      ),
    },
    { description, ...options, 'x-kubernetes-map-type': 'atomic' },
  );
}
export type LabelSelector = Static<ReturnType<typeof LabelSelector>>;

/** An IPv4 or IPv6 address in text form, checked with CEL's ip library. */
export function IpAddress(description: string, field: string) {
  return withRules(Type.String({ description, maxLength: 45 }), {
    rule: 'isIP(self) && !ip(self).isUnspecified() && !ip(self).isLoopback()',
    message: `${field} must be an IPv4 or IPv6 address (not unspecified or loopback), such as 192.0.2.1 or 2001:db8::1`,
    holds: (self) => isUsableIp(self),
  });
}

/** An address of one family only, e.g. a next hop for the IPv4 or the IPv6 default route. */
export function FamilyAddress(family: 4 | 6, description: string, field: string) {
  const example = family === 4 ? '192.0.2.1' : '2001:db8::1 or fe80::1';
  return withRules(Type.String({ description, maxLength: family === 4 ? 15 : 45 }), {
    rule: `isIP(self) && ip(self).family() == ${family} && !ip(self).isUnspecified() && !ip(self).isLoopback()`,
    message: `${field} must be an IPv${family} address, such as ${example}`,
    holds: (self) => isUsableIp(self, family),
  });
}

/** A network prefix in canonical form: an IPv4 or IPv6 CIDR without host bits. */
export function Cidr(description: string, field: string) {
  return withRules(
    Type.String({ description, maxLength: 49 }),
    {
      rule: 'isCIDR(self)',
      message: `${field} must be an IPv4 or IPv6 CIDR, such as 203.0.113.0/24 or 2001:db8::/32`,
      holds: isCidr,
    },
    {
      rule: '!isCIDR(self) || cidr(self) == cidr(self).masked()',
      message: `${field} must not have bits set after its prefix length (write 203.0.113.0/24, not 203.0.113.7/24)`,
      holds: (self) => !isCidr(self) || isMasked(self),
    },
  );
}

export function Port(description: string, defaultValue?: number) {
  return Type.Integer({
    description,
    minimum: 1,
    maximum: 65535,
    ...(defaultValue === undefined ? {} : { default: defaultValue }),
  });
}

/** metav1.Condition, with the bounds and patterns Kubernetes declares for it. */
export const Condition = Type.Object(
  {
    type: Type.String({
      description: 'Type of the condition in CamelCase, such as Ready.',
      maxLength: 316,
      pattern:
        '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$',
    }),
    status: StringEnum(['True', 'False', 'Unknown'], {
      description: 'Whether the condition holds: True, False or Unknown.',
    }),
    observedGeneration: Type.Optional(
      Type.Integer({
        description: 'The metadata.generation the condition was computed from; older means the condition is stale.',
        minimum: 0,
      }),
    ),
    lastTransitionTime: Type.String({
      description: 'When the condition last changed status (RFC 3339).',
      format: 'date-time',
    }),
    reason: Type.String({
      description: 'A CamelCase, machine-readable reason for the last transition.',
      minLength: 1,
      maxLength: 1024,
      pattern: '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$',
    }),
    message: Type.String({ description: 'A human-readable explanation of the transition.', maxLength: 32768 }),
  },
  { description: 'An observation of one aspect of the object (metav1.Condition).' },
);
export type Condition = Static<typeof Condition>;

/**
 * The status of a kind: its own fields between the observedGeneration and the conditions every
 * kind reports. All optional, since the operator writes status after the object exists.
 */
export function StatusObject<T extends TProperties>(description: string, conditions: string, properties: T) {
  return Type.Object(
    {
      observedGeneration: Type.Optional(
        Type.Integer({ description: 'The metadata.generation of the spec the operator last acted on.', minimum: 0 }),
      ),
      ...properties,
      conditions: Type.Optional(
        Type.Array(Condition, {
          description: conditions,
          maxItems: 16,
          'x-kubernetes-list-type': 'map',
          'x-kubernetes-list-map-keys': ['type'],
        }),
      ),
    },
    { description },
  );
}

/** Object metadata as the TypeScript side sees it; the CRD leaves metadata to the apiserver. */
export const ObjectMeta = Type.Object(
  {
    name: Type.String(),
    namespace: Type.Optional(Type.String()),
    uid: Type.Optional(Type.String()),
    resourceVersion: Type.Optional(Type.String()),
    generation: Type.Optional(Type.Integer()),
    labels: Type.Optional(Type.Record(Type.String(), Type.String())),
    annotations: Type.Optional(Type.Record(Type.String(), Type.String())),
  },
  { description: 'Standard object metadata.' },
);
export type ObjectMeta = Static<typeof ObjectMeta>;

/** A whole object of one kind: apiVersion, kind, metadata, spec and an optional status. */
export function KindObject<S extends TSchema, T extends TSchema, A extends string, K extends string>(
  apiVersion: A,
  kind: K,
  spec: S,
  status: T,
) {
  return Type.Object({
    apiVersion: Type.Literal(apiVersion),
    kind: Type.Literal(kind),
    metadata: ObjectMeta,
    spec,
    status: Type.Optional(status),
  });
}

/** An additional column of `kubectl get`, read from the object by a JSONPath. */
export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description: string;
  /** 0 shows in `kubectl get`; higher values only with `-o wide`. */
  priority?: number;
}

/** Everything the generator needs to write one CustomResourceDefinition and its reference page. */
export interface KindDefinition {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  scope: 'Cluster' | 'Namespaced';
  description: string;
  spec: TSchema;
  status: TSchema;
  printerColumns: PrinterColumn[];
}

/** The printer column of a condition's status, e.g. Ready → True. */
export function conditionColumn(type: string, description: string): PrinterColumn {
  return { name: type, type: 'string', jsonPath: `.status.conditions[?(@.type=="${type}")].status`, description };
}
