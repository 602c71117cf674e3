// The benchmarks' harness. A benchmark records figures: a stable key, the words people read, a
// value and its unit, the figure of the same run it is compared with (its baseline) and the goal
// it is held to where one was stated. The harness prints each figure as it is recorded, and at
// the end says which figures could not be measured and which goals were missed; `--json FILE`
// writes the same figures as JSON.
//
// Exit status: 1 when the benchmark threw or a figure could not be measured (not finite, or its
// baseline or goal reference missing, zero or not finite): such a run measured nothing and must
// not pass. A missed goal is reported (in the table and as `met: false`) but fails the run only
// with `--strict-goals`: goals are held on a quiet machine, and a shared one misses them by noise.
//
// Forms: every benchmark has a full form (`--full`, the default: the sizes its figures are quoted
// at), a quick one (`--quick`, what `npm run bench` runs) and a smoke one (`--smoke`, seconds: the
// CI test that keeps each benchmark working). An unknown flag exits 2 with the usage.
import { writeFile } from 'node:fs/promises';
import { cpus, hostname, release, totalmem } from 'node:os';
import { parseCommandLine as parseProgramArgs, usageError } from '../../common/index.ts';

export type Form = 'full' | 'quick' | 'smoke';

export interface Goal {
  /** The figure must be at least (`min`) or at most (`max`) the bound. */
  bound: 'min' | 'max';
  /** The bound in the figure's unit, or a multiple of figure `of`'s value when `of` is set. */
  value: number;
  of?: string;
  /** Where the goal was stated. */
  source: string;
}

export interface Figure {
  /** Stable across runs and forms: what a reader of the JSON looks for. */
  key: string;
  /** The human wording, as printed. */
  label: string;
  value: number;
  unit: string;
  /** The key of the figure of the same run this one is compared with. */
  baseline?: string;
  goal?: Goal;
  /** Printed after the figure: how it was measured, related counts. */
  note?: string;
  /** Digits after the decimal point when printed; by default by the value's magnitude. */
  digits?: number;
}

export interface FigureReport {
  label: string;
  /** null when it could not be measured (JSON has no NaN or Infinity). */
  value: number | null;
  unit: string;
  baseline: string | null;
  /** value / the baseline's value. */
  ratio: number | null;
  goal: (Goal & { limit: number | null }) | null;
  /** Whether the goal is met; null without a goal or when either side was not measured. */
  met: boolean | null;
  /** Why the figure does not count as measured; null when it does. */
  problem: string | null;
  note: string | null;
}

export interface Host {
  hostname: string;
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  kernel: string;
  node: string;
}

export interface BenchReport {
  benchmark: string;
  form: Form;
  startedAt: string;
  seconds: number;
  host: Host;
  strictGoals: boolean;
  /** No error, every figure measured and, with strictGoals, every goal met. */
  ok: boolean;
  /** What the benchmark threw, if it did. */
  error: string | null;
  notMeasured: string[];
  goalsMissed: string[];
  figures: Record<string, FigureReport>;
}

export const ratio = (value: number, baseline: number): number => value / baseline;

const finite = (value: number | undefined): value is number => value !== undefined && Number.isFinite(value);

/** Why a figure a ratio or goal refers to cannot serve as one; undefined when it can. */
function referenceProblem(what: string, key: string, figures: ReadonlyMap<string, Figure>): string | undefined {
  const value = figures.get(key)?.value;
  if (value === undefined) return `its ${what} ${key} was not recorded`;
  if (!finite(value)) return `its ${what} ${key} was not measured (${value})`;
  if (value === 0) return `its ${what} ${key} is 0`;
  return undefined;
}

/** Why `figure` does not count as measured, given the run's figures; undefined when it does. */
export function figureProblem(figure: Figure, figures: ReadonlyMap<string, Figure>): string | undefined {
  if (!finite(figure.value)) return `not measured (${figure.value})`;
  if (figure.baseline !== undefined) {
    const problem = referenceProblem('baseline', figure.baseline, figures);
    if (problem) return problem;
  }
  if (figure.goal?.of !== undefined) return referenceProblem('goal reference', figure.goal.of, figures);
  return undefined;
}

/** The bound a goal sets, given the run's figures; undefined when its reference has no value. */
export function goalLimit(goal: Goal, figures: ReadonlyMap<string, Figure>): number | undefined {
  if (goal.of === undefined) return goal.value;
  const reference = figures.get(goal.of)?.value;
  return finite(reference) ? goal.value * reference : undefined;
}

export const goalMet = (value: number, bound: Goal['bound'], limit: number): boolean =>
  bound === 'min' ? value >= limit : value <= limit;

export function figureReport(figure: Figure, figures: ReadonlyMap<string, Figure>): FigureReport {
  const problem = figureProblem(figure, figures) ?? null;
  const baselineValue = figure.baseline === undefined ? undefined : figures.get(figure.baseline)?.value;
  const limit = figure.goal && goalLimit(figure.goal, figures);
  const measured = (v: number | undefined) => (finite(v) ? v : null);
  const r = problem === null && baselineValue !== undefined ? ratio(figure.value, baselineValue) : undefined;
  return {
    label: figure.label,
    value: measured(figure.value),
    unit: figure.unit,
    baseline: figure.baseline ?? null,
    ratio: measured(r),
    goal: figure.goal ? { ...figure.goal, limit: measured(limit) } : null,
    met: problem === null && finite(limit) && figure.goal ? goalMet(figure.value, figure.goal.bound, limit) : null,
    problem,
    note: figure.note ?? null,
  };
}

export interface RunFacts {
  benchmark: string;
  form: Form;
  startedAt: Date;
  seconds: number;
  host: Host;
  strictGoals: boolean;
  error?: string;
}

/** The run as JSON: every figure with its ratio and goal, and whether the run counts. */
export function benchReport(facts: RunFacts, recorded: readonly Figure[]): BenchReport {
  const figures = new Map(recorded.map((f) => [f.key, f]));
  const reports = Object.fromEntries(recorded.map((f) => [f.key, figureReport(f, figures)]));
  const notMeasured = Object.keys(reports).filter((key) => reports[key]!.problem !== null);
  // A goal whose figure was not measured is counted under notMeasured, not as missed.
  const goalsMissed = Object.keys(reports).filter((key) => reports[key]!.goal && reports[key]!.met === false);
  const error = facts.error ?? null;
  return {
    benchmark: facts.benchmark,
    form: facts.form,
    startedAt: facts.startedAt.toISOString(),
    seconds: Math.round(facts.seconds * 10) / 10,
    host: facts.host,
    strictGoals: facts.strictGoals,
    ok: error === null && notMeasured.length === 0 && (!facts.strictGoals || goalsMissed.length === 0),
    error,
    notMeasured,
    goalsMissed,
    figures: reports,
  };
}

function formatNumber(value: number, digits?: number): string {
  if (!Number.isFinite(value)) return String(value);
  const places = digits ?? (Math.abs(value) >= 100 ? 0 : Math.abs(value) >= 10 ? 1 : 2);
  return value.toFixed(places);
}

const boundSign = (bound: Goal['bound']) => (bound === 'min' ? '≥' : '≤');

/** The goal as words: "goal ≥ 0.95 × throughput.masquerade". */
export function goalText(goal: Goal): string {
  return `goal ${boundSign(goal.bound)} ${goal.of === undefined ? formatNumber(goal.value) : `${goal.value} × ${goal.of}`}`;
}

/** One figure as printed: its words, value and unit, ratio to its baseline, goal and note. */
export function figureLine(figure: Figure, report: FigureReport): string {
  const value = `${formatNumber(figure.value, figure.digits)} ${figure.unit}`;
  const parts = [`  ${figure.label.padEnd(70)} ${value.padStart(16)}`];
  if (report.ratio !== null) parts.push(`×${report.ratio.toFixed(2)}`);
  if (report.goal) {
    const verdict = report.met === null ? 'not judged' : report.met ? 'met' : 'NOT MET';
    parts.push(`(${goalText(report.goal)}: ${verdict})`);
  }
  if (report.problem) parts.push(`NOT MEASURED: ${report.problem}`);
  if (figure.note) parts.push(figure.note);
  return parts.join('  ');
}

/** The lines that end a run: what was not measured, which goals were missed, the verdict. */
export function verdictLines(report: BenchReport): string[] {
  const lines: string[] = [];
  for (const key of report.notMeasured) {
    lines.push(`FAILED: figure ${key} (${report.figures[key]!.label}): ${report.figures[key]!.problem}`);
  }
  for (const key of report.goalsMissed) {
    const f = report.figures[key]!;
    lines.push(
      `${report.strictGoals ? 'FAILED' : 'goal missed'}: figure ${key} is ${formatNumber(f.value!)} ${f.unit}, ` +
        `${goalText(f.goal!)} (${boundSign(f.goal!.bound)} ${formatNumber(f.goal!.limit!)} ${f.unit}; ${f.goal!.source})`,
    );
  }
  if (report.error !== null) lines.push(`FAILED: the benchmark stopped: ${report.error}`);
  const goals = Object.values(report.figures).filter((f) => f.goal).length;
  lines.push(
    `${report.benchmark} (${report.form}): ${Object.keys(report.figures).length} figures, ` +
      `${report.notMeasured.length} not measured, ${goals - report.goalsMissed.length} of ${goals} goals met ` +
      `in ${report.seconds.toFixed(0)} s: ${report.ok ? 'ok' : 'FAILED'}`,
  );
  return lines;
}

export function host(): Host {
  const cores = cpus();
  return {
    hostname: hostname(),
    cpus: cores.length,
    cpuModel: cores[0]?.model ?? '',
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: release(),
    node: process.version,
  };
}

/** What a benchmark records figures into; it prints them as they come. */
export class Bench {
  readonly form: Form;
  readonly #figures = new Map<string, Figure>();
  readonly #print: (line: string) => void;

  constructor(form: Form, print: (line: string) => void = console.log) {
    this.form = form;
    this.#print = print;
  }

  /** A heading for the figures that follow. */
  section(title: string): void {
    this.#print(title);
  }

  /** A line of context that is no figure. */
  note(text: string): void {
    this.#print(`    ${text}`);
  }

  /** Records and prints a figure; returns its value. Keys are unique within a run. */
  figure(figure: Figure): number {
    if (this.#figures.has(figure.key)) throw new Error(`figure ${figure.key} recorded twice`);
    this.#figures.set(figure.key, figure);
    this.#print(figureLine(figure, figureReport(figure, this.#figures)));
    return figure.value;
  }

  get figures(): Figure[] {
    return [...this.#figures.values()];
  }
}

export interface BenchmarkSpec<Size> {
  /** As in the JSON and the npm script: naa, dataplane, … */
  name: string;
  /** The sizes of each form. */
  sizes: Record<Form, Size>;
  /** Options of the benchmark's own, which change the size of the form asked for. */
  options?: SizeOptions<Size>;
  /** Parts a run can be limited to from the command line (`--fault power-off`), when it has any. */
  parts?: Parts;
  /** `only`: the parts asked for on the command line, in the benchmark's order; all when none was. */
  run(bench: Bench, size: Size, only?: readonly string[]): Promise<void>;
}

/** A benchmark's named parts, selected with a repeatable flag. */
export interface Parts {
  /** The flag without its dashes: fault. */
  flag: string;
  names: readonly string[];
}

export interface SizeOptions<Size> {
  /** By option name (without the dashes), each taking a value: its line of the usage. */
  usage: Record<string, string>;
  /** The form's size as the options given change it; throws an Error naming a bad value. */
  apply(size: Size, values: Record<string, string>): Size;
}

/** A positive integer option's value, or an error naming the option. */
export function positiveInteger(name: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} ${text}: not a positive integer`);
  return value;
}

/** The given values of a benchmark's own options, as `own` when any was. */
function ownValues(
  ownUsage: Record<string, string>,
  values: Record<string, unknown>,
): { own?: Record<string, string> } {
  const own = Object.fromEntries(
    Object.keys(ownUsage).flatMap((name) => (typeof values[name] === 'string' ? [[name, values[name]]] : [])),
  );
  return Object.keys(own).length ? { own } : {};
}

/** The npm script that runs a benchmark (`bench:naa`, `soak`) or all of them (`bench`, for `all`). */
const npmScript = (script: string) => (script === 'all' ? 'bench' : script === 'soak' ? 'soak' : `bench:${script}`);

/** What a benchmark takes on its command line beyond what every one does. */
export interface CommandLineExtras {
  /** Its own options, each taking a value: by name (without the dashes), its line of the usage. */
  own?: Record<string, string>;
  parts?: Parts;
}

const usage = (script: string, defaultForm: Form, { own = {}, parts }: CommandLineExtras = {}) =>
  [
    `usage: npm run ${npmScript(script)} -- [--full | --quick | --smoke] [--json FILE] [--strict-goals]` +
      (parts ? ` [--${parts.flag} NAME]...` : ''),
    `  --full           the sizes the figures are quoted at${defaultForm === 'full' ? ' (the default)' : ''}`,
    `  --quick          smaller counts and durations (what \`npm run bench\` runs)${defaultForm === 'quick' ? ' (the default)' : ''}`,
    '  --smoke          the smallest form, seconds long (CI)',
    '  --json FILE      also write the figures as JSON to FILE',
    '  --strict-goals   exit 1 when a goal is missed, not only when a figure was not measured',
    ...Object.values(own),
    ...(parts
      ? [`  --${parts.flag} NAME`.padEnd(19) + `only this ${parts.flag}, repeatable: ${parts.names.join(', ')}`]
      : []),
  ].join('\n');

export interface CommandLine {
  form: Form;
  json?: string;
  strictGoals: boolean;
  /** The values of the benchmark's own options that were given, when any was. */
  own?: Record<string, string>;
  /** The parts asked for (`--fault`), in the benchmark's order; absent when none was. */
  only?: string[];
}

/** The command line of a benchmark or of `all.ts`; exits 2 with the usage on a bad one. */
export function parseCommandLine(
  script: string,
  argv: string[],
  defaultForm: Form = 'full',
  extras: CommandLineExtras = {},
): CommandLine {
  const text = usage(script, defaultForm, extras);
  const { own: ownUsage = {}, parts } = extras;
  const ownOptions = Object.fromEntries(Object.keys(ownUsage).map((name) => [name, { type: 'string' as const }]));
  const { values } = parseProgramArgs(text, {
    args: argv,
    options: {
      ...ownOptions,
      full: { type: 'boolean' },
      quick: { type: 'boolean' },
      smoke: { type: 'boolean' },
      json: { type: 'string' },
      'strict-goals': { type: 'boolean' },
      ...(parts ? { [parts.flag]: { type: 'string', multiple: true } as const } : {}),
    },
  });
  const asked = parts ? ((values as Record<string, string[] | undefined>)[parts.flag] ?? []) : [];
  const unknown = asked.filter((name) => !parts!.names.includes(name));
  if (unknown.length > 0) usageError(text, `unknown ${parts!.flag} ${unknown.join(', ')}`);
  const forms = (['full', 'quick', 'smoke'] as const).filter((form) => values[form]);
  if (forms.length > 1) usageError(text, `${forms.map((f) => `--${f}`).join(' and ')} exclude each other`);
  return {
    form: values.smoke ? 'smoke' : values.quick ? 'quick' : values.full ? 'full' : defaultForm,
    ...(typeof values.json === 'string' ? { json: values.json } : {}),
    strictGoals: values['strict-goals'] === true,
    ...ownValues(ownUsage, values),
    ...(asked.length > 0 ? { only: parts!.names.filter((name) => asked.includes(name)) } : {}),
  };
}

/**
 * Runs a benchmark from the command line: parses it, runs the form asked for, prints the verdict,
 * writes the JSON when asked and sets the exit status.
 */
export async function runBenchmark<Size>(spec: BenchmarkSpec<Size>): Promise<BenchReport> {
  const extras = { ...(spec.options ? { own: spec.options.usage } : {}), ...(spec.parts ? { parts: spec.parts } : {}) };
  const args = parseCommandLine(spec.name, process.argv.slice(2), 'full', extras);
  let size = spec.sizes[args.form];
  if (spec.options) {
    try {
      size = spec.options.apply(size, args.own ?? {});
    } catch (error) {
      usageError(usage(spec.name, 'full', extras), (error as Error).message);
    }
  }
  const bench = new Bench(args.form);
  const startedAt = new Date();
  const started = performance.now();
  let error: string | undefined;
  try {
    await spec.run(bench, size, args.only);
  } catch (thrown) {
    console.error(thrown);
    error = thrown instanceof Error ? thrown.message : String(thrown);
  }
  const report = benchReport(
    {
      benchmark: spec.name,
      form: args.form,
      startedAt,
      seconds: (performance.now() - started) / 1000,
      host: host(),
      strictGoals: args.strictGoals,
      ...(error !== undefined ? { error } : {}),
    },
    bench.figures,
  );
  console.log('');
  for (const line of verdictLines(report)) console.log(line);
  if (args.json) {
    await writeFile(args.json, JSON.stringify(report, null, 2) + '\n');
    console.log(`figures written to ${args.json}`);
  }
  if (!report.ok) process.exitCode = 1;
  return report;
}

/** The value at quantile `q` (nearest rank) of `values`; NaN when there are none. */
export function percentile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? NaN;
}

/** The median (upper for an even count) of `values`; NaN when there are none. */
export const median = (values: readonly number[]): number =>
  [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? NaN;
