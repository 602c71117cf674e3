// Runs a fuzz target of targets/ under Jazzer.js (jazzer.ts, in a process of its own) for a bounded
// time: it first replays the target's corpus (corpus/TARGET, kept in the repository), then explores
// from it. Inputs that reach new code are written to a scratch directory, never to the corpus. A
// crash (an exception out of the target, or a run longer than the per-input timeout) ends the run
// with the input that caused it, kept in the scratch directory. (libFuzzer's corpus merge, which
// runs the fuzzer in child processes, ends in a segmentation fault with Jazzer.js 4.0.0 on glibc 2.36.)
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const here = import.meta.dirname;
const root = join(here, '..', '..');

/** The targets, by the name of their file in targets/. */
export async function fuzzTargets(): Promise<string[]> {
  return (await readdir(join(here, 'targets'))).filter((f) => f.endsWith('.ts')).map((f) => f.slice(0, -'.ts'.length));
}

export interface FuzzOptions {
  /** How long to explore after the corpus is replayed. */
  seconds: number;
  /** Keeps the inputs that reached new code, in the scratch directory it names. */
  keep?: boolean;
  /** Prints libFuzzer's output as it comes (a terminal) instead of keeping it (a test). */
  print?: boolean;
}

export interface FuzzResult {
  /** 0: no finding. */
  code: number;
  /** libFuzzer's output, when not printed. */
  output: string;
  /** The input that crashed the target, and the file that holds it. */
  crash?: { file: string; input: Buffer };
  /** Where the inputs that reached new code are, when kept. */
  found?: string;
}

export async function runFuzzer(target: string, options: FuzzOptions): Promise<FuzzResult> {
  const scratch = await mkdtemp(join(tmpdir(), `naat-fuzz-${target}-`));
  const corpus = join(here, 'corpus', target);
  const found = join(scratch, 'found');
  const libFuzzer = [`-max_total_time=${options.seconds}`, `-artifact_prefix=${scratch}/`, '-print_final_stats=1'];
  const run = await jazzer(target, [found, corpus], libFuzzer, options.print);
  const crashes = (await readdir(scratch)).filter((f) => /^(crash|timeout|oom)-/.test(f));
  if (run.code !== 0) {
    const file = crashes[0] && join(scratch, crashes[0]);
    return { ...run, ...(file && { crash: { file, input: await readFile(file) } }) };
  }
  if (options.keep) return { ...run, found };
  await rm(scratch, { recursive: true, force: true });
  return run;
}

async function jazzer(target: string, directories: string[], flags: string[], print = false) {
  await mkdir(directories[0]!, { recursive: true });
  const file = join(here, 'targets', `${target}.ts`);
  const args = ['--no-warnings=ExperimentalWarning', join(here, 'jazzer.ts'), file, ...directories, '--', ...flags];
  const child = spawn(process.execPath, args, {
    cwd: root,
    stdio: ['ignore', print ? 'inherit' : 'pipe', print ? 'inherit' : 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk) => (output += chunk));
  child.stderr?.on('data', (chunk) => (output += chunk));
  const code = await new Promise<number>((resolve) =>
    child.on('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0))),
  );
  return { code, output };
}
