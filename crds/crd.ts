// Turns the TypeBox schemas into CustomResourceDefinitions. The TypeScript types describe
// objects as the apiserver stores them (defaults applied), so a property with a default is
// required in TypeScript but optional for whoever writes the object: it is left out of
// `required` here. TypeBox's JSON-schema forms that a structural schema does not allow are
// rewritten (unions of string literals → enum, string records → additionalProperties);
// anything else a CRD cannot express is an error rather than a silent loss.
import type { TSchema } from '@sinclair/typebox';
import type { KindDefinition } from './v1alpha1/common.ts';

export type JsonSchema = { [key: string]: unknown };

// Keys are emitted in this order so that the YAML reads like a hand-written CRD.
const keyOrder = [
  'description',
  'type',
  'format',
  'enum',
  'default',
  'minimum',
  'maximum',
  'minLength',
  'maxLength',
  'pattern',
  'minItems',
  'maxItems',
  'minProperties',
  'maxProperties',
  'items',
  'properties',
  'additionalProperties',
  'required',
  'x-kubernetes-list-type',
  'x-kubernetes-list-map-keys',
  'x-kubernetes-map-type',
  'x-kubernetes-validations',
];

const recordKey = '^(.*)$';

/** The structural OpenAPI v3 schema the apiserver accepts for a TypeBox schema. */
export function structuralSchema(schema: TSchema, path = 'schema'): JsonSchema {
  const source = JSON.parse(JSON.stringify(schema)) as JsonSchema;
  const out: JsonSchema = {};
  for (const [key, value] of Object.entries(source)) {
    switch (key) {
      case 'anyOf':
        out.type = 'string';
        out.enum = literalUnion(value, path);
        break;
      case 'const':
        if (typeof value !== 'string') throw new Error(`${path}: only string literals can be emitted`);
        out.type = 'string';
        out.enum = [value];
        break;
      case 'patternProperties': {
        const patterns = value as Record<string, TSchema>;
        if (Object.keys(patterns).join() !== recordKey) throw new Error(`${path}: records need string keys`);
        out.additionalProperties = structuralSchema(patterns[recordKey]!, `${path}.*`);
        break;
      }
      case 'properties': {
        const properties: JsonSchema = {};
        for (const [name, property] of Object.entries(value as Record<string, TSchema>)) {
          properties[name] = structuralSchema(property, `${path}.${name}`);
        }
        out.properties = properties;
        break;
      }
      case 'required': {
        const properties = source.properties as Record<string, JsonSchema>;
        const required = (value as string[]).filter((name) => !('default' in properties[name]!));
        if (required.length > 0) out.required = required;
        break;
      }
      case 'items':
        out.items = structuralSchema(value as TSchema, `${path}[]`);
        break;
      case '$id':
      case '$ref':
      case 'allOf':
      case 'oneOf':
      case 'not':
        throw new Error(`${path}: ${key} cannot be emitted in a structural schema`);
      default:
        out[key] = value;
    }
  }
  if (typeof out.type !== 'string') throw new Error(`${path}: every schema needs a type`);
  return sortKeys(out);
}

function literalUnion(variants: unknown, path: string): string[] {
  const values = (variants as JsonSchema[]).map((variant) => variant.const);
  if (!values.every((value) => typeof value === 'string')) {
    throw new Error(`${path}: only unions of string literals can be emitted (as enum)`);
  }
  return values as string[];
}

function sortKeys(schema: JsonSchema): JsonSchema {
  const rank = (key: string) => {
    const index = keyOrder.indexOf(key);
    return index === -1 ? keyOrder.length : index;
  };
  return Object.fromEntries(Object.entries(schema).sort(([a], [b]) => rank(a) - rank(b)));
}

/** The root schema of an object of the kind: the standard fields, then spec and status. */
export function objectSchema(definition: KindDefinition): JsonSchema {
  return {
    description: definition.description,
    type: 'object',
    properties: {
      apiVersion: {
        description:
          'APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values.',
        type: 'string',
      },
      kind: {
        description:
          'Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. In CamelCase.',
        type: 'string',
      },
      metadata: { type: 'object' },
      spec: structuralSchema(definition.spec, 'spec'),
      status: structuralSchema(definition.status, 'status'),
    },
    required: ['spec'],
  };
}

export function customResourceDefinition(group: string, version: string, definition: KindDefinition): JsonSchema {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${definition.plural}.${group}` },
    spec: {
      group,
      names: {
        kind: definition.kind,
        listKind: `${definition.kind}List`,
        plural: definition.plural,
        singular: definition.singular,
        shortNames: definition.shortNames,
        categories: ['naat'],
      },
      scope: definition.scope,
      versions: [
        {
          name: version,
          served: true,
          storage: true,
          subresources: { status: {} },
          additionalPrinterColumns: [
            ...definition.printerColumns,
            { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' },
          ],
          schema: { openAPIV3Schema: objectSchema(definition) },
        },
      ],
    },
  };
}
