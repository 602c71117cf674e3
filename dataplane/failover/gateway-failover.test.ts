import { replicaReadiness } from './gateway-failover.ts';

describe('replicaReadiness', () => {
  it('is ready once every peer has sent a whole round of its flows', () => {
    expect(replicaReadiness(['g2', 'g3'], new Set(['g2', 'g3']), 500)).toBeUndefined();
    expect(replicaReadiness([], new Set(), 0)).toBeUndefined();
  });

  it('names the peers it still waits for, and how long it may still wait', () => {
    expect(replicaReadiness(['g2', 'g3'], new Set(['g3']), 2_500, 10_000)).toBe(
      'waiting for the flows of gateway node g2 (at most 8 s more)',
    );
    expect(replicaReadiness(['g2', 'g3'], new Set(), 0, 10_000)).toBe(
      'waiting for the flows of gateway nodes g2, g3 (at most 10 s more)',
    );
  });

  it('stops waiting for a peer that never sends (down, or unable to stream) after the catch-up time', () => {
    expect(replicaReadiness(['g2'], new Set(), 10_000, 10_000)).toBeUndefined();
  });
});
