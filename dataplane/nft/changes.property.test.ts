// An in-place change (planChanges) leaves the table exactly as a full sync of the new table
// would, for any two rendered tables: two moments of one config (associations, stamps, health
// and load moved) and two unrelated configs (chains, sets, maps and objects come and go). The
// fake keeps the kernel's referential checks, so an operation out of order fails here too; the
// kernel's own verdict is test/integration/render-nft.test.ts's.
import fc from 'fast-check';
import { renderCases, renderPairs } from '../../test/arbitraries.ts';
import { render, type RenderInput } from '../render.ts';
import { planChanges } from './changes.ts';
import { FakeNftables, planSync } from './nftables.ts';
import { renderElement, renderRule } from './model.ts';

/**
 * What the table holds, whatever the order it was made in: the kernel lists chains, sets and
 * elements in the order they were added, which differs between a full sync and a change.
 */
function holds(nft: FakeNftables): string[] {
  const table = nft.table();
  if (!table) return [];
  return [
    ...table.objects.map((o) => `${o.kind} ${o.name} { ${o.body} }`),
    ...table.sets.map(
      (s) => `${s.map ? 'map' : 'set'} ${s.name} ${s.type} ${[...s.elements.map(renderElement)].sort().join(', ')}`,
    ),
    ...table.chains.map((c) => `chain ${c.name} ${JSON.stringify(c.base)} ${c.rules.map(renderRule).join('; ')}`),
  ].sort();
}

async function fullSync(input: RenderInput): Promise<FakeNftables> {
  const nft = new FakeNftables();
  await nft.run(planSync(render(input).table, await nft.list()));
  return nft;
}

async function changedInPlace(
  from: RenderInput,
  to: RenderInput,
  remake?: number,
): Promise<{ nft: FakeNftables; inPlace: boolean }> {
  const nft = await fullSync(from);
  const ops = planChanges(render(from).table, render(to).table, remake);
  await nft.run(ops ?? planSync(render(to).table, await nft.list()));
  return { nft, inPlace: ops !== undefined };
}

test('two moments of one config: the change is made in place and gives the full sync’s table', async () => {
  await fc.assert(
    fc.asyncProperty(renderPairs, async ([from, to]) => {
      const { nft, inPlace } = await changedInPlace(from, to);
      expect(inPlace).toBe(true);
      expect(holds(nft)).toEqual(holds(await fullSync(to)));
    }),
    { numRuns: 150 },
  );
});

test('two unrelated configs: in place or by a full sync, the table is the full sync’s', async () => {
  let inPlace = 0;
  await fc.assert(
    fc.asyncProperty(renderCases, renderCases, async (from, to) => {
      const changed = await changedInPlace(from, to);
      if (changed.inPlace) inPlace++;
      expect(holds(changed.nft)).toEqual(holds(await fullSync(to)));
    }),
    { numRuns: 150 },
  );
  // Most unrelated pairs differ only in what can change in place; a run that never did would
  // test nothing of planChanges.
  expect(inPlace).toBeGreaterThan(50);
});

test('interval sets made afresh whenever they lose an element: the table is the full sync’s', async () => {
  let remade = 0;
  await fc.assert(
    fc.asyncProperty(fc.oneof(renderPairs, fc.tuple(renderCases, renderCases)), async ([from, to]) => {
      const ops = planChanges(render(from).table, render(to).table, 0);
      if (
        ops?.some((o) => o.what === 'set' && o.op === 'delete' && render(to).table.sets.some((s) => s.name === o.name))
      )
        remade++;
      const changed = await changedInPlace(from, to, 0);
      expect(holds(changed.nft)).toEqual(holds(await fullSync(to)));
    }),
    { numRuns: 150 },
  );
  expect(remade).toBeGreaterThan(20);
});

test('an unchanged table needs no operation', async () => {
  await fc.assert(
    fc.property(renderCases, (input) => {
      expect(planChanges(render(input).table, render(input).table)).toEqual([]);
    }),
    { numRuns: 50 },
  );
});
