// Counters, gauges and histograms in the Prometheus text exposition format (version 0.0.4), for the
// /metrics of the agent and the operator. Small on purpose: fixed label names per metric, fixed
// histogram buckets, no summaries, no timestamps. Label values are escaped as the format requires
// (backslash, double quote, newline); a sample with labels its metric does not declare is a
// programming error and throws.

export type MetricType = 'counter' | 'gauge' | 'histogram';
export type Labels = Readonly<Record<string, string>>;

export interface MetricOptions<L extends string> {
  /** The family's name; a counter's ends in `_total`. */
  name: string;
  help: string;
  labelNames?: readonly L[];
}

export interface Metric {
  readonly name: string;
  readonly type: MetricType;
  readonly labelNames: readonly string[];
  /** The names its samples carry: a histogram's `_bucket`, `_sum` and `_count`. */
  readonly sampleNames: readonly string[];
  /** HELP, TYPE and every sample, one per line. */
  render(): string[];
}

const nameFormat = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const labelFormat = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** A label value as it stands between the double quotes. */
export const escapeLabelValue = (value: string): string =>
  value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');

/** HELP text escapes backslash and newline only. */
const escapeHelp = (text: string): string => text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');

/** A sample value or bucket bound: Go's spelling of the infinities and NaN. */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

const formatLabels = (pairs: ReadonlyArray<readonly [string, string]>): string =>
  pairs.length ? `{${pairs.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(',')}}` : '';

/** Label values per label set, kept in the order each set was first seen. */
abstract class Family<L extends string, V> implements Metric {
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly L[];
  abstract readonly type: MetricType;
  protected readonly series = new Map<string, { values: string[]; value: V }>();

  constructor({ name, help, labelNames = [] }: MetricOptions<L>) {
    if (!nameFormat.test(name)) throw new Error(`metric name ${JSON.stringify(name)} is not valid`);
    for (const label of labelNames) {
      if (!labelFormat.test(label) || label.startsWith('__') || label === 'le')
        throw new Error(`label name ${JSON.stringify(label)} of ${name} is not valid`);
    }
    this.name = name;
    this.help = help;
    this.labelNames = labelNames;
  }

  get sampleNames(): readonly string[] {
    return [this.name];
  }

  /** The series of `labels`, made with `initial` when new. */
  protected at(labels: Partial<Record<L, string>>, initial: () => V): { values: string[]; value: V } {
    const given = Object.keys(labels);
    if (given.length !== this.labelNames.length || this.labelNames.some((l) => typeof labels[l] !== 'string'))
      throw new Error(`${this.name} takes the labels [${this.labelNames.join(', ')}], not [${given.join(', ')}]`);
    const values = this.labelNames.map((l) => labels[l]!);
    const key = JSON.stringify(values);
    let series = this.series.get(key);
    if (!series) this.series.set(key, (series = { values, value: initial() }));
    return series;
  }

  protected pairs(values: readonly string[]): Array<readonly [string, string]> {
    return this.labelNames.map((l, i) => [l, values[i]!] as const);
  }

  render(): string[] {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    for (const { values, value } of this.series.values()) lines.push(...this.samples(values, value));
    return lines;
  }

  protected abstract samples(values: readonly string[], value: V): string[];
}

export interface ScalarOptions<L extends string> extends MetricOptions<L> {
  /**
   * Reads the samples at each render, in place of those set or counted (like Go's CounterFunc and
   * GaugeFunc): for values something else already keeps, such as a queue's length or a count.
   */
  collect?: () => Iterable<readonly [Partial<Record<L, string>>, number]>;
}

abstract class Scalar<L extends string> extends Family<L, { n: number }> {
  readonly #collect: ScalarOptions<L>['collect'];

  constructor(options: ScalarOptions<L>) {
    super(options);
    this.#collect = options.collect;
    this.reset();
  }

  /** Forgets every series; a metric without labels keeps its one series at 0, so it never goes absent. */
  protected reset(): void {
    this.series.clear();
    if (!this.labelNames.length) this.at({}, () => ({ n: 0 }));
  }

  get(labels: Partial<Record<L, string>> = {}): number {
    return this.at(labels, () => ({ n: 0 })).value.n;
  }

  override render(): string[] {
    if (this.#collect) {
      this.reset();
      for (const [labels, value] of this.#collect()) this.at(labels, () => ({ n: 0 })).value.n = value;
    }
    return super.render();
  }

  protected samples(values: readonly string[], value: { n: number }): string[] {
    return [`${this.name}${formatLabels(this.pairs(values))} ${formatValue(value.n)}`];
  }
}

/** Only goes up; resets only with the process. */
export class Counter<L extends string = never> extends Scalar<L> {
  readonly type = 'counter';

  inc(labels: Partial<Record<L, string>> = {}, by = 1): void {
    if (!(by >= 0)) throw new Error(`${this.name} cannot go down (by ${by})`);
    this.at(labels, () => ({ n: 0 })).value.n += by;
  }
}

/** A value now. `clear` forgets every series, for gauges set afresh from a snapshot at each scrape. */
export class Gauge<L extends string = never> extends Scalar<L> {
  readonly type = 'gauge';

  set(labels: Partial<Record<L, string>>, value: number): void {
    this.at(labels, () => ({ n: 0 })).value.n = value;
  }

  clear(): void {
    this.reset();
  }
}

export interface HistogramOptions<L extends string> extends MetricOptions<L> {
  /** Upper bounds, ascending; +Inf is added. */
  buckets: readonly number[];
}

interface Distribution {
  /** Per bucket, the observations that fell into it alone (made cumulative when rendered). */
  counts: number[];
  sum: number;
  count: number;
}

/** Observations counted into fixed buckets, with their sum and count. */
export class Histogram<L extends string = never> extends Family<L, Distribution> {
  readonly type = 'histogram';
  readonly buckets: readonly number[];

  constructor(options: HistogramOptions<L>) {
    super(options);
    const { buckets } = options;
    if (!buckets.length || buckets.some((b, i) => !Number.isFinite(b) || (i > 0 && b <= buckets[i - 1]!)))
      throw new Error(`${this.name}: buckets must be finite and ascending`);
    this.buckets = buckets;
    if (!this.labelNames.length) this.at({}, () => this.#empty());
  }

  override get sampleNames(): readonly string[] {
    return ['_bucket', '_sum', '_count'].map((suffix) => `${this.name}${suffix}`);
  }

  #empty(): Distribution {
    return { counts: Array<number>(this.buckets.length + 1).fill(0), sum: 0, count: 0 };
  }

  observe(labels: Partial<Record<L, string>>, value: number): void {
    const d = this.at(labels, () => this.#empty()).value;
    // The first bucket whose bound is at least the value; past the last, +Inf's.
    let i = this.buckets.findIndex((bound) => value <= bound);
    if (i < 0) i = this.buckets.length;
    d.counts[i]!++;
    d.sum += value;
    d.count++;
  }

  /** Count and sum of the observations with these labels. */
  get(labels: Partial<Record<L, string>> = {}): { count: number; sum: number } {
    const { count, sum } = this.at(labels, () => this.#empty()).value;
    return { count, sum };
  }

  protected samples(values: readonly string[], d: Distribution): string[] {
    const pairs = this.pairs(values);
    const lines: string[] = [];
    let cumulative = 0;
    [...this.buckets, Infinity].forEach((bound, i) => {
      cumulative += d.counts[i]!;
      lines.push(`${this.name}_bucket${formatLabels([...pairs, ['le', formatValue(bound)]])} ${cumulative}`);
    });
    lines.push(`${this.name}_sum${formatLabels(pairs)} ${formatValue(d.sum)}`);
    lines.push(`${this.name}_count${formatLabels(pairs)} ${d.count}`);
    return lines;
  }
}

/** The metrics one /metrics serves, in the order they were added. */
export class Registry {
  readonly #metrics = new Map<string, Metric>();

  add<M extends Metric>(metric: M): M {
    if (this.#metrics.has(metric.name)) throw new Error(`metric ${metric.name} is defined twice`);
    this.#metrics.set(metric.name, metric);
    return metric;
  }

  metrics(): Metric[] {
    return [...this.#metrics.values()];
  }

  /** Every sample name the registry can emit. */
  sampleNames(): string[] {
    return this.metrics().flatMap((m) => m.sampleNames);
  }

  render(): string {
    return `${[...this.#metrics.values()].flatMap((m) => m.render()).join('\n')}\n`;
  }
}

/** The content type of the text format, for the /metrics response. */
export const contentType = 'text/plain; version=0.0.4; charset=utf-8';

/**
 * Bounds a label's cardinality: the first `limit` distinct values are kept, later ones become
 * `other`, so a flood of names (process names come from the pods) cannot grow a series per name.
 */
export class LabelLimit {
  readonly #limit: number;
  readonly #seen = new Set<string>();

  constructor(limit: number) {
    this.#limit = limit;
  }

  get(value: string): string {
    if (this.#seen.has(value)) return value;
    if (this.#seen.size >= this.#limit) return 'other';
    this.#seen.add(value);
    return value;
  }
}
