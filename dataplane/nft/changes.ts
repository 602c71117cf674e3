// The transaction that turns a table the agent applied into the next one it rendered, touching
// only what differs: an association, a new application class, a policy edit or a pod added or
// removed moves a few set elements and refills a few chains, where a full sync (planSync) would
// refill every chain and every set of the table. Applied atomically like any transaction, so
// packets see either the old ruleset or the new one.
import { elementOperations, type Operation } from './nftables.ts';
import { ruleReferences, type Chain, type NamedSet, type SetElement, type Table } from './model.ts';

/**
 * nft reads the whole of an interval set to delete each element of it: about 1 µs per element
 * the set holds, for each one deleted (4 ms in a map of 4,000), where making the set afresh
 * costs 30 to 60 µs per element it holds. Past this many deletions, the set is made afresh.
 */
export const remakeAbove = 32;

/**
 * The operations that make a table holding exactly `before` hold exactly `after`, or undefined
 * when the change cannot be made in place and needs a full sync: a base chain's hook, a set's
 * declaration or an object's body changed (the kernel keeps those as created). An interval set
 * that loses more than `remake` elements is deleted and made afresh, with the chains that look
 * it up emptied before and refilled after, in the same transaction.
 */
export function planChanges(before: Table, after: Table, remake = remakeAbove): Operation[] | undefined {
  const old = {
    chains: byName(before.chains),
    sets: byName(before.sets),
    objects: new Map(before.objects.map((o) => [`${o.kind}/${o.name}`, o])),
  };
  const now = {
    chains: byName(after.chains),
    sets: byName(after.sets),
    objects: new Map(after.objects.map((o) => [`${o.kind}/${o.name}`, o])),
  };
  for (const chain of after.chains) {
    const was = old.chains.get(chain.name);
    if (was && JSON.stringify(was.base) !== JSON.stringify(chain.base)) return undefined;
  }
  for (const set of after.sets) {
    const was = old.sets.get(set.name);
    if (was && declarationOf(was) !== declarationOf(set)) return undefined;
  }
  for (const [key, object] of now.objects) {
    const was = old.objects.get(key);
    if (was && was.body !== object.body) return undefined;
  }

  const ops: Operation[] = [];
  for (const [key, object] of now.objects) if (!old.objects.has(key)) ops.push({ op: 'add', what: 'object', object });
  for (const set of after.sets) {
    if (!old.sets.has(set.name)) ops.push({ op: 'add', what: 'set', set: withoutElements(set) });
  }
  for (const chain of after.chains) {
    if (!old.chains.has(chain.name)) ops.push({ op: 'add', what: 'chain', chain: withoutRules(chain) });
  }
  const moved = after.sets
    .filter((set) => !set.dynamicTimeoutSeconds)
    .map((set) => ({ set, ...elementChanges(old.sets.get(set.name)?.elements ?? [], set.elements) }));
  const remade = new Set(moved.filter(({ set, gone }) => set.interval && gone.length > remake).map(({ set }) => set));
  const remadeNames = new Set([...remade].map((set) => set.name));
  const refilled = after.chains.filter((chain) => {
    const was = old.chains.get(chain.name);
    if (!was || (was.rules !== chain.rules && JSON.stringify(was.rules) !== JSON.stringify(chain.rules))) return true;
    return remadeNames.size > 0 && chain.rules.some((r) => ruleReferences(r).sets.some((n) => remadeNames.has(n)));
  });
  const orphanChains = before.chains.filter((c) => !now.chains.has(c.name));
  // Emptied first: nothing may look a set up when it is deleted.
  for (const chain of [...refilled, ...orphanChains])
    if (old.chains.has(chain.name)) ops.push({ op: 'flush', what: 'chain', name: chain.name });
  // Elements that go, before those that come: the same key with another verdict is a deletion
  // and an addition, and the kernel refuses to add a key it holds.
  for (const { set, gone } of moved) if (!remade.has(set)) ops.push(...elementOperations('delete', set.name, gone));
  for (const set of remade) {
    ops.push({ op: 'delete', what: 'set', name: set.name, ...(set.map ? { map: true } : {}) });
    ops.push({ op: 'add', what: 'set', set: withoutElements(set) });
  }
  // Additions after the new chains exist: a verdict map's elements name chains.
  for (const { set, added } of moved)
    ops.push(...elementOperations('add', set.name, remade.has(set) ? set.elements : added));
  for (const chain of refilled) {
    for (const rule of chain.rules) ops.push({ op: 'add', what: 'rule', chain: chain.name, rule });
  }
  // What `after` no longer holds goes last, in the order that leaves nothing referring to what is
  // deleted: the sets and maps go once the chains are empty (their rules name sets), then the
  // chains (a verdict map's elements name chains) and the objects.
  for (const set of before.sets) {
    if (!now.sets.has(set.name))
      ops.push({ op: 'delete', what: 'set', name: set.name, ...(set.map ? { map: true } : {}) });
  }
  for (const chain of orphanChains) ops.push({ op: 'delete', what: 'chain', name: chain.name });
  for (const [key, { kind, name }] of old.objects) {
    if (!now.objects.has(key)) ops.push({ op: 'delete', what: 'object', kind, name });
  }
  return ops;
}

function byName<T extends { name: string }>(items: readonly T[]): Map<string, T> {
  return new Map(items.map((item) => [item.name, item]));
}

function declarationOf(set: NamedSet): string {
  return JSON.stringify(withoutElements(set));
}

function withoutElements({ elements: _, ...set }: NamedSet): Omit<NamedSet, 'elements'> {
  return set;
}

function withoutRules({ rules: _, ...chain }: Chain): Omit<Chain, 'rules'> {
  return chain;
}

/**
 * The elements only `before` holds and those only `after` holds. Told apart by their JSON, which is
 * cheaper to make than their nft text: two elements the kernel holds as one but written differently
 * would only be deleted and added again in the same transaction.
 */
function elementChanges(
  before: readonly SetElement[],
  after: readonly SetElement[],
): { gone: SetElement[]; added: SetElement[] } {
  // A set the renderer reused (its ConfigMemo) is the same array.
  if (before === after) return { gone: [], added: [] };
  const was = before.map((e) => JSON.stringify(e));
  const is = after.map((e) => JSON.stringify(e));
  // Most syncs leave most sets as they were.
  if (was.length === is.length && was.every((text, i) => text === is[i])) return { gone: [], added: [] };
  const isSet = new Set(is);
  // What was there already, or came earlier in `after`: added once.
  const seen = new Set(was);
  const added = after.filter((_, i) => !seen.has(is[i]!) && seen.add(is[i]!));
  return { gone: before.filter((_, i) => !isSet.has(was[i]!)), added };
}
