import { WorkQueue, type Clock } from './workqueue.ts';

/** A clock that moves only when told; timers due by then run in order. */
class FakeClock implements Clock {
  time = 0;
  #timers = new Map<number, { at: number; callback: () => void }>();
  #next = 0;

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.#next++;
    this.#timers.set(id, { at: this.time + ms, callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  advance(ms: number): void {
    const end = this.time + ms;
    for (;;) {
      const due = [...this.#timers].filter(([, t]) => t.at <= end).sort(([, a], [, b]) => a.at - b.at)[0];
      if (!due) break;
      this.#timers.delete(due[0]);
      this.time = due[1].at;
      due[1].callback();
    }
    this.time = end;
  }

  get pending(): number {
    return this.#timers.size;
  }
}

/** The keys get() hands out without waiting, in order (each is then held until done). */
async function drain(queue: WorkQueue): Promise<string[]> {
  const keys: string[] = [];
  while (queue.len > 0) keys.push((await queue.get())!);
  return keys;
}

test('a key added many times waits once, and keys come out in the order they were first added', async () => {
  const queue = new WorkQueue();
  for (const key of ['ns/a', 'ns/b', 'ns/a', 'ns/c', 'ns/b', 'ns/a']) queue.add(key);
  expect(queue.len).toBe(3);
  expect(await drain(queue)).toEqual(['ns/a', 'ns/b', 'ns/c']);
});

test('a key added while a worker holds it is handed out again only after done', async () => {
  const queue = new WorkQueue();
  queue.add('ns/a');
  const held = await queue.get();
  expect(held).toBe('ns/a');

  // Changes arrive while the reconcile runs: the key is not handed to a second worker...
  queue.add('ns/a');
  queue.add('ns/a');
  expect(queue.len).toBe(0);
  let second: string | undefined;
  const waiting = queue.get().then((key) => (second = key));
  await Promise.resolve();
  expect(second).toBeUndefined();

  // ...but once, after the first worker is done, so the latest state is reconciled.
  queue.done('ns/a');
  await waiting;
  expect(second).toBe('ns/a');
  queue.done('ns/a');
  expect(queue.len).toBe(0);
});

test('other keys are handed out while one is held', async () => {
  const queue = new WorkQueue();
  queue.add('ns/a');
  await queue.get();
  queue.add('ns/a');
  queue.add('ns/b');
  expect(await queue.get()).toBe('ns/b');
});

test('a worker waiting in get receives the next key added', async () => {
  const queue = new WorkQueue();
  const next = queue.get();
  queue.add('ns/a');
  expect(await next).toBe('ns/a');
  // The key is held: adding it again does not queue it beside the worker.
  queue.add('ns/a');
  expect(queue.len).toBe(0);
});

test('addAfter holds a key back, and the earlier of two delays wins', async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock });
  queue.addAfter('ns/a', 100);
  queue.addAfter('ns/a', 500);
  queue.addAfter('ns/b', 300);
  queue.addAfter('ns/b', 50);
  expect(clock.pending).toBe(2);
  clock.advance(49);
  expect(queue.len).toBe(0);
  clock.advance(1);
  expect(await drain(queue)).toEqual(['ns/b']);
  clock.advance(50);
  expect(await drain(queue)).toEqual(['ns/a']);
  clock.advance(1000);
  expect(queue.len).toBe(0);
  expect(clock.pending).toBe(0);

  // No delay means now.
  queue.addAfter('ns/c', 0);
  expect(queue.len).toBe(1);
});

test('a key held back and added meanwhile is still handed out once per wait', async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock });
  queue.addAfter('ns/a', 100);
  queue.add('ns/a');
  expect(await drain(queue)).toEqual(['ns/a']);
  queue.done('ns/a');
  clock.advance(100);
  expect(await drain(queue)).toEqual(['ns/a']);
});

test('rate-limited adds back off exponentially per key up to the cap, and forget resets', () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock, baseDelayMs: 5, maxDelayMs: 1000 });
  const delays = Array.from({ length: 10 }, () => queue.addRateLimited('ns/a'));
  expect(delays).toEqual([5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
  expect(queue.retries('ns/a')).toBe(10);

  // Another key has its own count.
  expect(queue.addRateLimited('ns/b')).toBe(5);

  queue.forget('ns/a');
  expect(queue.retries('ns/a')).toBe(0);
  expect(queue.addRateLimited('ns/a')).toBe(5);
});

test('a rate-limited key becomes ready after its delay', async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock, baseDelayMs: 5 });
  queue.addRateLimited('ns/a');
  queue.addRateLimited('ns/a');
  // The second call asked for 10 ms, but the first wait (5 ms) is earlier and stands.
  clock.advance(4);
  expect(queue.len).toBe(0);
  clock.advance(1);
  expect(await drain(queue)).toEqual(['ns/a']);
});

test('the default backoff starts at 5 ms and stops growing at five minutes', () => {
  const queue = new WorkQueue({ clock: new FakeClock() });
  const delays = Array.from({ length: 20 }, () => queue.addRateLimited('ns/a'));
  expect(delays[0]).toBe(5);
  expect(delays[1]).toBe(10);
  expect(delays.at(-1)).toBe(300_000);
});

test('shutdown ends a waiting get and later ones', async () => {
  const queue = new WorkQueue();
  const waiting = queue.get();
  queue.shutdown();
  expect(queue.shuttingDown).toBe(true);
  expect(await waiting).toBeUndefined();
  expect(await queue.get()).toBeUndefined();
});

test('shutdown drops queued and delayed keys and ignores later adds', async () => {
  const clock = new FakeClock();
  const queue = new WorkQueue({ clock });
  queue.add('ns/a');
  expect(await queue.get()).toBe('ns/a');
  queue.add('ns/b');
  queue.addAfter('ns/c', 100);
  queue.add('ns/a');

  queue.shutdown();
  expect(queue.len).toBe(0);
  expect(clock.pending).toBe(0);

  // The worker that held ns/a finishes; nothing is queued again, now or later.
  queue.done('ns/a');
  queue.add('ns/d');
  queue.addAfter('ns/e', 10);
  queue.addRateLimited('ns/f');
  clock.advance(1000);
  expect(queue.len).toBe(0);
  expect(await queue.get()).toBeUndefined();
});
