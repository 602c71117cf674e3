// Rendezvous (highest random weight) hashing: every node that knows the same key and candidates
// picks the same candidate, with nothing shared between them, and when a candidate goes only the
// keys that were on it move.
import { createHash } from 'node:crypto';

const weight = (key: string, candidate: string) =>
  createHash('sha256').update(key).update('\0').update(candidate).digest().readBigUInt64BE(0);

/** The candidate of highest weight for `key`; undefined when there is none. */
export function rendezvous(key: string, candidates: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestWeight = -1n;
  for (const candidate of candidates) {
    const w = weight(key, candidate);
    if (w > bestWeight || (w === bestWeight && best !== undefined && candidate < best)) {
      best = candidate;
      bestWeight = w;
    }
  }
  return best;
}
