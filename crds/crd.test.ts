import { Type } from '@sinclair/typebox';
import { customResourceDefinition, objectSchema, structuralSchema, type JsonSchema } from './crd.ts';
import { definitions } from './index.ts';
import { StringEnum } from './v1alpha1/common.ts';

describe('structuralSchema', () => {
  test('turns a union of string literals into an enum and keeps its default', () => {
    const schema = StringEnum(['A', 'B'], { description: 'd', default: 'B' });
    expect(structuralSchema(schema)).toEqual({ description: 'd', type: 'string', enum: ['A', 'B'], default: 'B' });
  });

  test('turns a string record into additionalProperties', () => {
    const schema = Type.Record(Type.String(), Type.String({ maxLength: 3 }), { description: 'm' });
    expect(structuralSchema(schema)).toEqual({
      description: 'm',
      type: 'object',
      additionalProperties: { type: 'string', maxLength: 3 },
    });
  });

  test('leaves defaulted properties out of required', () => {
    const schema = Type.Object({ a: Type.Integer({ default: 1 }), b: Type.Integer() });
    expect(structuralSchema(schema).required).toEqual(['b']);
  });

  test('refuses what a structural schema cannot say instead of dropping it', () => {
    expect(() => structuralSchema(Type.Object({ x: Type.Union([Type.String(), Type.Integer()]) }))).toThrow(
      /schema\.x: only unions of string literals/,
    );
  });
});

// `kubectl explain` prints these descriptions; a field without one teaches nothing.
function undescribed(schema: JsonSchema, path: string): string[] {
  const missing = typeof schema.description === 'string' && schema.description.length > 0 ? [] : [path];
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const nested = Object.entries(properties).flatMap(([name, property]) => undescribed(property, `${path}.${name}`));
  const items = schema.items ? undescribed(schema.items as JsonSchema, `${path}[]`) : [];
  const values = schema.additionalProperties ? undescribed(schema.additionalProperties as JsonSchema, `${path}.*`) : [];
  return [...missing, ...nested, ...items, ...values];
}

test.each(definitions.map((definition) => [definition.kind, definition]))(
  'every field of %s has a description',
  (_, definition) => {
    const root = objectSchema(definition);
    // metadata is the apiserver's own ObjectMeta, which a CRD may not describe.
    const fields = Object.entries(root.properties as Record<string, JsonSchema>).filter(
      ([name]) => name !== 'metadata',
    );
    expect(undescribed({ ...root, properties: Object.fromEntries(fields) }, definition.kind)).toEqual([]);
  },
);

test('every CRD has a status subresource, the naat category, short names and printer columns', () => {
  for (const definition of definitions) {
    const crd = customResourceDefinition('naat.dev', 'v1alpha1', definition) as {
      spec: { names: { categories: string[]; shortNames: string[] }; versions: JsonSchema[] };
    };
    expect(crd.spec.names.categories).toEqual(['naat']);
    expect(crd.spec.names.shortNames.length).toBeGreaterThan(0);
    const [served] = crd.spec.versions;
    expect(served!.subresources).toEqual({ status: {} });
    expect((served!.additionalPrinterColumns as unknown[]).length).toBeGreaterThan(3);
  }
});
