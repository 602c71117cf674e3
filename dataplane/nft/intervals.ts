// Addresses as numbers, for the intervals of interval sets and maps: the compiler of the rules
// cuts the address space at these numbers, the model writes an interval the way nft lists it,
// and the tracer finds the interval that holds an address.
import { addressToBytes, bytesToAddress } from '../../common/index.ts';

/** An inclusive interval of numbers: addresses of one family, or ports. */
export type Interval = readonly [bigint, bigint];

/** IPv4 or IPv6 (the model's Family, which imports this module). */
type Family = 4 | 6;

export const addressBits = (f: Family) => (f === 4 ? 32 : 128);

/** The address as a number of its family's width. */
export function addressValue(address: string): bigint {
  if (!address.includes(':'))
    return BigInt(address.split('.').reduce((value, octet) => value * 256 + Number(octet), 0));
  return [...addressToBytes(address)].reduce((value, byte) => (value << 8n) | BigInt(byte), 0n);
}

/** The address of a number, in the form nft lists it. */
export function addressText(value: bigint, f: Family): string {
  const length = addressBits(f) / 8;
  return bytesToAddress(Uint8Array.from({ length }, (_, i) => Number((value >> BigInt(8 * (length - 1 - i))) & 0xffn)));
}

/** The addresses of a prefix (`a/n`, or a single address). */
export function prefixInterval(prefix: string, f: Family): Interval {
  const [address, length] = prefix.split('/');
  const host = (1n << BigInt(addressBits(f) - (length === undefined ? addressBits(f) : Number(length)))) - 1n;
  const start = addressValue(address!) & ~host;
  return [start, start | host];
}

/** Every address of the family. */
export const allAddresses = (f: Family): Interval => [0n, (1n << BigInt(addressBits(f))) - 1n];

/**
 * An interval of addresses as nft lists it in an interval set or map: a single address, a prefix
 * when the interval is one, or `first-last`.
 */
export function intervalText([first, last]: Interval, f: Family): string {
  if (first === last) return addressText(first, f);
  const size = last - first + 1n;
  const bits = size.toString(2).length - 1;
  if (size === 1n << BigInt(bits) && (first & (size - 1n)) === 0n) {
    return `${addressText(first, f)}/${addressBits(f) - bits}`;
  }
  return `${addressText(first, f)}-${addressText(last, f)}`;
}
