// The few DER (ITU-T X.690) values naat writes and reads in certificates and certification
// requests: Node can parse certificates but neither write them nor parse requests, and the images
// carry no openssl. The writer makes definite-length values up to 64 KiB; the reader takes any
// input and throws a DerError naming what is wrong, never reading past its buffer.

export class DerError extends Error {}

export const tag = {
  boolean: 0x01,
  integer: 0x02,
  bitString: 0x03,
  octetString: 0x04,
  objectId: 0x06,
  utf8String: 0x0c,
  printableString: 0x13,
  ia5String: 0x16,
  utcTime: 0x17,
  generalizedTime: 0x18,
  sequence: 0x30,
  set: 0x31,
} as const;

// --- writer ---

export function tlv(tagByte: number, value: Buffer): Buffer {
  const n = value.length;
  if (n > 0xffff) throw new DerError('DER value too long');
  const length =
    n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tagByte]), length, value]);
}

export const sequence = (...items: Buffer[]) => tlv(tag.sequence, Buffer.concat(items));
export const set = (...items: Buffer[]) => tlv(tag.set, Buffer.concat(items));
export const boolean = (value: boolean) => tlv(tag.boolean, Buffer.from([value ? 0xff : 0]));
export const integer = (bytes: Buffer) =>
  tlv(tag.integer, bytes[0]! & 0x80 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes);
export const bitString = (bytes: Buffer, unusedBits: number) =>
  tlv(tag.bitString, Buffer.concat([Buffer.from([unusedBits]), bytes]));
export const octetString = (bytes: Buffer) => tlv(tag.octetString, bytes);
export const utf8String = (text: string) => tlv(tag.utf8String, Buffer.from(text, 'utf8'));

export function objectId(dotted: string): Buffer {
  const [a, b, ...rest] = dotted.split('.').map(Number);
  const bytes: number[] = [];
  for (const arc of [a! * 40 + b!, ...rest]) {
    const base128 = [arc & 0x7f];
    for (let v = arc >> 7; v > 0; v >>= 7) base128.unshift((v & 0x7f) | 0x80);
    bytes.push(...base128);
  }
  return tlv(tag.objectId, Buffer.from(bytes));
}

/** A Name that is a single common name (RFC 5280 §4.1.2.4), as UTF8String. */
export function commonNameOnly(commonName: string): Buffer {
  return sequence(set(sequence(objectId(oid.commonName), utf8String(commonName))));
}

export const oid = {
  commonName: '2.5.4.3',
  ecPublicKey: '1.2.840.10045.2.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

export function toPem(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return [`-----BEGIN ${label}-----`, ...lines, `-----END ${label}-----`, ''].join('\n');
}

/** The DER inside the one PEM block labelled `label`; throws when there is not exactly one. */
export function fromPem(label: string, pem: string): Buffer {
  const blocks = [...pem.matchAll(new RegExp(`-----BEGIN ${label}-----([^-]*)-----END ${label}-----`, 'g'))];
  if (blocks.length !== 1) throw new DerError(`expected one PEM block "${label}", found ${blocks.length}`);
  const body = blocks[0]![1]!.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body)) throw new DerError(`the PEM block "${label}" is not base64`);
  return Buffer.from(body, 'base64');
}

// --- reader ---

export interface DerValue {
  tag: number;
  /** The whole value, tag and length included: what a signature covers. */
  raw: Buffer;
  /** The contents. */
  value: Buffer;
}

/** The one value `der` holds; throws when it is cut short, has bytes after it, or is not DER-shaped. */
export function readOne(der: Buffer): DerValue {
  const value = readAt(der, 0);
  if (value.raw.length !== der.length) throw new DerError(`${der.length - value.raw.length} bytes after the value`);
  return value;
}

/** The elements of a constructed value (a SEQUENCE or SET, or a constructed tagged value). */
export function childrenOf(parent: DerValue): DerValue[] {
  if (!(parent.tag & 0x20)) throw new DerError(`tag 0x${parent.tag.toString(16)} is not a constructed value`);
  const items: DerValue[] = [];
  for (let at = 0; at < parent.value.length;) {
    const item = readAt(parent.value, at);
    items.push(item);
    at += item.raw.length;
  }
  return items;
}

/** The elements of a SEQUENCE, checked to be one, and to be at least `min` of them. */
export function sequenceOf(value: DerValue | undefined, what: string, min = 0): DerValue[] {
  if (!value || value.tag !== tag.sequence) throw new DerError(`${what} is not a SEQUENCE`);
  const items = childrenOf(value);
  if (items.length < min) throw new DerError(`${what} has ${items.length} elements, expected at least ${min}`);
  return items;
}

export function readObjectId(value: DerValue | undefined, what: string): string {
  if (!value || value.tag !== tag.objectId || !value.value.length) {
    throw new DerError(`${what} is not an OBJECT IDENTIFIER`);
  }
  // Base-128 subidentifiers, the last byte of each without the high bit; the first holds two arcs.
  const subidentifiers: number[] = [];
  let arc = 0;
  for (const [i, byte] of value.value.entries()) {
    arc = arc * 128 + (byte & 0x7f);
    if (arc > Number.MAX_SAFE_INTEGER / 128) throw new DerError(`${what} has an arc too large`);
    if (!(byte & 0x80)) {
      subidentifiers.push(arc);
      arc = 0;
    } else if (i === value.value.length - 1) throw new DerError(`${what} ends inside an arc`);
  }
  const [first, ...rest] = subidentifiers as [number, ...number[]];
  const top = Math.min(2, Math.floor(first / 40));
  return [top, first - top * 40, ...rest].join('.');
}

/** The bytes of a BIT STRING whose bit count is a multiple of eight (keys and signatures). */
export function readBitString(value: DerValue | undefined, what: string): Buffer {
  if (!value || value.tag !== tag.bitString || value.value[0] !== 0)
    throw new DerError(`${what} is not a whole-byte BIT STRING`);
  return value.value.subarray(1);
}

function readAt(der: Buffer, at: number): DerValue {
  if (at + 2 > der.length) throw new DerError('a value is cut short');
  const tagByte = der[at]!;
  if ((tagByte & 0x1f) === 0x1f) throw new DerError('multi-byte tags are not supported');
  const first = der[at + 1]!;
  let start = at + 2;
  let length = first;
  if (first & 0x80) {
    const octets = first & 0x7f;
    if (octets === 0) throw new DerError('indefinite lengths are not DER');
    if (octets > 3) throw new DerError('a length of more than three bytes');
    if (start + octets > der.length) throw new DerError('a length is cut short');
    length = 0;
    for (let i = 0; i < octets; i++) length = length * 256 + der[start + i]!;
    start += octets;
  }
  if (start + length > der.length) throw new DerError('a value is longer than what holds it');
  return { tag: tagByte, raw: der.subarray(at, start + length), value: der.subarray(start, start + length) };
}
