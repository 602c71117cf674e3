// The kernel's side of the fence on failover addresses: a gateway node answers ARP and neighbour
// discovery for a failover address only while its agent keeps saying it owns it. The agent's own
// fence (ownership.ts) gives the addresses up when its Lease lapses, but an agent that is
// SIGKILLed or hangs cannot take them off its interface, and the kernel went on answering for
// them beside the new owner (two MACs for one address on the segment). Here the kernel stops on
// its own: each owned address is allowed for a time the agent keeps extending (its last renewal
// of the Lease plus a lease duration, ownership.ts fenceDeadline); when the agent stops extending
// it, the allowance expires in the kernel and the node goes silent for the address.
//
// Two tables named `naat-fence`, one per family that carries the messages:
// - `arp naat-fence`, output hook: every ARP packet the node sends with a guarded address as sender
//   (replies to who-has, requests it makes while routing from the address, gratuitous ARP sent
//   through the kernel) is dropped unless the address is allowed.
// - `inet naat-fence`, output hook: neighbour solicitations and advertisements the node sends from
//   a guarded address (the kernel answers a solicitation for one of its addresses from that address)
//   are dropped unless it is allowed.
// Each table has a set of the guarded addresses (the gateway's failover addresses, from the
// config) and one of the allowed, whose elements time out (millisecond timeouts; the kernel ignores
// an expired element at lookup, before its garbage collection). Traffic to and from the address is
// left alone: while the neighbours still send to the old node, its kernel forwards the address's
// flows, which is better than dropping them. Messages sent through packet sockets (arping) bypass
// these hooks; only a live agent that just claimed the address sends those.
//
// An allowance is extended by adding the element again: `add`, `delete`, `add` in one transaction,
// which sets the new timeout whatever the kernel version (kernels before 6.10 leave an existing
// element's timeout unchanged on a plain `add`).
import { canonicalAddress } from '../../contracts/gateway/index.ts';
import type { Command } from '../exec.ts';
import { NftSession } from '../nft/session.ts';
import { familyOf, type Family } from './egress.ts';

export const fenceTableName = 'naat-fence';

const tables: Record<Family, { family: 'arp' | 'inet'; type: string; messages: string; sender: string }> = {
  4: { family: 'arp', type: 'ipv4_addr', messages: '', sender: 'arp saddr ip' },
  6: {
    family: 'inet',
    type: 'ipv6_addr',
    messages: 'icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ',
    sender: 'ip6 saddr',
  },
};
const families: Family[] = [4, 6];
const ref = (family: Family) => `${tables[family].family} ${fenceTableName}`;

const elements = (addresses: readonly string[], suffix = '') =>
  `{ ${addresses.map((a) => `${canonicalAddress(a)}${suffix}`).join(', ')} }`;

const byFamily = (addresses: readonly string[]) =>
  families.map((family) => ({ family, addresses: addresses.filter((a) => familyOf(a) === family) }));

/**
 * The commands that make the fence tables guard exactly `guarded`: both tables created when
 * missing, their rule written afresh, the guarded sets replaced. The allowed sets are kept, unless
 * `reset` (an agent that starts owns nothing yet, whatever a former run allowed).
 */
export function renderFence(guarded: readonly string[], { reset = false } = {}): string[] {
  return byFamily(guarded).flatMap(({ family, addresses }) => {
    const { type, messages, sender } = tables[family];
    const table = ref(family);
    return [
      `add table ${table}`,
      `add set ${table} guarded { type ${type}; }`,
      `add set ${table} allowed { type ${type}; flags timeout; }`,
      `add chain ${table} output { type filter hook output priority filter; policy accept; }`,
      `flush chain ${table} output`,
      `add rule ${table} output ${messages}${sender} @guarded ${sender} != @allowed counter drop`,
      `flush set ${table} guarded`,
      ...(reset ? [`flush set ${table} allowed`] : []),
      ...(addresses.length ? [`add element ${table} guarded ${elements(addresses)}`] : []),
    ];
  });
}

/** The commands that allow `addresses` for `forMs` milliseconds from when they run. */
export function renderAllow(addresses: readonly string[], forMs: number): string[] {
  const timeout = ` timeout ${Math.max(1, Math.round(forMs))}ms`;
  return byFamily(addresses)
    .filter(({ addresses }) => addresses.length)
    .flatMap(({ family, addresses }) => [
      `add element ${ref(family)} allowed ${elements(addresses, timeout)}`,
      `delete element ${ref(family)} allowed ${elements(addresses)}`,
      `add element ${ref(family)} allowed ${elements(addresses, timeout)}`,
    ]);
}

/** The commands that take the allowance of `addresses` back at once (allowed or not before). */
export function renderRevoke(addresses: readonly string[]): string[] {
  return byFamily(addresses)
    .filter(({ addresses }) => addresses.length)
    .flatMap(({ family, addresses }) => [
      `add element ${ref(family)} allowed ${elements(addresses)}`,
      `delete element ${ref(family)} allowed ${elements(addresses)}`,
    ]);
}

/** The commands that remove both fence tables, whether they exist or not. */
export function renderFenceRemoval(): string[] {
  return families.flatMap((family) => [`add table ${ref(family)}`, `delete table ${ref(family)}`]);
}

/** The kernel side of the fence; every call is one nftables transaction. */
export interface FailoverFence {
  /** Guards exactly `guarded` (renderFence); `reset` also takes every allowance back. */
  guard(guarded: readonly string[], options?: { reset?: boolean }): Promise<void>;
  /** Allows `addresses` for `forMs` more milliseconds, from now. */
  allow(addresses: readonly string[], forMs: number): Promise<void>;
  /** Takes the allowance of `addresses` back at once. */
  revoke(addresses: readonly string[]): Promise<void>;
  /** Removes the fence tables (a node without failover addresses, or leaving the gateway). */
  remove(): Promise<void>;
  /** Ends what the implementation keeps running; a later call starts it again. */
  close(): Promise<void>;
}

/**
 * Drives one long-lived `nft` (nft/session.ts) through its command (a prefix such as `ip netns
 * exec NAME` runs it in another network namespace): a claim extends or revokes allowances while
 * packets wait, and a process start per transaction was most of its time.
 */
export class ExecFailoverFence implements FailoverFence {
  readonly #nft: NftSession;

  constructor(nft: Command = ['nft']) {
    this.#nft = new NftSession(nft);
  }

  guard(guarded: readonly string[], options: { reset?: boolean } = {}): Promise<void> {
    return this.#run(renderFence(guarded, options));
  }

  async allow(addresses: readonly string[], forMs: number): Promise<void> {
    if (addresses.length) await this.#run(renderAllow(addresses, forMs));
  }

  async revoke(addresses: readonly string[]): Promise<void> {
    if (addresses.length) await this.#run(renderRevoke(addresses));
  }

  remove(): Promise<void> {
    return this.#run(renderFenceRemoval());
  }

  close(): Promise<void> {
    return this.#nft.close();
  }

  async #run(commands: string[]): Promise<void> {
    const { code, stderr } = await this.#nft.run(commands);
    if (code !== 0) throw new Error(`nft failed on the failover fence: ${stderr.trim()}`);
  }
}

/** The fence in memory, allowances with their deadlines on `now`'s clock, for unit tests of the agent. */
export class FakeFailoverFence implements FailoverFence {
  guarded: string[] | undefined;
  readonly allowed = new Map<string, number>();
  readonly #now: () => number;
  constructor(now: () => number = () => performance.now()) {
    this.#now = now;
  }
  async guard(guarded: readonly string[], { reset = false } = {}): Promise<void> {
    this.guarded = guarded.map(canonicalAddress);
    if (reset) this.allowed.clear();
  }
  async allow(addresses: readonly string[], forMs: number): Promise<void> {
    for (const a of addresses) this.allowed.set(canonicalAddress(a), this.#now() + forMs);
  }
  async revoke(addresses: readonly string[]): Promise<void> {
    for (const a of addresses) this.allowed.delete(canonicalAddress(a));
  }
  async remove(): Promise<void> {
    this.guarded = undefined;
    this.allowed.clear();
  }
  async close(): Promise<void> {}
  /** Whether the node answers for `address` now. */
  answers(address: string): boolean {
    const a = canonicalAddress(address);
    return !this.guarded?.includes(a) || (this.allowed.get(a) ?? -Infinity) > this.#now();
  }
}
