// Helm for tests: the pinned binary (built by build-helm.sh) and the chart README's values table,
// which is derived from the chart's values.schema.json and values.yaml so the three cannot drift.
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));

/** Builds helm if its pin changed and returns the path of the binary. */
export async function buildHelm(): Promise<string> {
  const { stdout } = await run('bash', [join(here, 'build-helm.sh')], { maxBuffer: 1 << 24 });
  return stdout.trim().split('\n').pop()!;
}

/** Runs helm; resolves with stdout, rejects with stderr in the message. */
export function helm(binary: string, args: string[], kubeconfig?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      binary,
      [...(kubeconfig ? [`--kubeconfig=${kubeconfig}`] : []), ...args],
      // Helm's own state (repositories, plugins, cache) in one place of its own, not the user's.
      {
        maxBuffer: 1 << 26,
        env: {
          ...process.env,
          HELM_CACHE_HOME: '/tmp/naat-helm/cache',
          HELM_CONFIG_HOME: '/tmp/naat-helm/config',
          HELM_DATA_HOME: '/tmp/naat-helm/data',
        },
      },
      (error, stdout, stderr) => {
        if (error) reject(new Error(`helm ${args.join(' ')}: ${stderr.trim() || error.message}`));
        else resolve(stdout);
      },
    );
  });
}

export interface JsonSchema {
  type?: string | string[];
  description?: string;
  properties?: Record<string, JsonSchema>;
  items?: JsonSchema;
  enum?: unknown[];
  $ref?: string;
  definitions?: Record<string, JsonSchema>;
}

/**
 * One row per documented value: objects whose every property has a description are documented
 * property by property; anything else (scalars, lists, maps, Kubernetes structures) is one value.
 */
export function valuesTable(schema: JsonSchema, values: Record<string, unknown>): string {
  const rows: string[] = ['| Value | Type | Default | Description |', '| --- | --- | --- | --- |'];
  const resolve = (node: JsonSchema): JsonSchema =>
    node.$ref ? { ...schema.definitions![node.$ref.replace('#/definitions/', '')], ...node, $ref: undefined } : node;
  const walk = (node: JsonSchema, value: unknown, path: string[]) => {
    const resolved = resolve(node);
    const properties = Object.entries(resolved.properties ?? {});
    if (properties.length > 0 && properties.every(([, child]) => child.description)) {
      for (const [key, child] of properties) {
        walk(child, (value as Record<string, unknown> | undefined)?.[key], [...path, key]);
      }
      return;
    }
    const type = resolved.enum
      ? resolved.enum.map((option) => `\`${option}\``).join(', ')
      : resolved.type === 'array'
        ? 'list'
        : (resolved.type ?? 'object');
    const cell = (text: string) => text.replaceAll('|', '\\|');
    rows.push(
      `| \`${path.join('.')}\` | ${cell(String(type))} | \`${cell(JSON.stringify(value))}\` | ${cell(resolved.description ?? '')} |`,
    );
  };
  walk(schema, values, []);
  return rows.join('\n');
}
