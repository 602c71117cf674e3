// The node agent's pure planner: from its NodeConfig, the ids of its peers and which of them are
// up, the table `inet naat_node` and the tunnels, routes and rules that steer served pods' new
// flows to a gateway node. Nothing here touches the kernel.
//
// Packet path on the source node (prerouting, mangle priority, before the CNI's nat chains):
//   a flow already pinned (its conntrack mark holds a peer id) → the id goes into the packet
//   mark, other bits kept; a new flow that arrives from a tunnel (FTP active data) → pinned to
//   the peer that sent it, so that its replies go back the same way; a new flow of a served pod
//   → its gateway's chain: bypassed or local destinations stay with the CNI, else a peer is
//   chosen (the pod's rendezvous peer, or one per flow) and pinned, or the flow is dropped and
//   counted when no peer is up. Routing: `iif <tunnel> → main` (replies and arrivals go to the
//   pod), `fwmark <id> → table 7800+id` (default routes into the tunnel towards that peer).
// Failover addresses: a pod with an egress address of a flow's family is pinned to that address's
// slot instead of a peer. A slot's id shares the mark bits with the peer ids; its table routes into
// the tunnel towards the peer that owns the address now, so that when the address moves only that
// route changes and the established flows follow it with their conntrack marks as they are. A slot
// whose address has no up owner has no route (its rule stays): its new flows are dropped and
// counted, and so are the packets of its established flows (rather than routed by the main table,
// past the gateway).
// Postrouting at priority 99: an identity source NAT of steered flows, so that the CNI's
// masquerade (priority 100, iptables or nftables) never hides the pod from the gateway.
import { canonicalAddress, normalisePrefixes } from '../../contracts/gateway/index.ts';
import type { NodeConfig, NodeGateway } from '../../contracts/gateway/index.ts';
import type { Chain, Match, NamedSet, Rule, SetElement, Statement, Table } from '../nft/model.ts';
import { srcValidMark } from '../sysctls.ts';
import { rendezvous } from '../../common/index.ts';
import type { TunnelOwnership } from './tunnel-kernel.ts';
import {
  outerFamily,
  tunnelDeviceName,
  tunnelLinkLocal,
  tunnelMac,
  mssClampRules,
  tunnelMtu,
  tunnelPeer,
  type Family,
  type TunnelDevice,
  type TunnelRule,
  type TunnelState,
  type Underlay,
} from './tunnel.ts';

export const nodeTableName = 'naat_node';
/** Peer id n routes by table nodeTableBase + n. */
export const nodeTableBase = 7800;
/**
 * fromLocal: the tunnel's own packets carry their flow's mark (VXLAN routes them with it), so
 * they must go by the main table before the peers' rules would send them into the tunnel again.
 * fromTunnel: what arrives from a tunnel goes to its pod by the main table.
 */
export const nodeRulePreferences = { fromLocal: 7797, fromTunnel: 7798, peers: 7800 } as const;
/** What the node agent owns of the kernel's routing (the gateway agent owns other preferences and tables). */
export const nodeTunnelOwnership: TunnelOwnership = {
  role: 'node',
  preferences: Object.values(nodeRulePreferences),
  ownsTable: (table) => table > nodeTableBase && table <= nodeTableBase + 255,
};

/** The key of a peer: a gateway node of one gateway (each gateway has its own tunnel device). */
export const peerKey = (gateway: string, node: string) => `${gateway}/${node}`;

/** Every peer key of the config, the names its ids are allocated for. */
export const peerKeys = (config: NodeConfig): string[] =>
  config.gateways.flatMap((g) => g.peers.map((p) => peerKey(g.gateway, p.node)));

/** The key of a slot: a failover address of one gateway (a node name holds no `/`, so no peer key is one). */
export const slotKey = (gateway: string, address: string) => `${gateway}/address/${canonicalAddress(address)}`;

/**
 * The failover addresses that the gateway's pods on this node leave by (their egress addresses),
 * canonical and sorted: one slot each. Only these take ids, so the mark bits need room for the
 * addresses in use here rather than for every address of the gateway.
 */
export function slotAddresses(gateway: NodeGateway): string[] {
  if (!gateway.failover) return [];
  const addresses = new Set(gateway.pods.flatMap((pod) => (pod.egress ?? []).map(canonicalAddress)));
  return [...addresses].sort();
}

/** Every slot key of the config. */
export const slotKeys = (config: NodeConfig): string[] =>
  config.gateways.flatMap((g) => slotAddresses(g).map((address) => slotKey(g.gateway, address)));

/** The lowest set bit of the mask: a peer id n is n << shift in the mark. */
export const markShift = (mask: number): number => Math.log2(mask & -mask);
/** How many peers the mask's bits can number (ids 1 … max). */
export const maxPeerId = (mask: number): number => mask / (mask & -mask);

export interface NodePlanInput {
  config: NodeConfig;
  /** The id of each peer key (see peerKeys); peers without one are not used. */
  ids: ReadonlyMap<string, number>;
  /** Peer keys that are up; the others get no new flows. */
  up: ReadonlySet<string>;
  /**
   * The node that owns each slot's address now (slot key → peer node, see slotKeys); a slot without
   * one drops its flows. None: no address has an owner.
   */
  owners?: ReadonlyMap<string, string>;
  /** This node's underlay per family: the tunnels' outer source addresses and MTUs. */
  underlay: ReadonlyMap<Family, Underlay>;
}

export interface NodePlan {
  table: Table;
  tunnels: TunnelState;
  /** Where a gateway could not be set up (no underlay of the tunnel's family), by gateway. */
  problems: Map<string, string>;
}

const families: Family[] = [4, 6];
const family = (f: Family): Match => ({ kind: 'family', family: f });
const ret: Statement = { kind: 'verdict', verdict: 'return' };
const familyOf = (address: string): Family => (address.includes(':') ? 6 : 4);
const gatewayChain = (g: NodeGateway) => `gateway_${g.tunnel.vni}`;
const peerChain = (id: number) => `peer_${id}`;
const slotChain = (id: number) => `slot_${id}`;
const addressType = (f: Family) => (f === 4 ? 'ipv4_addr' : 'ipv6_addr');

export function planNode(input: NodePlanInput): NodePlan {
  const { config, ids } = input;
  const mask = config.markMask;
  const shift = markShift(mask);
  const markOf = (id: number) => (id << shift) >>> 0;
  const problems = new Map<string, string>();
  const sets: NamedSet[] = [];
  const chains: Chain[] = [];
  const restore: Rule[] = [];
  const arrivals: Rule[] = [];
  const keepSource: Rule[] = [];
  const clamp: Rule[] = [];
  const podElements: Record<Family, SetElement[]> = { 4: [], 6: [] };
  const seenPods = new Set<string>();
  const tunnels: TunnelState = { devices: [], routes: [], rules: [] };
  /** Per id in use (peers and slots): its rule in prerouting's restore and its chain. */
  const pinned = new Map<number, { restore: Rule; chain: Chain }>();
  const pinTo = (id: number): Rule[] => [{ match: [], then: [{ kind: 'setMark', mask, value: markOf(id) }] }];
  const restoreMark = (id: number): Rule => ({
    match: [{ kind: 'ctMark', mask, value: markOf(id) }],
    then: [{ kind: 'setPacketMark', mask, value: markOf(id) }, ret],
  });
  /** The rule that sends the marks of `id` to its table. */
  const ruleFor = (id: number) =>
    tunnels.rules.push(
      ...families.map((f): TunnelRule => ({
        family: f,
        preference: nodeRulePreferences.peers,
        table: nodeTableBase + id,
        fwmark: { value: markOf(id), mask },
      })),
    );
  /** The routes of the table of `id`: into the tunnel towards `linkLocal`. */
  const routeTo = (id: number, device: string, linkLocal: string) =>
    tunnels.routes.push(
      ...families.map((f) => ({
        family: f,
        table: nodeTableBase + id,
        destination: 'default',
        device,
        via: linkLocal,
      })),
    );

  for (const g of config.gateways) {
    const outer = outerFamily(g.peers.map((p) => p.addresses));
    const underlay = input.underlay.get(outer);
    if (!underlay) {
      problems.set(g.gateway, `this node has no IPv${outer} underlay address for the tunnel`);
      continue;
    }
    const device: TunnelDevice = {
      name: tunnelDeviceName('node', g.tunnel.vni),
      vni: g.tunnel.vni,
      port: g.tunnel.port,
      local: underlay.address,
      mac: tunnelMac(config.node),
      linkLocal: tunnelLinkLocal(config.node),
      mtu: tunnelMtu(underlay.mtu, outer),
      peers: [],
    };
    tunnels.devices.push(device);
    const peers: Array<{ key: string; id: number; node: string; linkLocal: string }> = [];
    for (const p of g.peers) {
      const key = peerKey(g.gateway, p.node);
      const id = ids.get(key);
      const peer = tunnelPeer(p.node, p.addresses, outer);
      if (id === undefined || !peer) continue;
      device.peers.push(peer);
      peers.push({ key, id, node: p.node, linkLocal: peer.linkLocal });
      pinned.set(id, { restore: restoreMark(id), chain: { name: peerChain(id), rules: pinTo(id) } });
      ruleFor(id);
      routeTo(id, device.name, peer.linkLocal);
      arrivals.push({
        match: [
          { kind: 'iifname', name: device.name },
          { kind: 'ctStateNew' },
          { kind: 'etherSaddr', address: peer.mac },
        ],
        then: [{ kind: 'setMark', mask, value: markOf(id) }, ret],
      });
    }
    tunnels.rules.push(
      ...families.map((f): TunnelRule => ({
        family: f,
        preference: nodeRulePreferences.fromTunnel,
        table: 'main',
        iif: device.name,
      })),
    );
    for (const f of families) {
      keepSource.push({
        match: [{ kind: 'ctMarkSet', mask }, { kind: 'oifname', name: device.name }, family(f)],
        then: [{ kind: 'keepSource', family: f }],
      });
    }
    clamp.push(...mssClampRules(device.name, device.mtu));

    // The slots of the gateway's failover addresses: routed to the owner, or dropping.
    const slotOf = new Map<string, number>();
    for (const address of slotAddresses(g)) {
      const key = slotKey(g.gateway, address);
      const id = ids.get(key);
      if (id === undefined) continue;
      slotOf.set(address, id);
      // The rule stays whoever owns the address, so that a change of owner is a change of routes.
      ruleFor(id);
      const owner = peers.find((p) => p.node === input.owners?.get(key));
      if (owner) {
        routeTo(id, device.name, owner.linkLocal);
        pinned.set(id, { restore: restoreMark(id), chain: { name: slotChain(id), rules: pinTo(id) } });
        continue;
      }
      const drop = (why: string): Rule => ({
        match: [],
        then: [{ kind: 'counter' }, { kind: 'verdict', verdict: 'drop' }],
        comment: `${g.gateway}: no gateway node owns ${address}${why}`,
      });
      pinned.set(id, {
        restore: { ...drop(', established flow'), match: [{ kind: 'ctMark', mask, value: markOf(id) }] },
        chain: { name: slotChain(id), rules: [drop('')] },
      });
    }
    /** The slot of a pod's address: the pod's egress address of its family, when it has one. */
    const slotFor = (pod: NodeGateway['pods'][number], address: string): number | undefined => {
      const egress = pod.egress?.find((e) => familyOf(e) === familyOf(address));
      return egress === undefined ? undefined : slotOf.get(canonicalAddress(egress));
    };

    // The gateway's chain: what stays with the CNI, then the choice of a slot or a peer.
    const up = peers.filter((p) => input.up.has(p.key));
    const rules: Rule[] = [
      ...families.map((f) => ({
        match: [family(f), { kind: 'daddr', family: f, set: `bypass_${g.tunnel.vni}_${f}` } as Match],
        then: [ret],
      })),
      { match: [{ kind: 'localDestination' }], then: [ret] },
    ];
    for (const f of families) {
      sets.push({
        name: `bypass_${g.tunnel.vni}_${f}`,
        type: addressType(f),
        interval: true,
        elements: normalisePrefixes([...g.bypass], f).map((address) => ({ key: [{ kind: 'address', address }] })),
      });
    }
    // Before any choice of a peer: a pod's address with an egress address of its family goes to that
    // address's slot, whatever the selection and whoever is up.
    const egress: Record<Family, SetElement[]> = { 4: [], 6: [] };
    for (const pod of g.pods) {
      for (const address of pod.addresses) {
        const id = slotFor(pod, address);
        if (id === undefined) continue;
        egress[familyOf(address)].push({
          key: [{ kind: 'address', address: canonicalAddress(address) }],
          value: { kind: 'goto', chain: slotChain(id) },
        });
      }
    }
    for (const f of families) {
      if (!egress[f].length) continue;
      const name = `egress_${g.tunnel.vni}_${f}`;
      sets.push({ name, type: `${addressType(f)} : verdict`, map: true, elements: unique(egress[f]) });
      rules.push({ match: [family(f)], then: [{ kind: 'lookupSource', family: f, map: name }] });
    }
    if (g.selection === 'Flow' && up.length) {
      rules.push({
        match: [],
        then: [{ kind: 'pick', by: 'random', slots: up.map((p) => ({ chain: peerChain(p.id), count: 1 })) }],
      });
    } else if (up.length) {
      const byNode = new Map(up.map((p) => [p.node, p.id]));
      const pick: Record<Family, SetElement[]> = { 4: [], 6: [] };
      for (const pod of g.pods) {
        // Keyed by the pod's identity, so that its addresses of both families share a peer.
        const chosen = rendezvous(`${pod.namespace}/${pod.name}`, byNode.keys())!;
        for (const address of pod.addresses) {
          if (slotFor(pod, address) !== undefined) continue;
          pick[familyOf(address)].push({
            key: [{ kind: 'address', address: canonicalAddress(address) }],
            value: { kind: 'goto', chain: peerChain(byNode.get(chosen)!) },
          });
        }
      }
      for (const f of families) {
        const name = `pick_${g.tunnel.vni}_${f}`;
        sets.push({ name, type: `${addressType(f)} : verdict`, map: true, elements: unique(pick[f]) });
        rules.push({ match: [family(f)], then: [{ kind: 'lookupSource', family: f, map: name }] });
      }
    }
    // No peer up (or, in a race, a pod not in the map yet): never leave untunnelled.
    rules.push({
      match: [],
      then: [{ kind: 'counter' }, { kind: 'verdict', verdict: 'drop' }],
      comment: `${g.gateway}: no gateway node up`,
    });
    chains.push({ name: gatewayChain(g), rules });

    // A pod listed by two gateways goes with the first.
    for (const pod of g.pods) {
      for (const address of pod.addresses) {
        const canonical = canonicalAddress(address);
        if (seenPods.has(canonical)) continue;
        seenPods.add(canonical);
        podElements[familyOf(address)].push({
          key: [{ kind: 'address', address: canonical }],
          value: { kind: 'goto', chain: gatewayChain(g) },
        });
      }
    }
  }
  // The replies from the tunnel pass the strict reverse-path check by their mark (tunnelSysctls).
  if (tunnels.devices.length) tunnels.sysctls = [srcValidMark];
  for (const local of new Set(tunnels.devices.map((d) => d.local))) {
    tunnels.rules.push({
      family: familyOf(local),
      preference: nodeRulePreferences.fromLocal,
      table: 'main',
      from: local,
    });
  }

  for (const [, { restore: rule, chain }] of [...pinned].sort(([a], [b]) => a - b)) {
    restore.push(rule);
    chains.push(chain);
  }
  for (const f of families) {
    sets.push({
      name: `pods${f}`,
      type: `${addressType(f)} : verdict`,
      map: true,
      elements: podElements[f],
    });
  }
  const prerouting: Chain = {
    name: 'prerouting',
    base: { type: 'filter', hook: 'prerouting', priority: -150 },
    rules: [
      ...restore,
      ...arrivals,
      { match: [{ kind: 'ctStateNew', negate: true }], then: [ret] },
      ...families.map((f) => ({
        match: [family(f)],
        then: [{ kind: 'lookupSource', family: f, map: `pods${f}` } as Statement],
      })),
    ],
  };
  const postrouting: Chain = {
    name: 'postrouting',
    base: { type: 'nat', hook: 'postrouting', priority: 99 },
    rules: keepSource,
  };
  const mss: Chain = { name: 'mss', base: { type: 'filter', hook: 'forward', priority: -150 }, rules: clamp };
  return {
    table: { sets, chains: [prerouting, ...chains, postrouting, mss], objects: [] },
    tunnels,
    problems,
  };
}

/** One element per key, in a stable order (a pod's address listed twice counts once). */
function unique(elements: SetElement[]): SetElement[] {
  const byKey = new Map(elements.map((e) => [e.key.map((k) => JSON.stringify(k)).join(), e]));
  return [...byKey.values()];
}
