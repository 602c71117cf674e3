// The association and stamp maps change several times a second; when nothing else in the table
// changed, a sync moves only their elements instead of refilling the whole table.
import { elementOperations, type Operation } from './nft/nftables.ts';
import { renderElement, type SetElement, type Table } from './nft/model.ts';

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
    const old = elementsOf(before, name);
    const now = elementsOf(after, name);
    const missingFrom = (from: Map<string, SetElement>, than: Map<string, SetElement>) =>
      [...from].filter(([text]) => !than.has(text)).map(([, element]) => element);
    ops.push(...elementOperations('delete', name, missingFrom(old, now)));
    ops.push(...elementOperations('add', name, missingFrom(now, old)));
  }
  return ops;
}

/** A map's elements by their nft text, which is what makes two elements the same. */
function elementsOf(table: Table, name: string): Map<string, SetElement> {
  return new Map((table.sets.find((s) => s.name === name)?.elements ?? []).map((e) => [renderElement(e), e]));
}
