// Renders the API reference page from the same schemas the CRDs come from: one section per
// kind, then every field by its full path with its type, bounds, default and rules.
import type { KindDefinition } from './v1alpha1/common.ts';
import { objectSchema, type JsonSchema } from './crd.ts';

export function renderReference(group: string, version: string, definitions: readonly KindDefinition[]): string {
  const lines = [
    '# API reference: naat.dev/v1alpha1',
    '',
    `Group \`${group}\`, version \`${version}\`. Every kind has a status subresource, belongs to the \`naat\` category (\`kubectl get naat\` lists them all) and is explained field by field by \`kubectl explain\`. Fields marked _required_ must be written; the others may be omitted, and those with a default are filled in by the apiserver. Rules are checked by the apiserver (OpenAPI and CEL), which rejects an object that breaks one with the message shown here, prefixed by the field's path. Conditions follow \`metav1.Condition\`.`,
    '',
    'Examples are in [crds/samples](../crds/samples).',
    '',
    '## How the kinds fit together',
    '',
    '- An **Uplink** (cluster-scoped) is one way out of the gateway nodes: an interface, a next hop, SNAT addresses and ports, a weight and a tier, and a health check.',
    '- An **EgressGateway** (cluster-scoped) chooses the nodes that act as the gateway, the uplinks it balances over and the pods it serves, and sets balancing, timeouts, the default action and application association.',
    '- An **EgressPolicy** (namespaced, in the namespace of the pods it governs) names one gateway and holds ordered rules that allow or deny flows by application and destination and steer allowed flows to uplinks.',
    '',
    "A new flow from a served pod is decided as follows. The policies that select the pod and name its gateway are taken in ascending `priority` (then by name), and their rules in order; the first rule whose applications and destinations match decides. When none matches, the gateway's `defaultAction` decides. An allowed flow then gets an uplink: among the healthy uplinks its rule permits (its `preferred` ones while any is healthy, else its `allowed` ones, else all of the gateway's), those of the lowest tier, chosen by the gateway's balancing mode. The flow keeps that uplink until it ends or the uplink fails.",
    '',
  ];
  for (const definition of definitions) {
    const schema = objectSchema(definition);
    const properties = schema.properties as Record<string, JsonSchema>;
    lines.push(`## ${definition.kind}`, '', definition.description, '');
    lines.push(
      `- Scope: ${definition.scope === 'Cluster' ? 'cluster' : 'namespaced'}`,
      `- Resource: \`${definition.plural}\`, short names ${definition.shortNames.map((name) => `\`${name}\``).join(', ')}`,
      `- \`kubectl get\` columns: ${[...definition.printerColumns.map((column) => `${column.name} (${column.description.replace(/\.$/, '')})`), 'Age'].join(', ')}`,
      '',
    );
    for (const part of ['spec', 'status'] as const) {
      const partSchema = properties[part]!;
      lines.push(`### ${part}`, '', String(partSchema.description), '');
      fieldLines(partSchema, part, lines);
      lines.push('');
    }
  }
  return lines.join('\n');
}

function fieldLines(schema: JsonSchema, path: string, lines: string[]): void {
  const properties = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema.required ?? []) as string[]);
  for (const [name, property] of Object.entries(properties)) {
    const fieldPath = `${path}.${name}`;
    const facts = [typeName(property), ...(required.has(name) ? ['_required_'] : []), ...constraints(property)];
    lines.push(`- \`${fieldPath}\` (${facts.join(', ')}): ${String(property.description)}${rules(property)}`);
    const element = property.type === 'array' ? (property.items as JsonSchema) : property;
    const elementPath = property.type === 'array' ? `${fieldPath}[]` : fieldPath;
    if (element !== property) {
      const elementFacts = constraints(element);
      const elementRules = rules(element);
      if (element.type !== 'object' && (elementFacts.length > 0 || elementRules)) {
        lines.push(
          `- \`${elementPath}\` (${[typeName(element), ...elementFacts].join(', ')}): ${String(element.description)}${elementRules}`,
        );
      } else if (element.type === 'object' && elementRules) {
        lines.push(`- \`${elementPath}\`: ${String(element.description)}${elementRules}`);
      }
    }
    if (element.type === 'object') fieldLines(element, elementPath, lines);
  }
}

function typeName(schema: JsonSchema): string {
  if (schema.type === 'array') return `list of ${typeName(schema.items as JsonSchema)}`;
  if (schema.type === 'object' && schema.additionalProperties) {
    return `map of ${typeName(schema.additionalProperties as JsonSchema)}`;
  }
  return schema.format ? `${String(schema.type)} (${String(schema.format)})` : String(schema.type);
}

function constraints(schema: JsonSchema): string[] {
  const facts: string[] = [];
  const code = (value: unknown) => `\`${JSON.stringify(value)}\``;
  if (schema.enum) facts.push(`one of ${(schema.enum as string[]).map(code).join(', ')}`);
  if (schema.default !== undefined) facts.push(`default ${code(schema.default)}`);
  const range = (min: unknown, max: unknown, unit: string) => {
    if (min !== undefined && max !== undefined) facts.push(`${unit}${String(min)}–${String(max)}`);
    else if (min !== undefined) facts.push(`${unit}≥ ${String(min)}`);
    else if (max !== undefined) facts.push(`${unit}≤ ${String(max)}`);
  };
  range(schema.minimum, schema.maximum, '');
  range(schema.minLength, schema.maxLength, 'length ');
  range(schema.minItems, schema.maxItems, 'items ');
  range(schema.minProperties, schema.maxProperties, 'entries ');
  if (schema.pattern) facts.push(`pattern \`${String(schema.pattern)}\``);
  const listType = schema['x-kubernetes-list-type'];
  if (listType === 'set') facts.push('entries unique');
  if (listType === 'map') {
    facts.push(`keyed by ${(schema['x-kubernetes-list-map-keys'] as string[]).map((key) => `\`${key}\``).join(', ')}`);
  }
  return facts;
}

function rules(schema: JsonSchema): string {
  const validations = (schema['x-kubernetes-validations'] ?? []) as { message: string }[];
  return validations.map((validation) => ` Rule: “${validation.message}”.`).join('');
}
