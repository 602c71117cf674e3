// Command lines of naat's programs: `--help` (or `-h`) prints the usage and exits 0; a command line
// that cannot be followed prints one line naming the problem, then the usage, and exits 2, the
// status of a usage error, never a stack trace. Every program also takes its log level from
// NAAT_LOG_LEVEL here, so that a wrong one stops it the same way.
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { logLevelFromEnvironment, setLogLevel } from './log.ts';

/** Prints the problem and the usage on stderr and exits 2. */
export function usageError(usage: string, problem: string): never {
  console.error(`${problem}\n\n${usage}`);
  process.exit(2);
}

/** parseArgs (strict) with `--help`/`-h` added, and the log level set; exits as the file's header says. */
export function parseCommandLine<T extends ParseArgsConfig>(usage: string, config: T): ReturnType<typeof parseArgs<T>> {
  const withHelp = { ...config, options: { ...config.options, help: { type: 'boolean', short: 'h' } } } as const;
  let parsed: ReturnType<typeof parseArgs<typeof withHelp>>;
  try {
    parsed = parseArgs(withHelp);
  } catch (error) {
    usageError(usage, (error as Error).message);
  }
  if ((parsed.values as { help?: boolean }).help) {
    console.log(usage);
    process.exit(0);
  }
  try {
    setLogLevel(logLevelFromEnvironment());
  } catch (error) {
    usageError(usage, (error as Error).message);
  }
  return parsed as unknown as ReturnType<typeof parseArgs<T>>;
}
