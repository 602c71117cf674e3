import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { allocateUplinkIds, UplinkIds } from './uplink-ids.ts';

describe('allocateUplinkIds', () => {
  it("gives failover addresses' uplinks their fixed ids over kept ones, and no other uplink those ids", () => {
    const kept = new Map([
      ['a', 1],
      ['f', 3],
    ]);
    const fixed = new Map([
      ['f', 1],
      ['elsewhere', 2],
    ]);
    expect([...allocateUplinkIds(kept, ['a', 'f', 'z'], 15, fixed)].sort()).toEqual([
      ['a', 3],
      ['f', 1],
      ['z', 4],
    ]);
    expect(() => allocateUplinkIds(new Map(), ['f'], 3, new Map([['f', 4]]))).toThrow(
      'uplink f needs id 4: the uplink id mark bits hold 3',
    );
  });

  it('keeps ids across restarts and additions, and reuses freed ones', () => {
    const first = allocateUplinkIds(new Map(), ['b', 'a'], 15);
    expect([...first]).toEqual([
      ['a', 1],
      ['b', 2],
    ]);
    const second = allocateUplinkIds(first, ['b', 'c'], 15);
    expect([...second].sort()).toEqual([
      ['b', 2],
      ['c', 1],
    ]);
  });

  it('gives anew an id the mark bits no longer hold, and refuses more uplinks than they hold', () => {
    const wide = new Map([
      ['a', 1],
      ['b', 200],
    ]);
    expect([...allocateUplinkIds(wide, ['a', 'b', 'c'], 3)]).toEqual([
      ['a', 1],
      ['b', 2],
      ['c', 3],
    ]);
    expect(() => allocateUplinkIds(new Map(), ['a', 'b', 'c', 'd'], 3)).toThrow(
      'more than 3 uplinks: the uplink id mark bits hold no more',
    );
  });
});

describe('UplinkIds', () => {
  it('keeps the ids in the state directory, so that another agent on the node numbers uplinks the same', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'naat-ids-'));
    try {
      const ids = new UplinkIds(dir);
      await ids.load();
      await ids.allocate(['b', 'a'], 15);
      await ids.allocate(['b', 'c'], 15);
      const restarted = new UplinkIds(dir);
      await restarted.load();
      expect([...restarted.current].sort()).toEqual([
        ['b', 2],
        ['c', 1],
      ]);
      expect(restarted.nameOf(2)).toBe('b');
      expect(restarted.nameOf(0)).toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
