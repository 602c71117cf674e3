// `npm run setup [-- COMMAND ARGS…]`: sets up the machine for the tests and the lab (setup.ts),
// then runs COMMAND, if given, with the Go and the kubectl that setup chose on the PATH. `npm test` and
// `npm run lab` run the same setup first; CI runs this.
import { spawnSync } from 'node:child_process';
import { parseCommandLine } from '../../common/index.ts';
import { setUpMachine } from './setup.ts';

const usage = `usage: npm run setup [-- COMMAND ARGS…]
  installs the Debian packages the tests and the lab need (as root), checks Go and kubectl (or
  builds kubectl with the test control plane), then runs COMMAND, if given, with a Go the pinned
  modules accept and a kubectl on the PATH`;
// Options end at COMMAND: what follows it is COMMAND's.
const argv = process.argv.slice(2);
const at = argv.findIndex((arg) => !arg.startsWith('-'));
parseCommandLine(usage, { args: at < 0 ? argv : argv.slice(0, at), options: {} });
const [command, ...args] = at < 0 ? [] : argv.slice(at);
try {
  await setUpMachine();
} catch (error) {
  console.error((error as Error).message);
  process.exit(1);
}
if (command) process.exit(spawnSync(command, args, { stdio: 'inherit' }).status ?? 1);
