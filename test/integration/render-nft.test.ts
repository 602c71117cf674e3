// The kernel takes every table the renderer makes from an accepted config: random configs,
// associations, stamps and uplink conditions (test/arbitraries.ts), checked by `nft -c` from
// scratch in an empty network namespace, and applied for real one after another in another
// namespace, so that every sync from one random table to the next is tried too. Needs root.
import fc from 'fast-check';
import { exec } from '../../dataplane/exec.ts';
import { ExecNftables, namesOf, operationText, planSync, type TableNames } from '../../dataplane/nft/nftables.ts';
import { render } from '../../dataplane/render.ts';
import { renderCases } from '../arbitraries.ts';

const namespace = `naat-render-${process.pid}`;
const nft = new ExecNftables(['ip', 'netns', 'exec', namespace, 'nft']);

beforeAll(async () => {
  const { code, stderr } = await exec(['ip'], ['netns', 'add', namespace]);
  if (code !== 0) throw new Error(`ip netns add failed: ${stderr}`);
});

afterAll(async () => {
  await exec(['ip'], ['netns', 'delete', namespace]);
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
    { numRuns: 120 },
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
