// The gateway agent's share of steering, pure: its VXLAN device towards the nodes that steer
// flows to it, and the return routes of their pods. A tunnelled flow carries the steering bits
// in its conntrack mark (set in prerouting, see render.ts); its replies get them as their packet
// mark, and `fwmark → table 7690` sends them back into the tunnel to the node their pod runs on.
// The same table answers the reverse-path check of the flow's packets from the tunnel (the
// node has src_valid_mark, see tunnelSysctls), so strict rp_filter holds.
import type { GatewayConfig } from '../../contracts/gateway/index.ts';
import { canonicalAddress } from '../../contracts/gateway/index.ts';
import type { Chain } from '../nft/model.ts';
import type { TunnelOwnership } from './tunnel-kernel.ts';
import {
  mssClampRules,
  outerFamily,
  tunnelDeviceName,
  tunnelLinkLocal,
  tunnelMac,
  tunnelMtu,
  tunnelPeer,
  type Family,
  type TunnelPeer,
  type TunnelRule,
  type TunnelState,
  type Underlay,
} from './tunnel.ts';

export const gatewayReplyTable = 7690;
export const gatewayReplyPreference = 7690;
/** The tunnel's own packets, which carry their flow's mark, go by the main table: never into a steering or uplink table. */
export const gatewayOuterPreference = 7689;

export const gatewayTunnelOwnership: TunnelOwnership = {
  role: 'gateway',
  preferences: [gatewayOuterPreference, gatewayReplyPreference],
  ownsTable: (table) => table === gatewayReplyTable,
};

/** The gateway's tunnel device, named from its VNI. */
export const gatewayDevice = (steering: NonNullable<GatewayConfig['steering']>) =>
  tunnelDeviceName('gateway', steering.tunnel.vni);

export interface GatewaySteering {
  tunnels: TunnelState;
  /** The forward chain that clamps the MSS of SYNs through the tunnel. */
  mss: Chain;
  problem?: string;
}

export function planGatewaySteering(
  config: GatewayConfig,
  node: string,
  underlay: ReadonlyMap<Family, Underlay>,
): GatewaySteering | undefined {
  const steering = config.steering;
  if (!steering) return undefined;
  const name = gatewayDevice(steering);
  const outer = outerFamily(steering.sources.map((s) => s.addresses));
  const local = underlay.get(outer);
  if (!local) {
    return {
      tunnels: { devices: [], routes: [], rules: [] },
      mss: { name: 'tunnel_mss', base: { type: 'filter', hook: 'forward', priority: -150 }, rules: [] },
      problem: `this node has no IPv${outer} underlay address for the tunnel`,
    };
  }
  const peers = new Map<string, TunnelPeer>();
  for (const source of steering.sources) {
    const peer = tunnelPeer(source.node, source.addresses, outer);
    if (peer) peers.set(source.node, peer);
  }
  const mtu = tunnelMtu(local.mtu, outer);
  const tunnels: TunnelState = {
    devices: [
      {
        name,
        vni: steering.tunnel.vni,
        port: steering.tunnel.port,
        local: local.address,
        mac: tunnelMac(node),
        linkLocal: tunnelLinkLocal(node),
        mtu,
        peers: [...peers.values()],
      },
    ],
    routes: config.pods.flatMap((pod) => {
      const peer = pod.node === undefined ? undefined : peers.get(pod.node);
      if (!peer) return [];
      return pod.addresses.map((address) => ({
        family: (address.includes(':') ? 6 : 4) as Family,
        table: gatewayReplyTable,
        destination: canonicalAddress(address),
        device: name,
        via: peer.linkLocal,
      }));
    }),
    rules: [
      ...([4, 6] as const).map((family): TunnelRule => ({
        family,
        preference: gatewayReplyPreference,
        table: gatewayReplyTable,
        fwmark: { value: steering.markMask, mask: steering.markMask },
      })),
      { family: outer, preference: gatewayOuterPreference, table: 'main', from: local.address },
    ],
  };
  return {
    tunnels,
    mss: {
      name: 'tunnel_mss',
      base: { type: 'filter', hook: 'forward', priority: -150 },
      rules: mssClampRules(name, mtu),
    },
  };
}
