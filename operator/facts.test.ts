import type { KubernetesObject } from '@kubernetes/client-node';
import { factsChanged } from './facts.ts';

type Labelled = KubernetesObject & { status?: string };

test('a change counts once what the reader takes of the object changed, or when it went away', () => {
  const cache = new Map<string, Labelled>();
  const changed = factsChanged<Labelled>({ get: (key) => cache.get(key) }, (o) => o.metadata?.labels);
  const object = (labels: Record<string, string> | undefined, status = '') => ({ metadata: { labels }, status });
  /** As the cache calls its handlers: the object before the change, then after it. */
  const change = (before: Labelled | undefined, after: Labelled | undefined) => {
    if (after) cache.set('k', after);
    else cache.delete('k');
    return [...(before ? [changed('k', before)] : []), ...(after ? [changed('k', after)] : [])];
  };
  const a = object({ app: 'a' });
  expect(change(undefined, a)).toEqual([true]);
  expect(change(a, object({ app: 'a' }, 'written'))).toEqual([false, false]);
  const b = object({ app: 'b' });
  expect(change(a, b)).toEqual([false, true]);
  const bare = object(undefined);
  expect(change(b, bare)).toEqual([false, true]);
  expect(change(bare, object(undefined, 'written'))).toEqual([false, false]);
  cache.delete('k');
  expect(changed('k', bare)).toBe(true);
  // Gone and back: counted again even with the same facts.
  expect(change(undefined, bare)).toEqual([true]);
});
