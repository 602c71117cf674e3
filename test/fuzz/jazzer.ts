// One fuzzing process: `node test/fuzz/jazzer.ts TARGET_FILE [CORPUS_DIR…] -- [LIBFUZZER_FLAG…]`
// runs the `fuzz` function of TARGET_FILE under Jazzer.js (libFuzzer) in synchronous mode, with
// the project's own modules instrumented for coverage, and exits with Jazzer.js's code (0: no
// finding). main.ts starts it; it is a process of its own because libFuzzer ends the process at
// the first crash.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import Module, { createRequire, register } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type * as Jazzer from '@jazzer.js/core';
import { forOlderGlibc, lacksC23 } from './glibc.ts';

const require = createRequire(import.meta.url);

/** Node's CommonJS loader, as far as priming its cache takes. */
interface CommonJsLoader {
  new (id: string): { filename: string; loaded: boolean; exports: unknown };
  _cache: Record<string, unknown>;
}

/**
 * Loads libFuzzer's addon into the CommonJS cache under its own path, from a copy made loadable
 * (glibc.ts) when this glibc is older than the one it was built against.
 */
function loadAddon(): void {
  const core = require.resolve('@jazzer.js/core');
  const fuzzer = dirname(createRequire(core).resolve('@jazzer.js/fuzzer'));
  const addon = join(fuzzer, '..', 'prebuilds', `fuzzer-${process.platform}-${process.arch}.node`);
  const header = process.report.getReport() as { header?: { glibcVersionRuntime?: string } };
  if (!lacksC23(header.header?.glibcVersionRuntime)) return;
  const image = readFileSync(addon);
  const patched = forOlderGlibc(image);
  if (!patched) return;
  const copy = join(tmpdir(), 'naat-jazzer', `${createHash('sha256').update(image).digest('hex')}.node`);
  // Written aside and renamed into place: a fuzzer that runs meanwhile keeps the copy it mapped.
  mkdirSync(dirname(copy), { recursive: true });
  writeFileSync(`${copy}.${process.pid}`, patched);
  renameSync(`${copy}.${process.pid}`, copy);
  const loader = Module as unknown as CommonJsLoader;
  const module = new loader(addon);
  module.filename = addon;
  process.dlopen(module, copy);
  module.loaded = true;
  loader._cache[addon] = module;
}

const separator = process.argv.indexOf('--');
const [target, ...corpus] = process.argv.slice(2, separator < 0 ? undefined : separator);
const flags = separator < 0 ? [] : process.argv.slice(separator + 1);
if (!target) throw new Error('usage: jazzer.ts TARGET_FILE [CORPUS_DIR…] -- [LIBFUZZER_FLAG…]');

loadAddon();
register('./strip-types.ts', import.meta.url);
const jazzer = require('@jazzer.js/core') as typeof Jazzer;
const options = new jazzer.OptionsManager(jazzer.OptionSource.DefaultCLIOptions).merge(
  {
    fuzzTarget: pathToFileURL(resolve(target)).href,
    fuzzerOptions: [...corpus, ...flags],
    sync: true,
    // Only the project's own code is instrumented: its branches are what the fuzzer is to explore.
    includes: [join(import.meta.dirname, '..', '..') + '/'],
    excludes: ['/node_modules/', '/test/fuzz/'],
  },
  jazzer.OptionSource.CommandLineArguments,
);
const result = await jazzer.startFuzzing(options);
process.exit(result.returnCode);
