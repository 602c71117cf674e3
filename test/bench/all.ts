// `npm run bench` (as root): every benchmark in turn, in its quick form (--full or --smoke for the
// others), each a process of its own as its npm script runs it, and one JSON file with all their
// figures (--json FILE; a file in the temporary folder by default, its path printed). Exits 1 when
// any benchmark failed (test/bench/harness.ts says when one does); the others still run.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { host, parseCommandLine, type BenchReport, type Form } from './harness.ts';

const benchmarks = [
  'naa',
  'naa-gateway',
  'dataplane',
  'operator',
  'strict',
  'steering',
  'failover',
  'scale',
  'soak',
] as const;

export interface AllReport {
  form: Form;
  startedAt: string;
  seconds: number;
  host: ReturnType<typeof host>;
  strictGoals: boolean;
  ok: boolean;
  /** Benchmarks that exited non-zero or wrote no figures. */
  failed: string[];
  benchmarks: Record<string, BenchReport | { benchmark: string; ok: false; error: string }>;
}

const args = parseCommandLine('all', process.argv.slice(2), 'quick');
const output = args.json ?? join(tmpdir(), `naat-bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
const dir = await mkdtemp(join(tmpdir(), 'naat-bench-all-'));
const startedAt = new Date();
const started = performance.now();
const reports: AllReport['benchmarks'] = {};
const failed: string[] = [];
try {
  for (const name of benchmarks) {
    const file = join(dir, `${name}.json`);
    const argv = [join(import.meta.dirname, `${name}.ts`), `--${args.form}`, '--json', file];
    if (args.strictGoals) argv.push('--strict-goals');
    console.log(`\n=== ${name} (${args.form})`);
    const code = await new Promise<number>((resolve) =>
      spawn(process.execPath, argv, { stdio: 'inherit' }).on('exit', (status, signal) =>
        resolve(status ?? (signal ? 1 : 0)),
      ),
    );
    const report = await readFile(file, 'utf8').then(
      (text) => JSON.parse(text) as BenchReport,
      () => undefined,
    );
    reports[name] = report ?? { benchmark: name, ok: false, error: `exited with ${code} and wrote no figures` };
    if (code !== 0 || !report?.ok) failed.push(name);
  }
} finally {
  await rm(dir, { recursive: true, force: true });
}
const all: AllReport = {
  form: args.form,
  startedAt: startedAt.toISOString(),
  seconds: Math.round((performance.now() - started) / 100) / 10,
  host: host(),
  strictGoals: args.strictGoals,
  ok: failed.length === 0,
  failed,
  benchmarks: reports,
};
await writeFile(output, JSON.stringify(all, null, 2) + '\n');
console.log(
  `\n${benchmarks.length} benchmarks (${args.form}) in ${all.seconds.toFixed(0)} s: ` +
    `${failed.length ? `FAILED: ${failed.join(', ')}` : 'all ok'}; figures written to ${output}`,
);
if (failed.length) process.exitCode = 1;
