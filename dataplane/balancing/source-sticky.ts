// SourceSticky: a source keeps its uplink while it has flows there and for `stickySeconds` after
// the last one ended (a dynamic set per uplink and family: the uplink's chain adds a source when it
// places a flow, and the agent renews the sources of open and just-ended flows, stickyRefresh); a
// new source is placed by a weighted hash of its address (RFC 4787 "paired" pooling).
import type { Operation } from '../nft/nftables.ts';
import type { Family } from '../nft/model.ts';
import type { Balancer, SourceOnUplink } from './balancer.ts';

const stickySet = (id: number, f: Family) => `sticky${id}_${f}`;

/**
 * How often the agent renews the sticky sources: often enough that a source with an open flow
 * never expires (half its timeout), and at least every 10 s, so that a source whose last flow
 * ended keeps its uplink for stickySeconds, and at most 10 s more.
 */
export const stickyRefreshMs = (stickySeconds: number): number => Math.min((stickySeconds * 1000) / 2, 10_000);

/**
 * The transaction that restarts the timeout of each source in `sources` (in the sets that exist,
 * `sets`): adding an element that is there leaves its timer alone, so each is added (there now),
 * deleted and added again, all in one transaction that the packet path sees whole.
 */
export function stickyRefresh(sources: Iterable<SourceOnUplink>, sets: ReadonlySet<string>): Operation[] {
  const bySet = new Map<string, Set<string>>();
  for (const { uplink, family, source } of sources) {
    const set = stickySet(uplink, family);
    if (!sets.has(set)) continue;
    let addresses = bySet.get(set);
    if (!addresses) bySet.set(set, (addresses = new Set()));
    addresses.add(source);
  }
  return [...bySet].flatMap(([set, addresses]) => {
    const elements = [...addresses].sort().map((address) => ({ key: [{ kind: 'address', address } as const] }));
    return (['add', 'delete', 'add'] as const).map((op) => ({ op, what: 'element', set, elements }) as const);
  });
}

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
    renewal: { intervalMs: stickyRefreshMs(stickySeconds), operations: stickyRefresh },
  };
}
