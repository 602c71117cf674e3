// Which tunnelled flows leave with a failover address: pure, from the config and the addresses this
// node owns. The renderer turns it into sets and maps (render.ts), so that a change of ownership
// only moves elements.
import { canonicalAddress, type CompiledUplink, type GatewayConfig } from '../../contracts/gateway/index.ts';

export type Family = 4 | 6;

/** A failover address on one of this node's uplinks. */
export interface EgressAddress {
  /** Canonical. */
  address: string;
  family: Family;
  uplink: string;
}

/** The failover paths of one uplink and family. */
export interface UplinkEgress {
  uplink: string;
  family: Family;
  /** Every failover address of this family on the uplink, owned or not: each has a SNAT chain. */
  addresses: string[];
  /** Pod address → the owned failover address its tunnelled flows of this family leave with (canonical, sorted). */
  pods: Array<{ pod: string; address: string }>;
  /**
   * Pod addresses whose failover address of this family is on this uplink but owned by another node
   * (or none): their tunnelled flows wait for the source node to send them to the owner (sorted).
   */
  waiting: string[];
}

export const familyOf = (address: string): Family => (address.includes(':') ? 6 : 4);

/**
 * The failover addresses of the config that sit on an uplink of this node (`uplinks`, localUplinks)
 * that carries their family (`carries`). Others cannot be claimed here.
 */
export function localEgressAddresses(
  config: GatewayConfig,
  uplinks: readonly CompiledUplink[],
  carries: (uplink: CompiledUplink, family: Family) => boolean,
): EgressAddress[] {
  const byName = new Map(uplinks.map((u) => [u.name, u]));
  return (config.failover?.addresses ?? [])
    .map(({ address, uplink }) => ({ address: canonicalAddress(address), family: familyOf(address), uplink }))
    .filter(({ uplink, family }) => {
      const u = byName.get(uplink);
      return u !== undefined && carries(u, family);
    });
}

/**
 * Per uplink and family with a failover address, the pods whose tunnelled flows leave with an owned
 * one: a pod's `egress` address of the family, when `owned` holds it; and those whose address there
 * another node owns. A pod address listed twice
 * belongs to the first pod, as everywhere in the config. Only with steering: without a tunnel no
 * flow is tunnelled.
 */
export function planEgress(
  config: GatewayConfig,
  addresses: readonly EgressAddress[],
  owned: ReadonlySet<string>,
): UplinkEgress[] {
  if (!config.steering) return [];
  const groups = new Map<string, UplinkEgress>();
  const byAddress = new Map<string, UplinkEgress>();
  for (const a of addresses) {
    const key = `${a.uplink} ${a.family}`;
    let group = groups.get(key);
    if (!group) {
      group = { uplink: a.uplink, family: a.family, addresses: [], pods: [], waiting: [] };
      groups.set(key, group);
    }
    group.addresses.push(a.address);
    byAddress.set(a.address, group);
  }
  const seen = new Set<string>();
  for (const pod of config.pods) {
    const mine = pod.addresses.map(canonicalAddress).filter((a) => !seen.has(a));
    for (const a of mine) seen.add(a);
    for (const egress of pod.egress ?? []) {
      const address = canonicalAddress(egress);
      const group = byAddress.get(address);
      if (!group) continue;
      for (const p of mine) {
        if (familyOf(p) !== group.family) continue;
        if (owned.has(address)) group.pods.push({ pod: p, address });
        else group.waiting.push(p);
      }
    }
  }
  const ordered = [...groups.values()].sort((a, b) =>
    a.uplink === b.uplink ? a.family - b.family : a.uplink.localeCompare(b.uplink),
  );
  for (const group of ordered) {
    group.addresses.sort();
    group.pods.sort((a, b) => (a.pod < b.pod ? -1 : a.pod > b.pod ? 1 : 0));
    group.waiting.sort();
  }
  return ordered;
}

/**
 * The ids of the uplinks that carry failover addresses, from the config alone so that every gateway
 * node numbers them alike (uplink-ids.ts says why): 1, 2, … in the order of their names.
 */
export function failoverUplinkIds(config: GatewayConfig): Map<string, number> {
  const names = [...new Set((config.failover?.addresses ?? []).map((a) => a.uplink))].sort();
  return new Map(names.map((name, i) => [name, i + 1]));
}
