// The project's test command (`npm test`): runs jest on the pinned Node runtime with ESM support
// and prints a plain `N passed, N failed` line, counting suites that failed to run as failures.
// Arguments are passed to jest, e.g. `npm test -- --selectProjects unit`. Unless only the unit
// project runs, the machine is set up first (test/setup/: Debian packages, Go, kubectl).
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { testsNeedMachine } from './setup/requirements.ts';
import { setUpMachine } from './setup/setup.ts';

interface JestResult {
  numPassedTests: number;
  numFailedTests: number;
  numRuntimeErrorTestSuites: number;
  numTotalTests: number;
}

if (testsNeedMachine(process.argv.slice(2))) {
  try {
    await setUpMachine();
  } catch (error) {
    console.error((error as Error).message);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
}

const jest = createRequire(import.meta.url).resolve('jest/bin/jest');
const dir = await mkdtemp(join(tmpdir(), 'naat-jest-'));
const output = join(dir, 'result.json');
const code = await new Promise<number>((resolve) => {
  const child = spawn(
    process.execPath,
    [
      '--experimental-vm-modules',
      '--no-warnings=ExperimentalWarning',
      jest,
      '--json',
      `--outputFile=${output}`,
      ...process.argv.slice(2),
    ],
    { stdio: 'inherit' },
  );
  child.on('exit', (status, signal) => resolve(status ?? (signal ? 1 : 0)));
});

let result: JestResult | undefined;
try {
  result = JSON.parse(await readFile(output, 'utf8')) as JestResult;
} catch {
  result = undefined;
}
await rm(dir, { recursive: true, force: true });
const passed = result?.numPassedTests ?? 0;
const failed = (result?.numFailedTests ?? 0) + (result?.numRuntimeErrorTestSuites ?? 0) + (result ? 0 : 1);
console.log(`${passed} passed, ${failed} failed`);
process.exit(code !== 0 || failed > 0 ? 1 : 0);
