/** The fuzz input read as JSON text, undefined when it is not JSON (which no target looks further at). */
export function jsonOf(data: Buffer): unknown {
  try {
    return JSON.parse(data.toString('utf8'));
  } catch {
    return undefined;
  }
}
