// LeastLoaded: Weighted with weights recomputed from the flow table, so that an uplink's share
// falls as its active flows per unit of weight rise.
import type { CompiledUplink } from '../../contracts/gateway/index.ts';
import { randomPick, type Balancer } from './balancer.ts';

/**
 * Slot counts for LeastLoaded: an uplink's share falls as its active flows per unit of weight
 * rise, so new flows go where there is room until the loads even out.
 */
export function leastLoadedCounts(uplinks: readonly CompiledUplink[], load: ReadonlyMap<string, number>): number[] {
  const shares = uplinks.map((u) => u.weight / (1 + (load.get(u.name) ?? 0) / u.weight));
  const top = Math.max(...shares);
  return shares.map((share) => Math.max(1, Math.round((1000 * share) / top)));
}

export const leastLoaded: Balancer = {
  pickRules: (f, candidates, load) =>
    randomPick(
      f,
      candidates,
      leastLoadedCounts(
        candidates.map((c) => c.uplink),
        load,
      ),
    ),
  loadKey: (uplinks, load) => leastLoadedCounts(uplinks, load).join(','),
};
