// `npm run fuzz`: runs the fuzz targets (fuzzer.ts) for longer than the tests do, printing
// libFuzzer's progress; exits 1 at the first target that crashes, naming the input.
import { parseCommandLine, usageError } from '../../common/index.ts';
import { fuzzTargets, runFuzzer } from './fuzzer.ts';

const targets = await fuzzTargets();
const usage = `usage: npm run fuzz [-- [TARGET…] [--seconds N] [--keep]]

Replays each target's corpus (test/fuzz/corpus/TARGET), then fuzzes it for N seconds (60 by
default); every target when none is named. Targets: ${targets.join(', ')}.

  --seconds N   how long each target is fuzzed after its corpus is replayed
  --keep        keep the inputs that reach new code, and say where`;

const { positionals, values } = parseCommandLine(usage, {
  allowPositionals: true,
  options: { seconds: { type: 'string', default: '60' }, keep: { type: 'boolean', default: false } },
});
const seconds = Number(values.seconds);
if (!Number.isInteger(seconds) || seconds < 1) usageError(usage, '--seconds takes a whole number above 0');
const unknown = positionals.filter((t) => !targets.includes(t));
if (unknown.length) usageError(usage, `Unknown fuzz target ${unknown.join(', ')}`);

for (const target of positionals.length ? positionals : targets) {
  console.log(`Fuzzing ${target} for ${seconds} s`);
  const result = await runFuzzer(target, { seconds, keep: values.keep, print: true });
  if (result.code !== 0) {
    console.error(result.crash ? `${target} crashed on the input in ${result.crash.file}` : `${target} failed`);
    process.exit(1);
  }
  if (result.found) console.log(`The inputs of ${target} that reached new code are in ${result.found}`);
}
