// The node's kernel settings the agents rely on, pure. In a cluster a short-lived privileged
// init container (`dataplane/main.ts sysctls`) writes them before the agent starts, since the
// agent's own container is not privileged and sees /proc/sys read-only; a standalone agent,
// running as root on its host, writes them itself. Paths are under /proc/sys.

export type Sysctl = readonly [path: string, value: string];

/**
 * Reverse-path filtering with the packet's mark: the reverse lookup of a steered flow's packets
 * from the tunnel, and of a reply from an uplink to the gateway node's own pod, must find the
 * flow's own policy route, which only the mark selects. The kernel ORs `all` with each device's
 * own src_valid_mark (IN_DEV_SRC_VMARK is IN_DEV_ORCONF), so this one setting covers the uplinks
 * and the tunnel devices, including those made after it is written. A packet without a mark is
 * looked up as before.
 */
export const srcValidMark: Sysctl = ['net/ipv4/conf/all/src_valid_mark', '1'];

/** The conntrack ICMP timeouts (`icmpSeconds`), for which nft 1.x accepts no timeout policy. */
export function icmpTimeoutSysctls(seconds: number): Sysctl[] {
  return ['net/netfilter/nf_conntrack_icmp_timeout', 'net/netfilter/nf_conntrack_icmpv6_timeout'].map(
    (path) => [path, String(seconds)] as const,
  );
}

/** What the init container of an agent writes: a gateway's agent also gets its ICMP timeouts. */
export function agentSysctls(icmpSeconds?: number): Sysctl[] {
  return [srcValidMark, ...(icmpSeconds === undefined ? [] : icmpTimeoutSysctls(icmpSeconds))];
}
