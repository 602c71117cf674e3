// The operator's certificates: a CA the apiserver trusts (the webhook's caBundle) and the agents
// trust (the CA ConfigMap), the webhook's serving certificate for the names the apiserver dials,
// and each agent's certificate for its node. ECDSA P-256 keys made by node:crypto; the X.509 DER
// is written here because Node can parse certificates but not make them, and the operator's
// image carries no openssl. Only what verifiers check is written (RFC 5280 §4.1, the extensions
// Go's crypto/x509 looks at): version 3, a random positive serial, names as a single CN,
// basicConstraints, keyUsage, extKeyUsage serverAuth (and clientAuth for agents) and subjectAltName.
import { createPrivateKey, generateKeyPairSync, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import { der } from '../common/index.ts';

const { bitString, boolean, integer, objectId, oid, octetString, sequence, tlv } = der;

export interface KeyPair {
  /** PEM certificate. */
  cert: string;
  /** PEM PKCS#8 private key. */
  key: string;
}

export interface Validity {
  notBefore: Date;
  notAfter: Date;
}

const day = 86_400_000;
export const caLifetime = 10 * 365 * day;
export const servingLifetime = 365 * day;
/** A pair is replaced when it has less than this left, so a renewal failure has weeks to be fixed. */
export const renewBefore = 30 * day;
/** Timers of Node cannot wait longer than about 24.8 days; a daily look is plenty. */
const maxWait = day;

/** From `now` for `ms`, with an hour of slack for clocks behind ours. */
export function lifetime(now: Date, ms: number): Validity {
  return { notBefore: new Date(now.getTime() - 3_600_000), notAfter: new Date(now.getTime() + ms) };
}

/** How long a keeper of `certificates` (PEM) may wait before it looks at them again. */
export function nextLook(now: Date, certificates: readonly string[]): number {
  const expires = Math.min(...certificates.map((pem) => new Date(new X509Certificate(pem).validTo).getTime()));
  return Math.max(1000, Math.min(maxWait, expires - renewBefore - now.getTime()));
}

/** A self-signed CA that may sign certificates and nothing else. */
export function makeCa(commonName: string, validity: Validity): KeyPair {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const name = der.commonNameOnly(commonName);
  const cert = certificate({
    issuer: name,
    subject: name,
    validity,
    publicKey,
    signer: privateKey,
    extensions: [
      extension(oid.basicConstraints, true, sequence(boolean(true))),
      // keyCertSign and cRLSign (bits 5 and 6).
      extension(oid.keyUsage, true, bitString(Buffer.from([0x06]), 1)),
    ],
  });
  return { cert, key: pkcs8(privateKey) };
}

/**
 * A serving certificate for `names` (DNS names or IP addresses), signed by `ca`, with the first
 * name as its CN. `clientAuth`: it also proves its holder as a client (an agent's certificate,
 * which both serves its node and dials other agents).
 */
export function makeServing(
  ca: KeyPair,
  names: readonly string[],
  validity: Validity,
  { clientAuth = false }: { clientAuth?: boolean } = {},
): KeyPair {
  if (!names.length) throw new Error('a serving certificate needs at least one name');
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const usages = clientAuth ? [oid.serverAuth, oid.clientAuth] : [oid.serverAuth];
  const cert = leaf(ca, { commonName: names[0]!, names, publicKey, validity, usages });
  return { cert, key: pkcs8(privateKey) };
}

/**
 * An agent's certificate for `publicKey` (from its request): CN the node's name, subjectAltName
 * the node's name and addresses, for TLS servers and clients both (agents dial each other with it).
 */
export function makeAgentCertificate(
  ca: KeyPair,
  publicKey: KeyObject,
  node: string,
  addresses: readonly string[],
  validity: Validity,
): string {
  return leaf(ca, {
    commonName: node,
    names: [node, ...addresses],
    publicKey,
    validity,
    usages: [oid.serverAuth, oid.clientAuth],
  });
}

function leaf(
  ca: KeyPair,
  o: { commonName: string; names: readonly string[]; publicKey: KeyObject; validity: Validity; usages: string[] },
): string {
  const issuer = Buffer.from(new X509Certificate(ca.cert).raw);
  return certificate({
    issuer: subjectOf(issuer),
    subject: der.commonNameOnly(o.commonName),
    validity: o.validity,
    publicKey: o.publicKey,
    signer: ca.key,
    extensions: [
      extension(oid.basicConstraints, true, sequence()),
      // digitalSignature (bit 0): an ECDHE handshake signs with the key.
      extension(oid.keyUsage, true, bitString(Buffer.from([0x80]), 7)),
      extension(oid.extKeyUsage, false, sequence(...o.usages.map(objectId))),
      extension(oid.subjectAltName, false, sequence(...o.names.map(generalName))),
    ],
  });
}

/** Whether `ca` is a CA whose key matches and that stays valid past `until`. */
export function caUsable(ca: KeyPair, until: Date): boolean {
  try {
    const cert = new X509Certificate(ca.cert);
    return cert.ca && cert.checkPrivateKey(createPrivateKey(ca.key)) && new Date(cert.validTo) > until;
  } catch {
    return false;
  }
}

/**
 * Whether `serving` is signed by a usable `ca`, names exactly `names`, and stays valid past
 * `until`. Anything unreadable counts as not usable.
 */
export function usable(ca: KeyPair, serving: KeyPair, names: readonly string[], until: Date): boolean {
  if (!caUsable(ca, until)) return false;
  try {
    const cert = new X509Certificate(serving.cert);
    const sans = (cert.subjectAltName ?? '').split(', ');
    return (
      cert.verify(new X509Certificate(ca.cert).publicKey) &&
      cert.checkPrivateKey(createPrivateKey(serving.key)) &&
      sans.length === names.length &&
      names.every((n) => (isIP(n) ? cert.checkIP(n) : cert.checkHost(n, { wildcards: false }))) &&
      new Date(cert.validTo) > until
    );
  } catch {
    return false;
  }
}

// --- X.509 ---

interface CertificateParts {
  issuer: Buffer;
  subject: Buffer;
  validity: Validity;
  publicKey: KeyObject;
  signer: KeyObject | string;
  extensions: Buffer[];
}

function certificate(parts: CertificateParts): string {
  const algorithm = sequence(objectId(oid.ecdsaWithSha256));
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x40;
  const tbs = sequence(
    tlv(0xa0, integer(Buffer.from([2]))),
    integer(serial),
    algorithm,
    parts.issuer,
    sequence(time(parts.validity.notBefore), time(parts.validity.notAfter)),
    parts.subject,
    parts.publicKey.export({ type: 'spki', format: 'der' }),
    tlv(0xa3, sequence(...parts.extensions)),
  );
  const signature = sign('sha256', tbs, parts.signer);
  return der.toPem('CERTIFICATE', sequence(tbs, algorithm, bitString(signature, 0)));
}

const pkcs8 = (key: KeyObject) => key.export({ type: 'pkcs8', format: 'pem' }) as string;

/** The subject Name of a DER certificate, byte for byte, to be its children's issuer. */
function subjectOf(certificateDer: Buffer): Buffer {
  const tbs = der.childrenOf(der.childrenOf(der.readOne(certificateDer))[0]!);
  // version [0], serial, signature algorithm, issuer, validity, subject
  return tbs[5]!.raw;
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return sequence(objectId(id), ...(critical ? [boolean(true)] : []), octetString(value));
}

function generalName(name: string): Buffer {
  const family = isIP(name);
  if (family === 4) return tlv(0x87, Buffer.from(name.split('.').map(Number)));
  if (family === 6) return tlv(0x87, ipv6Bytes(name));
  return tlv(0x82, Buffer.from(name, 'ascii'));
}

function ipv6Bytes(address: string): Buffer {
  const [head, tail = ''] = address.split('::');
  const groups = (part: string) => (part ? part.split(':') : []);
  const missing = 8 - groups(head!).length - groups(tail).length;
  const all = address.includes('::')
    ? [...groups(head!), ...Array<string>(missing).fill('0'), ...groups(tail)]
    : groups(head!);
  const bytes = Buffer.alloc(16);
  all.forEach((group, i) => bytes.writeUInt16BE(parseInt(group, 16), i * 2));
  return bytes;
}

// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, both to the second in UTC.
function time(date: Date): Buffer {
  const text = date
    .toISOString()
    .replace(/\.\d{3}/, '')
    .replace(/[-:T]/g, '');
  return date.getUTCFullYear() < 2050 ? tlv(0x17, Buffer.from(text.slice(2))) : tlv(0x18, Buffer.from(text));
}
