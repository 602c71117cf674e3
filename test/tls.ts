// TLS directories for agents started by tests: a CA of the test's own and, for each node, the
// files an agent's --tls-dir holds (ca.crt, tls.crt, tls.key), with the certificate a node gets in
// a cluster: CN and DNS SAN the node's name, an IP SAN for each of its addresses, serverAuth and
// clientAuth (dataplane/link-tls.ts).
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { lifetime, makeCa, makeServing, type KeyPair } from '../operator/certificates.ts';

const day = 86_400_000;

/** A CA valid for a day (from an hour ago). */
export function makeTestCa(name = 'naat-test-ca'): KeyPair {
  return makeCa(name, lifetime(new Date(), day));
}

/** A node's agent certificate from `ca`: CN and DNS SAN `node`, IP SANs `addresses`, both TLS uses. */
export function nodeCertificate(ca: KeyPair, node: string, addresses: readonly string[]): KeyPair {
  return makeServing(ca, [node, ...addresses], lifetime(new Date(), day), { clientAuth: true });
}

/**
 * Writes (or replaces) `dir` as a node's --tls-dir: the bundle of `ca` (and `also`, for a CA
 * rotation) and the node's pair. Each file is replaced by a rename, as a mounted Secret changes,
 * so a reader sees a whole file, old or new.
 */
export function writeTlsDir(
  dir: string,
  ca: KeyPair,
  node: string,
  addresses: readonly string[],
  { pair = nodeCertificate(ca, node, addresses), also = [] as KeyPair[] } = {},
): KeyPair {
  mkdirSync(dir, { recursive: true });
  const files = { 'ca.crt': [ca, ...also].map((c) => c.cert).join(''), 'tls.crt': pair.cert, 'tls.key': pair.key };
  for (const [name, text] of Object.entries(files)) {
    writeFileSync(join(dir, `.${name}.new`), text, { mode: 0o600 });
    renameSync(join(dir, `.${name}.new`), join(dir, name));
  }
  return pair;
}
