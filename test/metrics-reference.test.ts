import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { componentRegistries, describeMetrics, metricsReference, referencePath, root } from './metrics-reference.ts';

test('the generated metrics reference is up to date (run `npm run generate:metrics` when this fails)', async () => {
  const onDisk = await readFile(join(root, referencePath), 'utf8').catch(() => '(missing)');
  expect(onDisk).toBe(await metricsReference());
});

test('every metric is named by Prometheus conventions and says what it measures', () => {
  for (const registry of Object.values(componentRegistries())) {
    for (const { name, type, help } of describeMetrics(registry)) {
      expect({ name, ok: name.startsWith('naat_') }).toEqual({ name, ok: true });
      // Base units and ratios: no milliseconds, no percentages.
      expect({ name, unit: /_(ms|milliseconds|percent|kilobytes|megabytes)\b/.test(name) }).toEqual({
        name,
        unit: false,
      });
      expect({ name, counter: name.endsWith('_total') }).toEqual({ name, counter: type === 'counter' });
      expect({ name, help: help.length > 20 && /[.)]$/.test(help) }).toEqual({ name, help: true });
    }
  }
});
