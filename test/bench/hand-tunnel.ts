// The baseline of the steering benchmark: what an administrator would set up by hand to send one
// node's pods out through a gateway node, with plain `ip` and `nft` commands. The same kind of
// path as naat's: a VXLAN tunnel between the two nodes' underlay addresses (the same port,
// encapsulation and MTU), policy routing of the pods' packets into it by source address, an
// identity source NAT that keeps the CNI's masquerade off them, the TCP MSS clamped to the
// tunnel, and source NAT at the gateway node's uplink, whose routing table the pods' packets
// take, by source address as well. It holds no per-flow state of its own: no
// marks, no choice among gateway nodes, no health, which is what naat adds and is measured for.
export interface HandTunnelSpec {
  /** The node the pods run on: its namespace, its underlay address, the pods' addresses. */
  source: { ns: string; underlay: string; pods: readonly string[] };
  /** The gateway node: its namespace, underlay address, uplink device and that uplink's next hops. */
  gateway: { ns: string; underlay: string; uplink: string; nextHops: readonly string[] };
  /** Destinations that stay with the cluster's own routing (pod and service networks). */
  bypass: readonly string[];
  vni: number;
  port: number;
  /** The tunnel device's MTU: the underlay's less the encapsulation. */
  mtu: number;
}

/** A command in a namespace. */
export interface Step {
  ns: string;
  argv: string[];
  input?: string;
}

export interface HandTunnel {
  up: Step[];
  /** Takes away everything `up` made, whether or not it all got made. */
  down: Step[];
}

const device = 'vxbench';
const table = 'bench_tunnel';
/** Policy routing tables and rule preferences clear of naat's (7690, 7700+, 7797+). */
const sourceTable = 7500;
const gatewayTable = 7501;
const bypassPreference = 7499;
/** Inner addresses of the tunnel's two ends, outside every network of the topology. */
const inner = {
  source: { 4: '169.254.75.1', 6: 'fd00:75::1' },
  gateway: { 4: '169.254.75.2', 6: 'fd00:75::2' },
} as const;

/** The family of an address or prefix. */
const familyOf = (address: string): 4 | 6 => (address.includes(':') ? 6 : 4);
const ip = (family: 4 | 6, ...args: string[]) => ['ip', `-${family}`, ...args];

function vxlan(ns: string, local: string, remote: string, spec: HandTunnelSpec, end: 'source' | 'gateway'): Step[] {
  return [
    {
      ns,
      argv: ['ip', 'link', 'add', device, 'mtu', String(spec.mtu), 'type', 'vxlan', 'id', String(spec.vni)].concat([
        'dstport',
        String(spec.port),
        'local',
        local,
        'remote',
        remote,
        'nolearning',
      ]),
    },
    { ns, argv: ip(4, 'address', 'add', `${inner[end][4]}/30`, 'dev', device) },
    { ns, argv: ip(6, 'address', 'add', `${inner[end][6]}/64`, 'dev', device, 'nodad') },
    { ns, argv: ['ip', 'link', 'set', device, 'up'] },
  ];
}

/**
 * The nft table of one end: the identity NAT (source node) or the masquerade (gateway node) on
 * what leaves through `nat`, and the MSS clamp of SYNs into the tunnel.
 */
const rules = (nat: string) => `table inet ${table} {
  chain postrouting {
    type nat hook postrouting priority ${nat === 'masquerade' ? 100 : 99};
    ${nat}
  }
  chain mss {
    type filter hook forward priority -150;
    oifname "${device}" tcp flags syn tcp option maxseg size set rt mtu
  }
}
`;

export function handTunnel(spec: HandTunnelSpec): HandTunnel {
  const { source, gateway } = spec;
  const families = [4, 6] as const;
  const sourceRules = [
    ...spec.bypass.map((prefix) =>
      ip(familyOf(prefix), 'rule', 'add', 'to', prefix, 'pref', String(bypassPreference), 'table', 'main'),
    ),
    ...source.pods.map((pod) =>
      ip(familyOf(pod), 'rule', 'add', 'from', pod, 'pref', String(sourceTable), 'table', String(sourceTable)),
    ),
  ];
  // By source on the gateway node too: the reverse-path check of a reply (from the server, to the
  // pod once conntrack undid the NAT) looks up the route from the pod to the server, which only
  // this rule finds on a node without a default route, and strict filtering needs it to be the
  // uplink the reply came in on.
  const gatewayRules = source.pods.map((pod) =>
    ip(familyOf(pod), 'rule', 'add', 'from', pod, 'pref', String(gatewayTable), 'table', String(gatewayTable)),
  );
  const up: Step[] = [
    ...vxlan(source.ns, source.underlay, gateway.underlay, spec, 'source'),
    ...families.map((f) => ({
      ns: source.ns,
      argv: ip(f, 'route', 'add', 'default', 'via', inner.gateway[f], 'dev', device, 'table', String(sourceTable)),
    })),
    ...sourceRules.map((argv) => ({ ns: source.ns, argv })),
    {
      ns: source.ns,
      argv: ['nft', '-f', '-'],
      input: rules(
        `oifname "${device}" meta nfproto ipv4 snat ip to ip saddr\n    oifname "${device}" meta nfproto ipv6 snat ip6 to ip6 saddr`,
      ),
    },
    ...vxlan(gateway.ns, gateway.underlay, source.underlay, spec, 'gateway'),
    ...source.pods.map((pod) => ({
      ns: gateway.ns,
      argv: ip(familyOf(pod), 'route', 'add', pod, 'via', inner.source[familyOf(pod)], 'dev', device),
    })),
    ...gateway.nextHops.map((hop) => ({
      ns: gateway.ns,
      argv: ip(
        familyOf(hop),
        'route',
        'add',
        'default',
        'via',
        hop,
        'dev',
        gateway.uplink,
        'table',
        String(gatewayTable),
      ),
    })),
    ...gatewayRules.map((argv) => ({ ns: gateway.ns, argv })),
    { ns: gateway.ns, argv: ['nft', '-f', '-'], input: rules(`oifname "${gateway.uplink}" masquerade`) },
  ];
  const deleted = (argv: string[]) => argv.map((word) => (word === 'add' ? 'del' : word));
  const down: Step[] = [
    ...[source.ns, gateway.ns].flatMap((ns) => [
      { ns, argv: ['ip', 'link', 'del', device] },
      { ns, argv: ['nft', 'delete', 'table', 'inet', table] },
    ]),
    ...sourceRules.map((argv) => ({ ns: source.ns, argv: deleted(argv) })),
    ...gatewayRules.map((argv) => ({ ns: gateway.ns, argv: deleted(argv) })),
    ...families.map((f) => ({ ns: gateway.ns, argv: ip(f, 'route', 'flush', 'table', String(gatewayTable)) })),
  ];
  return { up, down };
}
