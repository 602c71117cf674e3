// The transaction that turns a table the agent applied into the next one it rendered, touching
// only what differs: an association, a new application class, a policy edit or a pod added or
// removed moves a few set elements and refills a few chains, where a full sync (planSync) would
// refill every chain and every set of the table. Applied atomically like any transaction, so
// packets see either the old ruleset or the new one.
import { elementOperations, type Operation } from './nftables.ts';
import type { Chain, NamedSet, SetElement, Table } from './model.ts';

/**
 * The operations that make a table holding exactly `before` hold exactly `after`, or undefined
 * when the change cannot be made in place and needs a full sync: a base chain's hook, a set's
 * declaration or an object's body changed (the kernel keeps those as created).
 */
export function planChanges(before: Table, after: Table): Operation[] | undefined {
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
  const refilled = after.chains.filter((chain) => {
    const was = old.chains.get(chain.name);
    return !was || (was.rules !== chain.rules && JSON.stringify(was.rules) !== JSON.stringify(chain.rules));
  });
  for (const chain of refilled)
    if (old.chains.has(chain.name)) ops.push({ op: 'flush', what: 'chain', name: chain.name });
  // Elements that go, before those that come: the same key with another verdict is a deletion
  // and an addition, and the kernel refuses to add a key it holds.
  const moved = after.sets
    .filter((set) => !set.dynamicTimeoutSeconds)
    .map((set) => ({ set, ...elementChanges(old.sets.get(set.name)?.elements ?? [], set.elements) }));
  for (const { set, gone } of moved) ops.push(...elementOperations('delete', set.name, gone));
  // Additions after the new chains exist: a verdict map's elements name chains.
  for (const { set, added } of moved) ops.push(...elementOperations('add', set.name, added));
  for (const chain of refilled) {
    for (const rule of chain.rules) ops.push({ op: 'add', what: 'rule', chain: chain.name, rule });
  }
  // What `after` no longer holds goes last, in the order that leaves nothing referring to what is
  // deleted: the chains are emptied (their rules name sets), the sets and maps go (a verdict map's
  // elements name chains), then the chains and the objects.
  const orphanChains = before.chains.filter((c) => !now.chains.has(c.name));
  for (const chain of orphanChains) ops.push({ op: 'flush', what: 'chain', name: chain.name });
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
