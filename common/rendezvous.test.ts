import { rendezvous } from './rendezvous.ts';

describe('rendezvous', () => {
  const keys = Array.from({ length: 600 }, (_, i) => `ns/pod-${i}`);

  it('gives every key the same candidate whatever order the candidates come in', () => {
    for (const key of keys.slice(0, 50))
      expect(rendezvous(key, ['a', 'b', 'c'])).toBe(rendezvous(key, ['c', 'a', 'b']));
  });

  it('spreads keys over the candidates', () => {
    const counts = new Map<string, number>();
    for (const key of keys) {
      const chosen = rendezvous(key, ['a', 'b', 'c'])!;
      counts.set(chosen, (counts.get(chosen) ?? 0) + 1);
    }
    for (const name of ['a', 'b', 'c']) expect(counts.get(name)).toBeGreaterThan(150);
  });

  it('moves only the keys of a candidate that goes', () => {
    for (const key of keys) {
      const before = rendezvous(key, ['a', 'b', 'c']);
      const after = rendezvous(key, ['a', 'c']);
      if (before !== 'b') expect(after).toBe(before);
      else expect(['a', 'c']).toContain(after);
    }
  });

  it('has no answer without candidates', () => {
    expect(rendezvous('ns/pod', [])).toBeUndefined();
  });
});
