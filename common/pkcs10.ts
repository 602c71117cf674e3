// PKCS#10 certification requests (RFC 2986), as much as naat's agents send and its signer reads:
// a subject, an ECDSA P-256 public key and the request's signature with it (ecdsa-with-SHA256),
// no attributes. The signer takes the names it certifies from elsewhere, so the reader returns
// only the subject and the key, after checking that the request is signed by that key (proof
// that the requester holds the private key).
import { createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import {
  childrenOf,
  commonNameOnly,
  DerError,
  fromPem,
  integer,
  objectId,
  oid,
  readBitString,
  readObjectId,
  readOne,
  sequence,
  sequenceOf,
  tag,
  tlv,
  bitString,
  toPem,
} from './der.ts';

const pemLabel = 'CERTIFICATE REQUEST';

/** A request for `commonName`, signed with `privateKey` (EC P-256), as PEM. */
export function certificationRequest(commonName: string, publicKey: KeyObject, privateKey: KeyObject): string {
  const info = sequence(
    integer(Buffer.from([0])),
    commonNameOnly(commonName),
    publicKey.export({ type: 'spki', format: 'der' }),
    // attributes [0] IMPLICIT SET OF Attribute: none.
    tlv(0xa0, Buffer.alloc(0)),
  );
  const algorithm = sequence(objectId(oid.ecdsaWithSha256));
  return toPem(pemLabel, sequence(info, algorithm, bitString(sign('sha256', info, privateKey), 0)));
}

export interface CertificationRequest {
  /** The subject's attributes in order, as (OID, text). */
  subject: Array<{ type: string; value: string }>;
  publicKey: KeyObject;
}

/** Thrown for a request that cannot be read or whose signature does not hold; the message says why. */
export class RequestError extends Error {}

/** Reads a PEM request and checks its signature; throws a RequestError naming what is wrong. */
export function parseCertificationRequest(pem: string): CertificationRequest {
  try {
    return parse(fromPem(pemLabel, pem));
  } catch (error) {
    if (error instanceof RequestError) throw error;
    if (error instanceof DerError) throw new RequestError(`malformed certification request: ${error.message}`);
    throw new RequestError(`unreadable certification request: ${(error as Error).message}`);
  }
}

function parse(der: Buffer): CertificationRequest {
  const [info, algorithm, signatureValue] = sequenceOf(readOne(der), 'the request', 3);
  const [version, subject, spki] = sequenceOf(info, 'certificationRequestInfo', 4);
  if (version!.tag !== tag.integer || version!.value.length !== 1 || version!.value[0] !== 0) {
    throw new RequestError('the request is not of version 1 (0)');
  }
  const algorithmId = readObjectId(sequenceOf(algorithm, 'signatureAlgorithm', 1)[0], 'the signature algorithm');
  if (algorithmId !== oid.ecdsaWithSha256) {
    throw new RequestError(`signature algorithm ${algorithmId} is not supported: only ecdsa-with-SHA256`);
  }
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey({ key: spki!.raw, format: 'der', type: 'spki' });
  } catch (error) {
    throw new RequestError(`the request's public key cannot be read: ${(error as Error).message}`);
  }
  const signature = readBitString(signatureValue, 'the signature');
  let valid = false;
  try {
    valid = verify('sha256', info!.raw, publicKey, signature);
  } catch {
    valid = false;
  }
  if (!valid) throw new RequestError("the request's signature does not verify with its public key");
  return { subject: names(subject!), publicKey };
}

const stringTags: ReadonlySet<number> = new Set([tag.utf8String, tag.printableString, tag.ia5String]);

function names(subject: ReturnType<typeof readOne>): CertificationRequest['subject'] {
  return sequenceOf(subject, 'the subject').flatMap((rdn) => {
    if (rdn.tag !== tag.set) throw new RequestError('a subject name part is not a SET');
    return childrenOf(rdn).map((attribute) => {
      const [type, value] = sequenceOf(attribute, 'a subject attribute', 2);
      if (!stringTags.has(value!.tag)) throw new RequestError('a subject attribute is not a string');
      return { type: readObjectId(type, 'a subject attribute type'), value: value!.value.toString('utf8') };
    });
  });
}
