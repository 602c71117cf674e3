// Weighted: each new flow picks an uplink at random, in proportion to the uplinks' weights.
import { randomPick, type Balancer } from './balancer.ts';

export const weighted: Balancer = {
  pickRules: (f, candidates) =>
    randomPick(
      f,
      candidates,
      candidates.map((c) => c.uplink.weight),
    ),
};
