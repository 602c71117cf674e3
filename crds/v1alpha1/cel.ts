// The API's CEL rules (`x-kubernetes-validations`), each defined once together with the same rule
// in TypeScript. The apiserver evaluates the CEL; documents that never pass through it (the
// compiled gateway config a dataplane reads from a file or a ConfigMap, objects built by a
// program) are checked with the TypeScript form, so the two cannot drift apart: a rule without
// its counterpart does not type-check, and the API tests hold both against a real apiserver.
import { isIP } from 'node:net';
import type { Static, TSchema } from '@sinclair/typebox';
// Not through proto's entry point, which brings the generated protocol code along.
import { addressToBytes } from '../../common/index.ts';

export interface CelRule<T> {
  rule: string;
  message: string;
  /** JSON path (relative to the schema the rule sits on) that the error is reported against. */
  fieldPath?: string;
  /** The rule in TypeScript, over the value with the schema's defaults applied, as the apiserver evaluates it. */
  holds: (self: T) => boolean;
}

const validations = 'x-kubernetes-validations';

/** The schema with these rules; the CRD generator emits them without `holds`. */
export function withRules<T extends TSchema>(schema: T, ...rules: CelRule<Static<T>>[]): T {
  return Object.assign(schema, { [validations]: rules });
}

const rulesOf = (schema: TSchema) => (schema[validations] ?? []) as CelRule<unknown>[];

const children = (schema: TSchema): TSchema[] => [
  ...Object.values((schema.properties ?? {}) as Record<string, TSchema>),
  ...Object.values((schema.patternProperties ?? {}) as Record<string, TSchema>),
  ...(schema.items ? [schema.items as TSchema] : []),
];

/** Every rule of the schema and its sub-schemas, each once: what `ruleViolations` evaluates. */
export function rulesWithin(schema: TSchema): Set<CelRule<unknown>> {
  return new Set([...rulesOf(schema), ...children(schema).flatMap((child) => [...rulesWithin(child)])]);
}

/**
 * Every rule of the schema and of its sub-schemas that the value breaks, as `field: message`
 * with the field written as the apiserver writes it (`rules[0].uplinks`). The value must already
 * have the schema's structure and defaults, as it does when the apiserver evaluates CEL.
 */
export function ruleViolations(schema: TSchema, value: unknown, path = ''): string[] {
  if (value === undefined) return [];
  const found = rulesOf(schema)
    .filter((rule) => !rule.holds(value))
    .map((rule) => `${join(path, rule.fieldPath ?? '')}: ${rule.message}`);
  const object = value as Record<string, unknown>;
  for (const [name, property] of Object.entries((schema.properties ?? {}) as Record<string, TSchema>)) {
    found.push(...ruleViolations(property, object[name], join(path, `.${name}`)));
  }
  for (const values of Object.values((schema.patternProperties ?? {}) as Record<string, TSchema>)) {
    for (const [key, item] of Object.entries(object))
      found.push(...ruleViolations(values, item, join(path, `.${key}`)));
  }
  if (schema.items && Array.isArray(value)) {
    value.forEach((item, i) => found.push(...ruleViolations(schema.items as TSchema, item, `${path}[${i}]`)));
  }
  return found;
}

const join = (path: string, field: string) => (path ? `${path}${field}` : field.replace(/^\./, ''));

// The functions of Kubernetes' CEL IP and CIDR libraries that the rules use. Like them, an
// address with a zone or an IPv4-mapped IPv6 address is not an IP.

interface Ip {
  family: 4 | 6;
  bytes: Uint8Array;
}

function ip(text: string): Ip | undefined {
  const family = isIP(text);
  if ((family !== 4 && family !== 6) || text.includes('%')) return undefined;
  const bytes = addressToBytes(text);
  const mapped =
    family === 6 && bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? undefined : { family, bytes };
}

/** `isIP(self) && !ip(self).isUnspecified() && !ip(self).isLoopback()`, optionally `&& ip(self).family() == F`. */
export function isUsableIp(text: string, family?: 4 | 6): boolean {
  const parsed = ip(text);
  if (!parsed || (family && parsed.family !== family)) return false;
  const { bytes } = parsed;
  const unspecified = bytes.every((b) => b === 0);
  const loopback =
    parsed.family === 4 ? bytes[0] === 127 : bytes.subarray(0, 15).every((b) => b === 0) && bytes[15] === 1;
  return !unspecified && !loopback;
}

function cidr(text: string): { ip: Ip; length: number } | undefined {
  const [address = '', length, extra] = text.split('/');
  const parsed = ip(address);
  if (!parsed || length === undefined || extra !== undefined || !/^(0|[1-9]\d{0,2})$/.test(length)) return undefined;
  return Number(length) <= parsed.bytes.length * 8 ? { ip: parsed, length: Number(length) } : undefined;
}

/** CEL's `isCIDR(self)`. */
export const isCidr = (text: string) => cidr(text) !== undefined;

/** CEL's `cidr(self) == cidr(self).masked()`: no bits set after the prefix length. */
export function isMasked(text: string): boolean {
  const parsed = cidr(text);
  if (!parsed) return false;
  return parsed.ip.bytes.every((byte, i) => {
    const kept = Math.min(8, Math.max(0, parsed.length - 8 * i));
    return (byte & (0xff >> kept)) === 0;
  });
}
