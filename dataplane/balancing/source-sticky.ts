// SourceSticky: a source that used an uplink within `stickySeconds` stays on it (a dynamic set per
// uplink and family, refreshed by the uplink's chain); a new source is placed by a weighted hash
// of its address (RFC 4787 "paired" pooling).
import type { Family } from '../nft/model.ts';
import type { Balancer } from './balancer.ts';

const stickySet = (id: number, f: Family) => `sticky${id}_${f}`;

export function sourceSticky(stickySeconds: number): Balancer {
  return {
    pickRules: (f, candidates) => [
      ...candidates.map((c) => ({
        match: [{ kind: 'family', family: f } as const, { kind: 'saddr', family: f, set: stickySet(c.id, f) } as const],
        then: [{ kind: 'goto', chain: c.chain } as const],
      })),
      {
        match: [{ kind: 'family', family: f }],
        then: [
          {
            kind: 'pick',
            by: 'source',
            family: f,
            slots: candidates.map((c) => ({ chain: c.chain, count: c.uplink.weight })),
          },
        ],
      },
    ],
    uplinkParts: (id, f) => ({
      set: {
        name: stickySet(id, f),
        type: f === 4 ? 'ipv4_addr' : 'ipv6_addr',
        dynamicTimeoutSeconds: stickySeconds,
        elements: [],
      },
      rule: { match: [{ kind: 'family', family: f }], then: [{ kind: 'updateSet', family: f, set: stickySet(id, f) }] },
    }),
  };
}
