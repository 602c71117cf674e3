// The kernel takes every table the renderer makes from an accepted config: random configs,
// associations, stamps and uplink conditions (test/arbitraries.ts), checked by `nft -c` from
// scratch in an empty network namespace, and applied for real one after another in another
// namespace, so that every sync from one random table to the next is tried too. A change made in
// place (planChanges) leaves the kernel holding what a full sync of the new table gives. Needs root.
import fc from 'fast-check';
import { exec } from '../../dataplane/exec.ts';
import { planChanges } from '../../dataplane/nft/changes.ts';
import { ExecNftables, namesOf, operationText, planSync, type TableNames } from '../../dataplane/nft/nftables.ts';
import { tableFamily, tableName } from '../../dataplane/nft/model.ts';
import { render } from '../../dataplane/render.ts';
import { renderCases, renderPairs } from '../arbitraries.ts';

const namespace = `naat-render-${process.pid}`;
const other = `naat-render-full-${process.pid}`;
const nftIn = (name: string) => new ExecNftables(['ip', 'netns', 'exec', name, 'nft']);
const nft = nftIn(namespace);
const otherNft = nftIn(other);
// Shrinking a failure takes a real nft run a step, which could outlast the test's timeout and hide
// the counterexample: past this time fast-check stops and reports the smallest one found so far.
const bounded = [fc.interruptAfterTimeLimit(60_000)];

beforeAll(async () => {
  for (const name of [namespace, other]) {
    const { code, stderr } = await exec(['ip'], ['netns', 'add', name]);
    if (code !== 0) throw new Error(`ip netns add failed: ${stderr}`);
  }
});

afterAll(async () => {
  await Promise.all([nft.close(), otherNft.close()]);
  for (const name of [namespace, other]) await exec(['ip'], ['netns', 'delete', name]);
});

test('nft takes the table of any accepted config, from scratch and as a sync from the one before', async () => {
  let checked = 0;
  await fc.assert(
    fc.asyncProperty(renderCases, async (input) => {
      const { table } = render(input);
      const script = `${planSync(table, undefined).map(operationText).join('\n')}\n`;
      const check = await exec(['unshare', '--net', 'nft', '-c', '-f', '-'], [], script);
      expect(check.stderr).toBe('');
      expect(check.code).toBe(0);
      await nft.run(planSync(table, await nft.list()));
      // Exactly what the table should hold, nothing left over from the one before.
      expect(sorted(await nft.list())).toEqual(sorted(namesOf(table)));
      checked++;
    }),
    { numRuns: 120, plugins: bounded },
  );
  expect(checked).toBeGreaterThanOrEqual(120);
});

const sorted = (names: TableNames | undefined) =>
  names && {
    chains: [...names.chains].sort(),
    sets: [...names.sets].sort(),
    maps: [...names.maps].sort(),
    objects: names.objects.map(({ kind, name }) => `${kind} ${name}`).sort(),
  };

/**
 * The table as the kernel lists it, without what depends on the order it was made in: handles,
 * the order of declarations and of set elements (rules keep their order within a chain).
 */
async function kernelHolds(name: string): Promise<string[]> {
  const listed = await exec(['ip'], ['netns', 'exec', name, 'nft', '-j', 'list', 'table', tableFamily, tableName]);
  expect(listed.stderr).toBe('');
  const items = (JSON.parse(listed.stdout) as { nftables: Array<Record<string, Record<string, unknown>>> }).nftables;
  return items
    .filter((item) => !('metainfo' in item))
    .map((item) => {
      const [kind, body] = Object.entries(item)[0]!;
      const rest = { ...body };
      delete rest.handle;
      if (Array.isArray(rest.elem)) rest.elem = rest.elem.map((e) => JSON.stringify(e)).sort();
      return `${kind} ${JSON.stringify(rest)}`;
    })
    .sort();
}

test('a change made in place leaves the kernel holding what a full sync of the new table gives', async () => {
  const reset = (name: string) => exec(['ip'], ['netns', 'exec', name, 'nft', 'flush', 'ruleset']);
  let inPlace = 0;
  await fc.assert(
    fc.asyncProperty(fc.oneof(renderPairs, fc.tuple(renderCases, renderCases)), async ([from, to]) => {
      await Promise.all([reset(namespace), reset(other)]);
      const before = render(from).table;
      const after = render(to).table;
      await nft.run(planSync(before, undefined));
      const ops = planChanges(before, after);
      if (ops) inPlace++;
      await nft.run(ops ?? planSync(after, namesOf(before)));
      await otherNft.run(planSync(after, undefined));
      expect(await kernelHolds(namespace)).toEqual(await kernelHolds(other));
    }),
    { numRuns: 60, plugins: bounded },
  );
  expect(inPlace).toBeGreaterThan(30);
});
