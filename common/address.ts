// Addresses travel as bytes on the NAA protocol (4 for IPv4, 16 for IPv6, empty for "the pod's
// own"); components speak text. These convert between the two and reject what is neither.
import { isIPv4, isIPv6 } from 'node:net';

export function addressToBytes(text: string): Buffer {
  if (text === '') return Buffer.alloc(0);
  if (isIPv4(text)) return Buffer.from(text.split('.').map(Number));
  if (!isIPv6(text)) throw new Error(`"${text}" is not an IP address`);
  const [head, tail] = text.includes('::') ? text.split('::') : [text, undefined];
  const parse = (part: string | undefined) => (part ? part.split(':') : []).flatMap(group);
  const front = parse(head);
  const back = parse(tail);
  const zeros = tail === undefined ? [] : new Array<number>(16 - front.length - back.length).fill(0);
  return Buffer.from([...front, ...zeros, ...back]);
}

// An IPv6 group, or an embedded IPv4 address at the end (::ffff:192.0.2.1).
function group(part: string): number[] {
  if (part.includes('.')) return [...addressToBytes(part)];
  const value = parseInt(part, 16);
  return [value >> 8, value & 0xff];
}

/** Text for 4 or 16 bytes (IPv6 in RFC 5952 form); '' for none; throws on any other length. */
export function bytesToAddress(bytes: Uint8Array): string {
  if (bytes.length === 0) return '';
  if (bytes.length === 4) return bytes.join('.');
  if (bytes.length !== 16) throw new Error(`an address has 4 or 16 bytes, not ${bytes.length}`);
  const groups = Array.from({ length: 8 }, (_, i) => ((bytes[2 * i]! << 8) | bytes[2 * i + 1]!).toString(16));
  let best = { start: -1, length: 1 };
  for (let i = 0; i < 8; i++) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > best.length) best = { start: i, length: j - i };
  }
  if (best.start < 0) return groups.join(':');
  return `${groups.slice(0, best.start).join(':')}::${groups.slice(best.start + best.length).join(':')}`;
}
