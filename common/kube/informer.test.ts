import { KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { apiListerWatcher, Informer, objectKey, splitKey, type ListerWatcher } from './informer.ts';
import type { Logger } from '../log.ts';

interface Item extends KubernetesObject {
  data?: string;
}

interface OpenWatch {
  onEvent: (type: string, object: unknown) => void;
  resolve: () => void;
  reject: (error: unknown) => void;
}

/**
 * An apiserver for one namespaced kind, in memory: objects with resourceVersions, a history that
 * watches replay from their resourceVersion (410 Gone before its start), and levers to end, break
 * or silence the watches it serves.
 */
class FakeServer implements ListerWatcher<Item> {
  objects = new Map<string, Item>();
  #rv = 0;
  #history: { rv: number; type: string; object: Item }[] = [];
  #oldest = 0;
  #watches = new Set<OpenWatch>();
  #silent = false;
  failLists = 0;
  failWatches = 0;
  lists = 0;
  watchedFrom: string[] = [];

  put(name: string, data: string): void {
    const object = { metadata: { namespace: 'ns', name, resourceVersion: String(++this.#rv) }, data };
    const type = this.objects.has(name) ? 'MODIFIED' : 'ADDED';
    this.objects.set(name, object);
    this.#record(type, object);
  }

  delete(name: string): void {
    const object = {
      ...this.objects.get(name)!,
      metadata: { namespace: 'ns', name, resourceVersion: String(++this.#rv) },
    };
    this.objects.delete(name);
    this.#record('DELETED', object);
  }

  /** Forgets the history, as etcd compaction does: watches from before now get 410 Gone. */
  compact(): void {
    this.#history = [];
    this.#oldest = this.#rv;
  }

  /** Ends every open watch cleanly, as the server's timeoutSeconds does. */
  endWatches(): void {
    for (const watch of this.#watches) watch.resolve();
    this.#watches.clear();
  }

  /** Fails every open watch, as a reset connection does. */
  breakWatches(): void {
    for (const watch of this.#watches) watch.reject(new Error('other side closed'));
    this.#watches.clear();
  }

  /** Open watches stay open but deliver nothing, as a half-open connection does. */
  silence(): void {
    this.#silent = true;
  }

  async list(): Promise<{ items: Item[]; resourceVersion: string }> {
    this.lists++;
    if (this.failLists > 0) {
      this.failLists--;
      throw Object.assign(new Error('connection refused'), { code: 'ECONNREFUSED' });
    }
    this.#silent = false;
    return {
      items: [...this.objects.values()].map((item) => structuredClone(item)),
      resourceVersion: String(this.#rv),
    };
  }

  watch(resourceVersion: string, onEvent: OpenWatch['onEvent'], signal: AbortSignal): Promise<void> {
    this.watchedFrom.push(resourceVersion);
    return new Promise((resolve, reject) => {
      if (this.failWatches > 0) {
        this.failWatches--;
        reject(Object.assign(new Error('Forbidden'), { statusCode: 403 }));
        return;
      }
      const from = Number(resourceVersion);
      if (from < this.#oldest) {
        onEvent('ERROR', { kind: 'Status', code: 410, message: 'too old resource version' });
        resolve();
        return;
      }
      for (const event of this.#history) if (event.rv > from) onEvent(event.type, structuredClone(event.object));
      const watch = { onEvent, resolve, reject };
      this.#watches.add(watch);
      signal.addEventListener('abort', () => {
        this.#watches.delete(watch);
        reject(signal.reason);
      });
    });
  }

  #record(type: string, object: Item): void {
    this.#history.push({ rv: this.#rv, type, object });
    if (this.#silent) return;
    for (const watch of this.#watches) watch.onEvent(type, structuredClone(object));
  }
}

const quiet: Logger = { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} };

async function until(condition: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const informers: Informer<Item>[] = [];

function start(server: FakeServer, options: { silenceMs?: number; trim?: (item: Item) => Item } = {}) {
  const informer = new Informer(server, {
    kind: 'Item',
    initialBackoffMs: 1,
    maxBackoffMs: 20,
    log: quiet,
    ...options,
  });
  informers.push(informer);
  const seen: [string, string | undefined][] = [];
  informer.onChange((key, object) => seen.push([key, object.metadata?.resourceVersion]));
  informer.start();
  const data = () => Object.fromEntries(informer.list().map((item) => [objectKey(item), item.data]));
  return { informer, seen, data };
}

afterEach(async () => {
  await Promise.all(informers.splice(0).map((informer) => informer.stop()));
});

test('keys are namespace/name, or name for cluster-scoped objects', () => {
  expect(objectKey({ metadata: { namespace: 'ns', name: 'a' } })).toBe('ns/a');
  expect(objectKey({ metadata: { name: 'node-1' } })).toBe('node-1');
  expect(splitKey('ns/a')).toEqual({ namespace: 'ns', name: 'a' });
  expect(splitKey('node-1')).toEqual({ name: 'node-1' });
});

test('the cache fills from the list, follows the watch, and handlers see every version a change involves', async () => {
  const server = new FakeServer();
  server.put('a', 'one');
  const { informer, seen, data } = start(server);
  expect(await informer.waitForSync()).toBe(true);
  expect(informer.hasSynced()).toBe(true);
  expect(informer.get('ns/a')?.data).toBe('one');
  expect(seen).toEqual([['ns/a', '1']]);

  server.put('b', 'two');
  server.put('a', 'three');
  server.delete('b');
  await until(() => seen.length === 5, 'the watch events');
  // Add b; update a (old, then new version); delete b (its last version).
  expect(seen.slice(1)).toEqual([
    ['ns/b', '2'],
    ['ns/a', '1'],
    ['ns/a', '3'],
    ['ns/b', '4'],
  ]);
  expect(data()).toEqual({ 'ns/a': 'three' });
});

test('what trim keeps of each object is what the cache holds and every handler sees, listed or watched', async () => {
  const server = new FakeServer();
  server.put('a', 'one');
  const { informer, data } = start(server, { trim: ({ data, ...item }) => ({ ...item, data: data?.slice(0, 1) }) });
  const seen: (string | undefined)[] = [];
  informer.onChange((_key, item) => seen.push(item.data));
  await informer.waitForSync();
  server.put('a', 'three');
  server.put('b', 'two');
  server.delete('b');
  await until(() => seen.length === 5, 'the watch events');
  expect(seen).toEqual(['o', 'o', 't', 't', 't']);
  expect(data()).toEqual({ 'ns/a': 't' });
});

test('the list, as the apiserver sent it, is not kept once the cache holds what trim keeps of it', async () => {
  // A collector to call: the list must be garbage while the watch that follows it runs.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const server = new FakeServer();
  server.put('a', 'one');
  let listed: WeakRef<object> | undefined;
  const list = server.list.bind(server);
  server.list = async () => {
    const result = await list();
    listed = new WeakRef(result);
    return result;
  };
  const { informer } = start(server, { trim: ({ metadata }) => ({ metadata }) });
  await informer.waitForSync();
  await until(() => server.watchedFrom.length === 1, 'the watch');
  await new Promise((resolve) => setTimeout(resolve, 10));
  gc();
  expect(listed?.deref()).toBeUndefined();
});

test("apiListerWatcher's list holds what trim keeps of each object of every page", async () => {
  const pages = [
    { items: [{ metadata: { name: 'a' }, data: 'one' }], metadata: { _continue: 'next' } },
    { items: [{ metadata: { name: 'b' }, data: 'two' }], metadata: { resourceVersion: '7' } },
  ];
  const source = apiListerWatcher<Item>(new KubeConfig(), {
    path: '/api/v1/items',
    list: async (page) => pages[page._continue ? 1 : 0]!,
    trim: ({ data, ...item }) => ({ ...item, data: data?.slice(0, 1) }),
  });
  expect(await source.list(new AbortController().signal)).toEqual({
    items: [
      { metadata: { name: 'a' }, data: 'o' },
      { metadata: { name: 'b' }, data: 't' },
    ],
    resourceVersion: '7',
  });
});

test('a handler added late is told about the objects already cached', async () => {
  const server = new FakeServer();
  server.put('a', 'one');
  const { informer } = start(server);
  await informer.waitForSync();
  const keys: string[] = [];
  informer.onChange((key) => keys.push(key));
  expect(keys).toEqual(['ns/a']);
});

test('a broken watch is restarted from its resourceVersion, without a relist', async () => {
  const server = new FakeServer();
  server.put('a', 'one');
  const { informer, data } = start(server);
  await informer.waitForSync();
  await until(() => server.watchedFrom.length === 1, 'the first watch');

  server.failWatches = 3;
  server.breakWatches();
  server.put('a', 'two');
  server.put('b', 'new');
  await until(() => data()['ns/b'] === 'new', 'the changes made while the watch was down');
  expect(data()).toEqual({ 'ns/a': 'two', 'ns/b': 'new' });
  expect(server.lists).toBe(1);
  expect(server.watchedFrom).toEqual(['1', '1', '1', '1', '1']);
  expect(informer.counts.failures).toBe(4);
});

test('a failing first list is retried until the cache syncs', async () => {
  const server = new FakeServer();
  server.put('a', 'one');
  server.failLists = 3;
  const { informer } = start(server);
  expect(await informer.waitForSync()).toBe(true);
  expect(server.lists).toBe(4);
  expect(informer.get('ns/a')?.data).toBe('one');
});

test('retryNow ends the wait after a failure at once', async () => {
  const server = new FakeServer();
  server.put('a', 'one');
  server.failLists = 1;
  const informer = new Informer(server, { kind: 'Item', initialBackoffMs: 60_000, log: quiet });
  informers.push(informer);
  informer.start();
  await until(() => server.lists === 1, 'the first list');
  informer.retryNow();
  expect(await informer.waitForSync()).toBe(true);
  expect(informer.get('ns/a')?.data).toBe('one');
});

test('410 Gone relists, and objects deleted meanwhile are reported as gone', async () => {
  const server = new FakeServer();
  server.put('a', 'one');
  server.put('b', 'two');
  const { informer, seen, data } = start(server);
  await informer.waitForSync();
  await until(() => server.watchedFrom.length === 1, 'the first watch');

  server.silence();
  server.delete('a');
  server.put('c', 'three');
  server.compact();
  server.breakWatches();
  await until(() => server.lists === 2, 'the relist');
  await until(() => data()['ns/c'] === 'three', 'the relisted cache');
  expect(data()).toEqual({ 'ns/b': 'two', 'ns/c': 'three' });
  expect(seen.filter(([key]) => key === 'ns/a').length).toBe(2);
  expect(informer.counts.lists).toBe(2);
});

test('a watch the server ends is resumed at once from where it was, without a relist or a failure', async () => {
  const server = new FakeServer();
  const { informer, data } = start(server);
  await informer.waitForSync();
  server.put('a', 'one');
  await until(() => data()['ns/a'] === 'one', 'the first event');
  server.endWatches();
  server.put('a', 'two');
  await until(() => data()['ns/a'] === 'two', 'the event after the resumed watch');
  expect(server.watchedFrom).toEqual(['0', '1']);
  expect(informer.counts).toEqual({ lists: 1, watches: 2, failures: 0 });
});

test.each([
  ['its silence timer', 100, false],
  ['retryNow, at once', 60_000, true],
])('a watch that goes silent is abandoned and the resource relisted by %s', async (_by, silenceMs, retry) => {
  const server = new FakeServer();
  server.put('a', 'one');
  const { informer, data } = start(server, { silenceMs });
  await informer.waitForSync();

  // The watch stays open but says nothing: without the relist this change is never seen.
  server.silence();
  if (retry) informer.retryNow();
  server.put('a', 'two');
  server.put('b', 'new');
  await until(() => data()['ns/b'] === 'new', 'the relist after the silence');
  expect(data()).toEqual({ 'ns/a': 'two', 'ns/b': 'new' });
  expect(informer.counts.lists).toBeGreaterThanOrEqual(2);
  expect(informer.counts.failures).toBe(0);
});

test('stop ends the loop, and waitForSync resolves false when it never synced', async () => {
  const server = new FakeServer();
  server.failLists = 1000;
  const { informer, seen } = start(server);
  const synced = informer.waitForSync();
  await until(() => server.lists >= 2, 'a retry');
  await informer.stop();
  expect(await synced).toBe(false);
  const lists = server.lists;
  await new Promise((resolve) => setTimeout(resolve, 30));
  expect(server.lists).toBe(lists);
  expect(seen).toEqual([]);
});

test('a handler that throws does not stop the others or the informer', async () => {
  const server = new FakeServer();
  const errors: string[] = [];
  const informer = new Informer(server, {
    kind: 'Item',
    log: { ...quiet, error: (message) => errors.push(message) },
  });
  informers.push(informer);
  const keys: string[] = [];
  informer.onChange(() => {
    throw new Error('boom');
  });
  informer.onChange((key) => keys.push(key));
  informer.start();
  await informer.waitForSync();
  server.put('a', 'one');
  server.put('b', 'two');
  await until(() => keys.length === 2, 'both events');
  expect(errors).toEqual(['Event handler failed', 'Event handler failed']);
});
