// The association and stamp maps change several times a second; when nothing else in the table
// changed, a sync moves only their elements instead of refilling the whole table.
import { elementOperations, type Operation } from './nft/nftables.ts';
import type { Table } from './nft/model.ts';

/** Maps whose elements change with associations and stamps; they change in place, not by a full sync. */
const flowMaps = new Set(['flows4', 'flows6', 'stamps4', 'stamps6']);

/** Everything but the association maps' elements: when it is unchanged, only those elements move. */
export function structureOf(table: Table): string {
  return JSON.stringify({ ...table, sets: table.sets.map((s) => (flowMaps.has(s.name) ? { ...s, elements: [] } : s)) });
}

/** The element deletions and additions that turn the flow maps of `before` into those of `after`. */
export function planFlowMapChanges(before: Table, after: Table): Operation[] {
  const ops: Operation[] = [];
  for (const name of flowMaps) {
    const old = new Set(before.sets.find((s) => s.name === name)?.elements);
    const now = new Set(after.sets.find((s) => s.name === name)?.elements);
    ops.push(
      ...elementOperations(
        'delete',
        name,
        [...old].filter((e) => !now.has(e)),
      ),
    );
    ops.push(
      ...elementOperations(
        'add',
        name,
        [...now].filter((e) => !old.has(e)),
      ),
    );
  }
  return ops;
}
