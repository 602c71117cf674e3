import { eachAtMost } from './concurrency.ts';

/** Work that ends when the test says, recording what is under way. */
function setUp() {
  const running = new Set<number>();
  const started: number[] = [];
  const ends = new Map<number, { resolve: () => void; reject: (error: Error) => void }>();
  const work = (item: number) =>
    new Promise<void>((resolve, reject) => {
      started.push(item);
      running.add(item);
      ends.set(item, {
        resolve: () => (running.delete(item), resolve()),
        reject: (error) => (running.delete(item), reject(error)),
      });
    });
  const tick = () => new Promise((resolve) => setImmediate(resolve));
  return { running, started, ends, work, tick };
}

test('works on every item in order, never more than the limit at once', async () => {
  const { running, started, ends, work, tick } = setUp();
  const done = eachAtMost([1, 2, 3, 4, 5], 2, work);
  await tick();
  expect([...running]).toEqual([1, 2]);
  ends.get(2)!.resolve();
  await tick();
  expect([...running]).toEqual([1, 3]);
  for (const item of [1, 3, 4, 5]) {
    ends.get(item)!.resolve();
    await tick();
    expect(running.size).toBeLessThanOrEqual(2);
  }
  await done;
  expect(started).toEqual([1, 2, 3, 4, 5]);
});

test('after a failure starts nothing more, waits for the work under way, and throws the first failure', async () => {
  const { running, started, ends, work, tick } = setUp();
  let settled = false;
  const done = eachAtMost([1, 2, 3, 4], 2, work).finally(() => (settled = true));
  await tick();
  ends.get(1)!.reject(new Error('one failed'));
  await tick();
  expect(started).toEqual([1, 2]);
  expect(settled).toBe(false);
  ends.get(2)!.resolve();
  await expect(done).rejects.toThrow('one failed');
  expect(running.size).toBe(0);
});
