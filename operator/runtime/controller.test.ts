import { Controller, type ControllerOptions, type ReconcileResult, type WatchedCache } from './controller.ts';
import type { ChangeHandler } from '../../common/kube/index.ts';
import type { Logger } from '../../common/index.ts';

/** A cache whose sync and changes the test drives. */
class FakeCache<T> implements WatchedCache<T> {
  #handlers: ChangeHandler<T>[] = [];
  #sync!: (synced: boolean) => void;
  readonly #synced = new Promise<boolean>((resolve) => (this.#sync = resolve));

  waitForSync(): Promise<boolean> {
    return this.#synced;
  }

  onChange(handler: ChangeHandler<T>): void {
    this.#handlers.push(handler);
  }

  sync(synced = true): void {
    this.#sync(synced);
  }

  change(key: string, object: T): void {
    for (const handler of this.#handlers) handler(key, object);
  }
}

const quiet: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };
const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(condition: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await tick(2);
  }
}

const controllers: Controller[] = [];

function controller(
  reconcile: (key: string) => Promise<ReconcileResult>,
  options: Partial<ControllerOptions> = {},
): Controller {
  const made = new Controller({ name: 'test', reconcile, log: quiet, queue: { baseDelayMs: 1 }, ...options });
  controllers.push(made);
  return made;
}

afterEach(async () => {
  await Promise.all(controllers.splice(0).map((made) => made.stop()));
});

test('workers start only once every cache has synced', async () => {
  const watched = new FakeCache<string>();
  const read = new FakeCache<string>();
  const reconciled: string[] = [];
  const made = controller(async (key) => void reconciled.push(key), { caches: [read] });
  made.watch(watched);
  void made.run();
  watched.change('ns/a', 'object');
  watched.sync();
  await tick(10);
  expect(reconciled).toEqual([]);
  read.sync();
  await until(() => reconciled.length === 1, 'the first reconcile');
  expect(reconciled).toEqual(['ns/a']);
});

test('a mapping function enqueues the keys it returns instead of the object’s own', async () => {
  const pods = new FakeCache<{ owner: string }>();
  const reconciled: string[] = [];
  const made = controller(async (key) => void reconciled.push(key));
  made.watch(pods, (_key, pod) => [pod.owner]);
  pods.sync();
  void made.run();
  pods.change('ns/pod-1', { owner: 'ns/gateway' });
  pods.change('ns/pod-2', { owner: 'ns/gateway' });
  await until(() => reconciled.length >= 1, 'a reconcile');
  await tick(10);
  expect(reconciled).toEqual(['ns/gateway']);
});

test('a key is never reconciled twice at once, and its latest state is always reconciled last', async () => {
  const cache = new FakeCache<number>();
  const state = new Map<string, number>();
  const running = new Set<string>();
  const overlaps: string[] = [];
  const lastSeen = new Map<string, number>();
  let concurrent = 0;
  let maxConcurrent = 0;
  const made = controller(
    async (key) => {
      if (running.has(key)) overlaps.push(key);
      running.add(key);
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      const seen = state.get(key)!;
      await tick(Math.random() * 3);
      lastSeen.set(key, seen);
      concurrent--;
      running.delete(key);
    },
    { workers: 4 },
  );
  made.watch(cache);
  cache.sync();
  void made.run();
  const keys = ['ns/a', 'ns/b', 'ns/c'];
  for (let version = 1; version <= 60; version++) {
    const key = keys[version % keys.length]!;
    state.set(key, version);
    cache.change(key, version);
    if (version % 7 === 0) await tick(1);
  }
  await until(() => keys.every((key) => lastSeen.get(key) === state.get(key)), 'the latest state of every key');
  await until(() => made.queue.len === 0 && running.size === 0, 'the queue to drain');
  expect(overlaps).toEqual([]);
  // Different keys did run side by side.
  expect(maxConcurrent).toBeGreaterThan(1);
});

test('a failing reconcile is retried with growing delays until it succeeds, which resets the backoff', async () => {
  const cache = new FakeCache<string>();
  const times: number[] = [];
  const made = controller(
    async () => {
      times.push(performance.now());
      if (times.length < 5) throw new Error('not yet');
    },
    { queue: { baseDelayMs: 8 } },
  );
  made.watch(cache);
  cache.sync();
  void made.run();
  cache.change('ns/a', 'object');
  await until(() => times.length === 5, 'five attempts');
  const gaps = times.slice(1).map((time, i) => time - times[i]!);
  // 8, 16, 32 and 64 ms (timers may fire a little late, never early).
  gaps.forEach((gap, i) => expect(gap).toBeGreaterThanOrEqual(8 * 2 ** i - 1));
  expect(made.queue.retries('ns/a')).toBe(0);
});

test('a reconcile can ask to run again after a while', async () => {
  const cache = new FakeCache<string>();
  const times: number[] = [];
  const made = controller(async () => {
    times.push(performance.now());
    return times.length < 3 ? { requeueAfterMs: 20 } : undefined;
  });
  made.watch(cache);
  cache.sync();
  void made.run();
  cache.change('ns/a', 'object');
  await until(() => times.length === 3, 'three reconciles');
  expect(times[1]! - times[0]!).toBeGreaterThanOrEqual(19);
  await tick(50);
  expect(times.length).toBe(3);
});

test('the around hook wraps every reconcile and sees its outcome', async () => {
  const cache = new FakeCache<string>();
  const spans: string[] = [];
  const made = controller(
    async (key) => {
      spans.push(`run ${key}`);
      if (key === 'ns/bad') throw new Error('broken');
    },
    {
      around: async (key, next) => {
        spans.push(`begin ${key}`);
        try {
          return await next();
        } catch (error) {
          spans.push(`error ${key}: ${(error as Error).message}`);
          throw error;
        } finally {
          spans.push(`end ${key}`);
        }
      },
    },
  );
  made.watch(cache);
  cache.sync();
  void made.run();
  cache.change('ns/good', 'object');
  await until(() => spans.includes('end ns/good'), 'the good reconcile');
  cache.change('ns/bad', 'object');
  await until(() => spans.includes('end ns/bad'), 'the bad reconcile');
  expect(spans.slice(0, 7)).toEqual([
    'begin ns/good',
    'run ns/good',
    'end ns/good',
    'begin ns/bad',
    'run ns/bad',
    'error ns/bad: broken',
    'end ns/bad',
  ]);
});

test('stop waits for the reconcile in flight and starts no other', async () => {
  const cache = new FakeCache<string>();
  const started: string[] = [];
  let finished = 0;
  const made = controller(async (key) => {
    started.push(key);
    await tick(30);
    finished++;
  });
  made.watch(cache);
  cache.sync();
  const running = made.run();
  cache.change('ns/a', 'object');
  cache.change('ns/b', 'object');
  await until(() => started.length === 1, 'the first reconcile');
  await made.stop();
  expect(finished).toBe(1);
  await running;
  await tick(40);
  expect(started).toEqual(['ns/a']);
});

test('stop before the caches sync ends run without reconciling', async () => {
  const cache = new FakeCache<string>();
  const reconciled: string[] = [];
  const made = controller(async (key) => void reconciled.push(key));
  made.watch(cache);
  const running = made.run();
  cache.change('ns/a', 'object');
  await made.stop();
  await running;
  cache.sync();
  await tick(10);
  expect(reconciled).toEqual([]);
});
