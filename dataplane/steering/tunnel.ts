// The kernel side of a steering tunnel as data, shared by the node agent (which sends a
// gateway's flows into it) and the gateway agent (which receives them and sends the replies
// back). Peers are addressed without any address allocation: a node's tunnel MAC and IPv6
// link-local address derive from its name alone, so both ends compute the same values, and
// IPv4 routes use the IPv6 link-local address as their next hop (`via inet6`), which spares
// the tunnel an IPv4 subnet that could collide with the cluster's.
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import type { Match, Rule, Statement } from '../nft/model.ts';
import type { Sysctl } from '../sysctls.ts';

export type Family = 4 | 6;

/** A node at the other end of the tunnel. */
export interface TunnelPeer {
  node: string;
  mac: string;
  linkLocal: string;
  /** Its underlay address, where its tunnel packets are sent (the FDB entry's dst). */
  remote: string;
}

/** One VXLAN device and its peers (FDB entries and permanent neighbours). */
export interface TunnelDevice {
  name: string;
  vni: number;
  port: number;
  /** The outer source address: this node's underlay address of the tunnel's outer family. */
  local: string;
  mac: string;
  linkLocal: string;
  mtu: number;
  peers: TunnelPeer[];
}

/** A route of a steering table: `destination` (`default` or a host) through a peer's link-local address. */
export interface TunnelRoute {
  family: Family;
  table: number;
  destination: string;
  device: string;
  via: string;
}

/** An ip rule naat's steering owns, by its preference. */
export interface TunnelRule {
  family: Family;
  preference: number;
  table: number | 'main';
  fwmark?: { value: number; mask: number };
  iif?: string;
  from?: string;
}

export interface TunnelState {
  devices: TunnelDevice[];
  routes: TunnelRoute[];
  rules: TunnelRule[];
  /** Kernel settings beyond the devices' own (paths under /proc/sys); set, never reverted. */
  sysctls?: Sysctl[];
}

/**
 * The routes to replace and to remove that turn the state `before` into `after`, when nothing else
 * differs (devices, their peers, rules, settings); undefined when something else does. A route is
 * known by its family, table and destination, as `ip route replace` knows it.
 */
export function routeChanges(
  before: TunnelState,
  after: TunnelState,
): { replace: TunnelRoute[]; remove: TunnelRoute[] } | undefined {
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  if (!same(before.devices, after.devices) || !same(before.rules, after.rules) || !same(before.sysctls, after.sysctls))
    return undefined;
  const key = (r: TunnelRoute) => `${r.family} ${r.table} ${r.destination}`;
  const was = new Map(before.routes.map((r) => [key(r), r]));
  const is = new Set(after.routes.map(key));
  return {
    replace: after.routes.filter((r) => !same(was.get(key(r)), r)),
    remove: before.routes.filter((r) => !is.has(key(r))),
  };
}

/** VXLAN header (8) + UDP (8) + outer IP (20 or 40) + inner Ethernet (14). */
export const tunnelOverhead: Record<Family, number> = { 4: 50, 6: 70 };

/** The largest inner packet: the underlay's MTU less the encapsulation of the outer family. */
export const tunnelMtu = (underlayMtu: number, outer: Family): number => underlayMtu - tunnelOverhead[outer];

/** The TCP MSS that fits the tunnel's MTU: its MTU less the inner IP and TCP headers. */
export const tunnelMss = (mtu: number, inner: Family): number => mtu - (inner === 4 ? 40 : 60);

/**
 * The device name from the VNI (at most 15 characters: the prefix and 8 digits), one prefix per
 * role, so that a gateway node that also steers pods of another gateway keeps the two apart.
 */
export const tunnelDeviceName = (role: 'node' | 'gateway', vni: number): string =>
  `${role === 'node' ? 'naatn' : 'naatg'}${vni}`;

const digest = (node: string) => createHash('sha256').update(`naat-tunnel:${node}`).digest();

/** A locally administered unicast MAC from the node's name. */
export function tunnelMac(node: string): string {
  const bytes = [0x02, ...digest(node).subarray(0, 5)];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** An IPv6 link-local address from the node's name (fe80::/64 and 64 bits of its hash). */
export function tunnelLinkLocal(node: string): string {
  const id = digest(node).subarray(8, 16);
  const groups = [0, 2, 4, 6].map((i) => id.readUInt16BE(i).toString(16));
  return `fe80::${groups.join(':')}`;
}

/**
 * The outer family of a tunnel with these peers: IPv4 when every peer has an IPv4 address (its
 * encapsulation costs 20 bytes less), else IPv6. Both ends decide alike, since a cluster's nodes
 * have the same families.
 */
export function outerFamily(peerAddresses: ReadonlyArray<readonly string[]>): Family {
  return peerAddresses.every((addresses) => addresses.some((a) => isIP(a) === 4)) ? 4 : 6;
}

/** The peer's address of the outer family. */
export function remoteOf(addresses: readonly string[], outer: Family): string | undefined {
  return addresses.find((a) => isIP(a) === outer);
}

export function tunnelPeer(node: string, addresses: readonly string[], outer: Family): TunnelPeer | undefined {
  const remote = remoteOf(addresses, outer);
  return remote ? { node, mac: tunnelMac(node), linkLocal: tunnelLinkLocal(node), remote } : undefined;
}

/** This node's end of the underlay of one outer family: its address there and that link's MTU. */
export interface Underlay {
  address: string;
  mtu: number;
}

/**
 * The sysctls of a tunnel device: no router advertisements taken from it (its link-local address
 * is the only one it needs). Reverse-path filtering needs no setting of the device's own: the
 * kernel applies the larger of `all` and the device's rp_filter, so a device cannot loosen a
 * node's strict `all=1`, and the device has no IPv4 address, with which the kernel drops even in
 * loose mode any packet whose source is not routed back through the device itself. With
 * src_valid_mark (`all`, which covers this device: see sysctls.ts) the reverse lookup uses the
 * packet's mark, which prerouting has restored from the flow's conntrack mark, so it finds the
 * flow's own steering route through this device and the strict check passes.
 */
export function tunnelSysctls(device: string): Array<[string, string]> {
  return [[`net/ipv6/conf/${device}/accept_ra`, '0']];
}

/**
 * TCP MSS clamping on a tunnel device, for SYNs in both directions (into the tunnel and out of
 * it), so that neither end sends segments the tunnel cannot carry; pods keep their MTU.
 */
export function mssClampRules(device: string, mtu: number): Rule[] {
  return ([4, 6] as const).flatMap((f) =>
    (['oifname', 'iifname'] as const).map((side) => ({
      match: [
        { kind: side, name: device },
        { kind: 'family', family: f },
        { kind: 'synMssAbove', size: tunnelMss(mtu, f) },
      ] as Match[],
      then: [{ kind: 'setMss', size: tunnelMss(mtu, f) } as Statement],
    })),
  );
}
