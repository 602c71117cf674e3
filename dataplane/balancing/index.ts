// The one place a balancing mode is chosen. A new mode is a file beside this one that exports a
// Balancer, and a case here.
import type { GatewayConfig } from '../../contracts/gateway/index.ts';
import type { Balancer } from './balancer.ts';
import { leastLoaded } from './least-loaded.ts';
import { sourceSticky } from './source-sticky.ts';
import { weighted } from './weighted.ts';

export type { Balancer, Candidate, SourceOnUplink } from './balancer.ts';

export function balancerFor(balancing: GatewayConfig['balancing']): Balancer {
  switch (balancing.mode) {
    case 'Weighted':
      return weighted;
    case 'LeastLoaded':
      return leastLoaded;
    case 'SourceSticky':
      return sourceSticky(balancing.stickySeconds ?? 300);
  }
}
