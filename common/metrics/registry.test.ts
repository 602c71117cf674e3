import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Counter, Gauge, Registry } from 'prom-client';
import { buildInfo, processMetrics, readAtScrape } from './registry.ts';

const root = join(import.meta.dirname, '..', '..');

describe('metrics read at each scrape', () => {
  it('are exactly what the source holds at the scrape: series it no longer gives go, a metric without labels stays at 0', async () => {
    const registry = new Registry();
    let depths: Array<[{ queue: string }, number]> = [[{ queue: 'a' }, 4]];
    let dropped: number | undefined = undefined;
    new Gauge({
      name: 'depth',
      help: 'd',
      labelNames: ['queue'],
      collect: readAtScrape(() => depths),
      registers: [registry],
    });
    new Counter({
      name: 'dropped_total',
      help: 'f',
      collect: readAtScrape(() => (dropped === undefined ? [] : [[{}, dropped]])),
      registers: [registry],
    });
    expect(await registry.metrics()).toBe(
      '# HELP depth d\n# TYPE depth gauge\ndepth{queue="a"} 4\n\n' +
        '# HELP dropped_total f\n# TYPE dropped_total counter\ndropped_total 0\n',
    );
    depths = [[{ queue: 'b' }, 1]];
    dropped = 7;
    const text = await registry.metrics();
    expect(text).toContain('\ndepth{queue="b"} 1\n');
    expect(text).not.toContain('queue="a"');
    // A counter something else keeps is its value, not a sum of the scrapes.
    expect(await registry.metrics()).toContain('\ndropped_total 7\n');
  });
});

describe('the build and process metrics', () => {
  it('say the version of package.json, the component and the Node.js version, at 1', async () => {
    const registry = new Registry();
    buildInfo(registry, 'node-agent');
    const { version } = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
    expect(await registry.metrics()).toContain(
      `\nnaat_build_info{version="${version}",component="node-agent",node_version="${process.version}"} 1\n`,
    );
  });

  it('add the standard process and Node.js runtime metrics beside the build info', async () => {
    const registry = new Registry();
    processMetrics(registry, 'operator');
    const text = await registry.metrics();
    for (const name of [
      'process_cpu_seconds_total',
      'process_resident_memory_bytes',
      'process_start_time_seconds',
      'nodejs_eventloop_lag_seconds',
      'nodejs_heap_size_used_bytes',
      'naat_build_info',
    ])
      expect(text).toMatch(new RegExp(`^${name}(\\{[^}]*\\})? [0-9.e+-]+$`, 'm'));
  });
});
