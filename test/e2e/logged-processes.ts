// The programs a test runs, each with its output where the test reads it (a file of the test's
// folder, or memory), stopped together when the test ends, the last started first.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stopProcess } from './topology.ts';

export interface LoggedProcessesOptions {
  /** The folder of the log files. */
  dir?: string;
  /** Starts a program in a network namespace (a topology's spawn). */
  spawnIn?: (ns: string, argv: string[], options: SpawnOptions) => ChildProcess;
  /** Added to every program's environment. */
  env?: NodeJS.ProcessEnv;
}

export class LoggedProcesses {
  readonly #o: LoggedProcessesOptions;
  readonly #started: ChildProcess[] = [];
  readonly #output = new Map<string, string>();

  constructor(options: LoggedProcessesOptions = {}) {
    this.#o = options;
  }

  /**
   * Runs `argv` in the network namespace `ns` (on the host without one), its output appended to
   * the file `log` of the folder.
   */
  spawn = (ns: string | undefined, argv: string[], log: string, env: NodeJS.ProcessEnv = {}): ChildProcess => {
    const fd = openSync(join(this.#o.dir!, log), 'a');
    const options = {
      stdio: ['ignore', fd, fd] as ['ignore', number, number],
      env: { ...process.env, ...this.#o.env, ...env },
    };
    const child = ns ? this.#o.spawnIn!(ns, argv, options) : spawn(argv[0]!, argv.slice(1), options);
    closeSync(fd);
    this.#started.push(child);
    return child;
  };

  /** Runs `argv` on the host, its output kept in memory under `name` (see output). */
  capture(name: string, argv: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
    const child = spawn(argv[0]!, argv.slice(1), {
      env: { ...process.env, ...this.#o.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.#output.set(name, '');
    const append = (data: Buffer) => this.#output.set(name, this.#output.get(name)! + data.toString());
    child.stdout.on('data', append);
    child.stderr.on('data', append);
    this.#started.push(child);
    return child;
  }

  /** What the program captured under `name` wrote so far. */
  output(name: string): string {
    return this.#output.get(name) ?? '';
  }

  /** The log file `name` of the folder; empty until it exists. */
  log(name: string): Promise<string> {
    return readFile(join(this.#o.dir!, name), 'utf8').catch(() => '');
  }

  async stopAll(): Promise<void> {
    for (const child of this.#started.splice(0).reverse()) await stopProcess(child);
  }
}
