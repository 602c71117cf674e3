// The Grafana dashboard in the chart against the metrics the code defines: every series a PromQL
// expression names (naat's, and the process and runtime metrics every component serves), and every
// label it selects or groups by, exists; and every naat metric a component serves is charted
// somewhere. A renamed or added metric fails here until the dashboard follows.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { processMetrics, Registry } from '../common/metrics/index.ts';
import { componentRegistries, describeMetrics } from './metrics-reference.ts';

interface Panel {
  id: number;
  type: string;
  title: string;
  targets?: Array<{ expr: string; refId: string }>;
}

const dashboard = JSON.parse(
  await readFile(join(import.meta.dirname, '..', 'charts', 'naat', 'dashboards', 'naat.json'), 'utf8'),
) as { panels: Panel[]; templating: { list: Array<{ name: string; definition?: string }> } };

/** naat's metrics, each once though several components serve naat_build_info. */
const metrics = [
  ...new Map(
    Object.values(componentRegistries())
      .flatMap(describeMetrics)
      .map((m) => [m.name, m]),
  ).values(),
];
const runtime = new Registry();
processMetrics(runtime, 'operator');
/** The metric behind each sample name, e.g. naat_x_seconds_bucket → the histogram naat_x_seconds. */
const bySample = new Map(
  [...metrics, ...describeMetrics(runtime)].flatMap((m) => m.sampleNames.map((name) => [name, m] as const)),
);
/** A series name in an expression: naat's, or a process or runtime metric's. */
const seriesName = /\b(?:naat|process|nodejs)_\w+/g;
/** Labels every scraped series has, whatever the metric. */
const scrapeLabels = ['instance', 'job'];

const expressions = [
  ...dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: `${p.title} ${t.refId}`, expr: t.expr }))),
  ...dashboard.templating.list
    .filter((v) => v.definition)
    .map((v) => ({ where: `variable ${v.name}`, expr: v.definition! })),
];

describe('the Grafana dashboard', () => {
  it('names only series the agents and the operator serve, with their labels', () => {
    const problems: string[] = [];
    for (const { where, expr } of expressions) {
      const used = [...expr.matchAll(seriesName)].map(([name]) => name);
      if (!used.length) problems.push(`${where}: names no metric naat serves`);
      for (const name of used) if (!bySample.has(name)) problems.push(`${where}: ${name} is not served`);
      const labelsOf = (name: string) => [
        ...(bySample.get(name)?.labelNames ?? []),
        ...(name.endsWith('_bucket') ? ['le'] : []),
        ...scrapeLabels,
      ];
      for (const [, name, matchers] of expr.matchAll(/\b((?:naat|process|nodejs)_\w+)\{([^}]*)\}/g)) {
        for (const [, label] of matchers!.matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)) {
          if (!labelsOf(name!).includes(label!)) problems.push(`${where}: ${name} has no label ${label}`);
        }
      }
      for (const [, name, label] of expr.matchAll(/label_values\((naat_\w+),\s*(\w+)\)/g)) {
        if (!labelsOf(name!).includes(label!)) problems.push(`${where}: ${name} has no label ${label}`);
      }
      const grouped = new Set(used.flatMap(labelsOf));
      for (const [, list] of expr.matchAll(/\bby\s*\(([^)]*)\)/g)) {
        for (const label of list!.split(',').map((l) => l.trim())) {
          if (!grouped.has(label)) problems.push(`${where}: groups by ${label}, which ${used.join(', ')} lack`);
        }
      }
    }
    expect(problems).toEqual([]);
  });

  it('charts every naat metric the agents and the operator serve', () => {
    const charted = new Set(
      expressions.flatMap(({ expr }) => [...expr.matchAll(seriesName)].map(([name]) => bySample.get(name)?.name)),
    );
    expect(metrics.map((m) => m.name).filter((name) => !charted.has(name))).toEqual([]);
  });

  it('is a dashboard Grafana can load: unique panel ids, a query in every panel, one data source variable', () => {
    const ids = dashboard.panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const empty = dashboard.panels.filter((p) => p.type !== 'row' && !p.targets?.length).map((p) => p.title);
    expect(empty).toEqual([]);
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).toBeDefined();
  });
});
