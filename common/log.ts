// How every naat process reports what it did: Kubernetes log style (a capitalised, past-tense
// message that names the object kind, then key/value fields), one JSON object a line on stdout.
// A line is written when something changed, not on every sync or retry: routine repeats are
// debug, and a problem that recurs is logged when it starts, changes and clears (ProblemLog).

export const logLevels = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof logLevels)[number];

/**
 * The variable that sets the least severe level a process logs. The operator reads `logLevel`
 * from its configuration and passes it on in this variable to the agents and sidecars it starts.
 */
export const logLevelVariable = 'NAAT_LOG_LEVEL';

export interface Logger {
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export function isLogLevel(text: string): text is LogLevel {
  return (logLevels as readonly string[]).includes(text);
}

/** The level the environment asks for (info when unset); an unknown one is an error naming the variable. */
export function logLevelFromEnvironment(env: NodeJS.ProcessEnv = process.env): LogLevel {
  const text = env[logLevelVariable] ?? 'info';
  if (!isLogLevel(text)) {
    throw new Error(`${logLevelVariable} is "${text}"; it must be one of ${logLevels.join(', ')}`);
  }
  return text;
}

/** A logger that writes the lines at or above `level()` with `write`. */
export function jsonLines(level: () => LogLevel, write: (line: string) => void): Logger {
  const at = (severity: LogLevel) => (msg: string, fields?: Record<string, unknown>) => {
    if (logLevels.indexOf(severity) < logLevels.indexOf(level())) return;
    write(JSON.stringify({ ts: new Date().toISOString(), level: severity, msg, ...fields }));
  };
  return { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

let processLevel: LogLevel = 'info';

/** Sets the level of jsonLogger, once at start-up. */
export function setLogLevel(level: LogLevel): void {
  processLevel = level;
}

/** The process's logger: one JSON object a line on stdout, at the level setLogLevel chose. */
export const jsonLogger: Logger = jsonLines(
  () => processLevel,
  (line) => console.log(line),
);

/**
 * A problem that recurs on every attempt (a sync while a link is down, a report while the
 * apiserver is away) logs one error when it starts or its text changes and one info line when
 * it clears; the attempts in between are debug lines.
 */
export class ProblemLog {
  readonly #log: Logger;
  readonly #message: string;
  readonly #cleared: string;
  readonly #current = new Map<string, string>();

  constructor(log: Logger, message: string, cleared: string) {
    this.#log = log;
    this.#message = message;
    this.#cleared = cleared;
  }

  /** Records the outcome of an attempt for `key`: its problem, or undefined when it went well. */
  report(key: string, problem: string | undefined, fields: Record<string, unknown> = {}): void {
    const before = this.#current.get(key);
    if (problem === undefined) {
      if (before === undefined) return;
      this.#current.delete(key);
      this.#log.info(this.#cleared, { ...fields, after: before });
      return;
    }
    this.#current.set(key, problem);
    (before === problem ? this.#log.debug : this.#log.error)(this.#message, { ...fields, error: problem });
  }
}

/** The text of a thrown value, for a log field. */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
