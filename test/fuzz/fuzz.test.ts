// The short fuzzing run of the test suite: each target replays its corpus, then is fuzzed for a
// bounded time (fuzzer.ts). A crash fails the test with the input that caused it (base64) and
// libFuzzer's report of the exception. `npm run fuzz` runs them for longer.
import { fuzzTargets, runFuzzer } from './fuzzer.ts';

const seconds = 10;

test.each(await fuzzTargets())(
  `fuzz target %s holds its invariants for its corpus and ${seconds} s of new inputs`,
  async (target) => {
    const result = await runFuzzer(target, { seconds });
    const report = result.crash
      ? `crashed on ${result.crash.input.toString('base64')} (${result.crash.file}):\n${result.output.slice(-4000)}`
      : result.output.slice(-4000);
    expect({ code: result.code, report: result.code === 0 ? '' : report }).toEqual({ code: 0, report: '' });
    // libFuzzer saw the edges of the instrumented modules: without them it reports no coverage at
    // all (and explores nothing), where each of these targets reaches over a hundred edges.
    expect(Number(/DONE\s+cov: (\d+)/.exec(result.output)?.[1])).toBeGreaterThan(0);
  },
  (seconds + 120) * 1000,
);
