// The failover addresses a gateway node holds on its uplinks' interfaces: which ones it should hold
// (pure: config + owned addresses), what to add and remove to get there (pure), and the thin shell
// that adds, removes and announces them with `ip`, `arping` and `ndptool`.
//
// An address is added as a host address (IPv4 /32, IPv6 /128 `nodad noprefixroute`, deprecated),
// so that it moves no route of the main table, is usable at once, and is no source address the
// kernel picks for other traffic. naat marks its own with the address
// metric 7700 (IFA_RT_PRIORITY, which `ip -j address` reports as `metric`): a restarted agent
// finds the addresses it added and removes those it does not own, and never touches another's.
// iproute2 6.1 (Debian 12) cannot set an address's protocol (IFA_PROTO), and IPv6 addresses have
// no labels, so the metric is the one mark both families keep.
//
// Announcing a claim, as measured in network namespaces (kernel 6.18, iputils 20221126, iproute2
// 6.1, libndp 1.8): an ISP router on one bridge with both gateway nodes, holding a REACHABLE or STALE
// neighbour entry for the address at the old owner's MAC, with the old owner's address removed.
// - IPv4: `arping -U -I <uplink> <address>` (an unsolicited ARP request, sender = target = the
//   address) moved the ISP's existing entry to the new owner's MAC (STALE) at once, also within
//   the entry's locktime (1 s after it was confirmed); `-A` (an ARP reply) and `-U -s <address>`
//   did the same. Without an announcement the entry kept the old MAC. arping waits a second after
//   its last probe before it exits, whatever `-w` says (`-i` takes whole seconds), so the claim goes
//   on once arping has started (its first probe leaves at once; measured below) and a second
//   probe follows a second later for a lost first one; a failure is logged.
// - IPv6: the kernel sends no unsolicited neighbour advertisement when a `nodad` address is added,
//   with `ndisc_notify` at 1 on the uplink, on `all`, or both (no NA reached the ISP). It sends one
//   with `ndisc_notify` on `all` when DAD completes (an address added without `nodad`: the ISP
//   had moved 2.7 s later, not yet 0.2 s after; the address is unusable meanwhile), and with
//   `ndisc_notify` for every address of a device whose MAC is set (setting it to the same value
//   worked on veth; other drivers may refuse a live change or reset the link). What works:
//   `ndptool -t na -U -i <uplink> -T <address> send` (Debian's libndp-tools 1.8) sends an
//   unsolicited NA with the override flag to all nodes, which moved the ISP's entry to the new
//   owner's MAC (STALE) at once, also within the entry's locktime, in 5 ms. (Also seen working,
//   with iproute2 and ping alone: deleting the node's neighbour entry for the next hop and pinging
//   it from the address, which makes the kernel solicit it with the address as source; only the
//   next hop learns that way.)
// - Through this module, on the same namespaces: add + announce resolved after 7–11 ms (IPv4)
//   and 13 ms (IPv6), and the ISP's entry pointed at the new owner 14–16 ms and 19 ms after the
//   start (polled with one `ip neigh` process at a time, about 5 ms each).
import { spawn } from 'node:child_process';
import { canonicalAddress, type CompiledUplink, type GatewayConfig } from '../../contracts/gateway/index.ts';
import type { Logger } from '../../common/index.ts';
import { exec, type Command } from '../exec.ts';
import { familyOf, localEgressAddresses, type Family } from './egress.ts';

/** The address metric that marks an address as one of naat's failover addresses. */
export const failoverAddressMetric = 7700;

export interface HeldAddress {
  /** Canonical. */
  address: string;
  interface: string;
}

/**
 * The addresses to hold and where: those of `owned` that the config puts on an uplink of this node
 * (`uplinks`, localUplinks) carrying their family; others cannot be held here.
 */
export function desiredAddresses(
  config: GatewayConfig,
  uplinks: readonly CompiledUplink[],
  owned: ReadonlySet<string>,
  carries: (uplink: CompiledUplink, family: Family) => boolean,
): HeldAddress[] {
  const byName = new Map(uplinks.map((u) => [u.name, u]));
  return localEgressAddresses(config, uplinks, carries)
    .filter((a) => owned.has(a.address))
    .map(({ address, uplink }) => ({ address, interface: byName.get(uplink)!.interface }));
}

const keyOf = (a: HeldAddress) => `${a.address} ${a.interface}`;

/** What to remove (held, not wanted there) and what to add (wanted, not held there). */
export function planAddresses(
  held: readonly HeldAddress[],
  wanted: readonly HeldAddress[],
): { remove: HeldAddress[]; add: HeldAddress[] } {
  const want = new Set(wanted.map(keyOf));
  const have = new Set(held.map(keyOf));
  return { remove: held.filter((a) => !want.has(keyOf(a))), add: wanted.filter((a) => !have.has(keyOf(a))) };
}

/** The kernel side: naat's failover addresses on the node's interfaces. */
export interface FailoverAddresses {
  /** naat's failover addresses (marked with failoverAddressMetric) on every interface. */
  list(): Promise<HeldAddress[]>;
  /** Adds the address to its interface; idempotent. */
  add(address: HeldAddress): Promise<void>;
  /** Removes it; an address already gone is no error. */
  remove(address: HeldAddress): Promise<void>;
  /** Tells the uplink's neighbours that the address is here now. */
  announce(address: HeldAddress): Promise<void>;
}

const prefixLength = (address: string) => (familyOf(address) === 4 ? 32 : 128);

/**
 * Drives `ip`, `arping` and `ndptool`, each through its command (a prefix such as `ip netns exec
 * NAME` runs them in another network namespace).
 */
export class ExecFailoverAddresses implements FailoverAddresses {
  readonly #ip: Command;
  readonly #arping: Command;
  readonly #ndptool: Command;
  readonly #log: Logger;

  constructor(log: Logger, commands: { ip?: Command; arping?: Command; ndptool?: Command } = {}) {
    this.#log = log;
    this.#ip = commands.ip ?? ['ip'];
    this.#arping = commands.arping ?? ['arping'];
    this.#ndptool = commands.ndptool ?? ['ndptool'];
  }

  async list(): Promise<HeldAddress[]> {
    const links = JSON.parse(await this.#run(this.#ip, ['-j', 'address', 'show'])) as Array<{
      ifname: string;
      addr_info?: Array<{ local?: string; prefixlen?: number; metric?: number }>;
    }>;
    return links.flatMap((link) =>
      (link.addr_info ?? [])
        .filter((a) => a.metric === failoverAddressMetric && a.local && a.prefixlen === prefixLength(a.local))
        .map((a) => ({ address: canonicalAddress(a.local!), interface: link.ifname })),
    );
  }

  async add({ address, interface: device }: HeldAddress): Promise<void> {
    // Deprecated (preferred_lft 0): still answered, but never picked as the source of the node's
    // own packets or of a masquerade, which would leak the address to flows that are not its own.
    const v6 = familyOf(address) === 6 ? ['nodad', 'noprefixroute', 'preferred_lft', '0'] : [];
    await this.#run(this.#ip, [
      'address',
      'replace',
      `${address}/${prefixLength(address)}`,
      'dev',
      device,
      ...v6,
      'metric',
      String(failoverAddressMetric),
    ]);
  }

  async remove({ address, interface: device }: HeldAddress): Promise<void> {
    const args = ['address', 'del', `${address}/${prefixLength(address)}`, 'dev', device];
    const { code, stderr } = await exec(this.#ip, args);
    // Gone already (EADDRNOTAVAIL), or its interface is.
    if (code !== 0 && !/[Aa]ddress not found|Cannot assign requested address|Cannot find device/.test(stderr)) {
      throw new Error(`ip ${args.join(' ')} failed: ${stderr.trim()}`);
    }
  }

  async announce(held: HeldAddress): Promise<void> {
    if (familyOf(held.address) === 4) return this.#gratuitousArp(held);
    const { address, interface: device } = held;
    const { code, stderr, stdout } = await exec(this.#ndptool, ['-t', 'na', '-U', '-i', device, '-T', address, 'send']);
    if (code !== 0) {
      this.#log.warn('Failed to announce a failover address', {
        address,
        interface: device,
        error: (stderr || stdout).trim(),
      });
    }
  }

  /** Resolves once arping has started (its first probe leaves right after); its exit is only logged. */
  #gratuitousArp({ address, interface: device }: HeldAddress): Promise<void> {
    const [command, ...prefix] = this.#arping;
    const child = spawn(command!, [...prefix, '-U', '-c', '2', '-I', device, address], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    return new Promise((resolve, reject) => {
      child.once('error', reject);
      // Its output is buffered until it exits (a pipe, not a terminal): its start is all there is to wait for.
      child.once('spawn', () => resolve());
      child.once('close', (code) => {
        if (code !== 0) {
          this.#log.warn('Failed to announce a failover address', { address, interface: device, error: stderr.trim() });
        }
        resolve();
      });
      child.stdout.resume();
    });
  }

  async #run(command: Command, args: string[]): Promise<string> {
    const { code, stdout, stderr } = await exec(command, args);
    if (code !== 0) throw new Error(`${command.at(-1)} ${args.join(' ')} failed: ${stderr.trim()}`);
    return stdout;
  }
}

/** The addresses in memory, with the announcements made, for unit tests of the agent. */
export class FakeFailoverAddresses implements FailoverAddresses {
  held: HeldAddress[] = [];
  announced: string[] = [];
  async list(): Promise<HeldAddress[]> {
    return [...this.held];
  }
  async add(address: HeldAddress): Promise<void> {
    if (!this.held.some((a) => keyOf(a) === keyOf(address)))
      this.held.push({ address: address.address, interface: address.interface });
  }
  async remove(address: HeldAddress): Promise<void> {
    this.held = this.held.filter((a) => keyOf(a) !== keyOf(address));
  }
  async announce(address: HeldAddress): Promise<void> {
    this.announced.push(address.address);
  }
}
