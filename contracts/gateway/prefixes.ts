// Address arithmetic for sets of prefixes: the kernel rejects an interval set whose elements
// overlap, and the packet tracer needs containment.
import { addressToBytes, bytesToAddress } from '../../common/index.ts';
import { parsePrefix, type Prefix } from './config.ts';

function toBigInt(address: string): bigint {
  return [...addressToBytes(address)].reduce((value, byte) => (value << 8n) | BigInt(byte), 0n);
}

function bounds(prefix: Prefix): [bigint, bigint] {
  const bits = prefix.family === 4 ? 32 : 128;
  const host = (1n << BigInt(bits - prefix.length)) - 1n;
  const start = toBigInt(prefix.address) & ~host;
  return [start, start | host];
}

/** The family and the first and last address of a prefix (a CIDR or a single address); undefined when it is neither. */
export function prefixRange(prefix: string): { family: 4 | 6; first: bigint; last: bigint } | undefined {
  const p = parsePrefix(prefix);
  if (!p) return undefined;
  const [first, last] = bounds(p);
  return { family: p.family, first, last };
}

/** Whether `address` lies in `prefix` (a CIDR or a single address) of the same family. */
export function contains(prefix: string, address: string): boolean {
  const p = prefixRange(prefix);
  const a = parsePrefix(address);
  if (!p || !a || p.family !== a.family) return false;
  const value = toBigInt(a.address);
  return value >= p.first && value <= p.last;
}

/**
 * The prefixes of one family, without duplicates and without those inside another, in a stable
 * order; host prefixes are written as bare addresses, the way nft lists them.
 */
export function normalisePrefixes(prefixes: string[], family: 4 | 6): string[] {
  const parsed = prefixes
    .map(parsePrefix)
    .filter((p): p is Prefix => p !== undefined && p.family === family)
    .map((p) => ({ p, range: bounds(p) }))
    .sort((a, b) => (a.range[0] < b.range[0] ? -1 : a.range[0] > b.range[0] ? 1 : a.p.length - b.p.length));
  const kept: typeof parsed = [];
  for (const entry of parsed) {
    const last = kept.at(-1);
    if (last && entry.range[1] <= last.range[1]) continue;
    kept.push(entry);
  }
  const max = family === 4 ? 32 : 128;
  return kept.map(({ p, range }) => {
    const start = canonical(range[0], family);
    return p.length === max ? start : `${start}/${p.length}`;
  });
}

/** An address in the form nft lists it (IPv6 as RFC 5952, without an embedded dotted IPv4 part). */
export function canonicalAddress(address: string): string {
  return bytesToAddress(addressToBytes(address));
}

function canonical(value: bigint, family: 4 | 6): string {
  const length = family === 4 ? 4 : 16;
  return bytesToAddress(Uint8Array.from({ length }, (_, i) => Number((value >> BigInt(8 * (length - 1 - i))) & 0xffn)));
}
