// How every naat process reports what it did: Kubernetes log style (a capitalised, past-tense
// message that names the object kind, then key/value fields), one JSON object a line on stdout.

export interface Logger {
  info(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** Writes one JSON object a line to stdout. */
export const jsonLogger: Logger = {
  info: (msg, fields) => console.log(JSON.stringify({ ts: new Date().toISOString(), level: 'info', msg, ...fields })),
  error: (msg, fields) => console.log(JSON.stringify({ ts: new Date().toISOString(), level: 'error', msg, ...fields })),
};

/** The text of a thrown value, for a log field. */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
