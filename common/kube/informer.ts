// A cache of one resource, kept current by list + watch the way client-go's reflector keeps its
// store, for the operator's controllers and the dataplane agent's config source to read. It is
// its own loop rather than client-node's ListWatch because ListWatch (2.0.1) gives up for good on
// a watch or list error other than 410 Gone and its own timeout (a reset connection, a 403, a
// 5xx: it fires its error callbacks and stops), never asks for bookmarks, and cannot be told to
// relist. The HTTP side is still client-node's: its Watch for the stream, the caller's generated
// list call for the list.
//
// What the loop does, and why:
// - Any error restarts it after a backoff (1 s doubling to 30 s, reset by the next thing heard);
//   nothing here ever throws out of the loop or exits the process.
// - 410 Gone, as an ERROR event or a status, means the resourceVersion is too old: relist at once.
// - A watch the server ends (its timeoutSeconds) resumes at once from the last resourceVersion, as
//   does one that client-node's Watch abandons after 30 s without a byte (its inactivity timeout,
//   which on a resource that does not change fires every 30 s).
// - When nothing (no event, no bookmark, no finished list) has arrived for silenceMs, whatever is
//   in flight is abandoned and the resource relisted: client-node watches have a history of going
//   silent without an error. Bookmarks are requested so that a healthy watch on a busy kind is
//   heard from; on a kind where nothing changes, the apiserver sends none, and this is a periodic
//   relist.
// - A relist is compared with the cache, so objects deleted while the watch was down are
//   reported too.
//
// Objects are kept as they came: from a watch, the apiserver's JSON; from a list, what the
// caller's generated list call returned (client-node turns some timestamps into Dates there).
// Read names, labels, spec and status; do not rely on the type of timestamps.
import { setTimeout as sleep } from 'node:timers/promises';
import {
  Watch,
  type ConfigurationOptions,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { errorText, jsonLogger, type Logger } from '../log.ts';
import { statusCode, withSignal } from './request.ts';

/** The two calls an informer makes: list, then watch from the list's resourceVersion. */
export interface ListerWatcher<T> {
  /** Every object, and the resourceVersion to watch from. Rejects when `signal` aborts. */
  list(signal: AbortSignal): Promise<{ items: T[]; resourceVersion: string }>;
  /**
   * Calls `onEvent` with each watch event after `resourceVersion` (type ADDED, MODIFIED, DELETED,
   * BOOKMARK or ERROR, and its object). Resolves when the server ends the watch, rejects when it
   * fails, and rejects at once when `signal` aborts.
   */
  watch(resourceVersion: string, onEvent: (type: string, object: unknown) => void, signal: AbortSignal): Promise<void>;
}

/** A page of a chunked list: at most `limit` objects, after `_continue` (the token of the last page). */
export interface ListPage {
  limit: number;
  _continue?: string;
}

export interface ApiListerWatcherOptions<T extends KubernetesObject> {
  /** The collection's path, e.g. `/api/v1/namespaces/x/configmaps` or `/apis/naat.dev/v1alpha1/uplinks`. */
  path: string;
  /**
   * Lists one page of the same collection with the same selectors, passing `page` among the
   * call's parameters and `options` as its last argument (they carry the abort signal), e.g.
   * `(page, options) => core.listNamespacedConfigMap({ namespace, labelSelector, ...page }, options)`.
   */
  list: (page: ListPage, options: ConfigurationOptions) => Promise<KubernetesListObject<T>>;
  /** Objects per list page; 500, like client-go's pager, so a big collection is not one response. */
  pageSize?: number;
  /**
   * What of each listed object to keep, applied to each page as it arrives (the informer's own
   * trim), so that a big collection is never held whole as the apiserver sent it.
   */
  trim?: (object: T) => T;
  labelSelector?: string;
  fieldSelector?: string;
  /** How long the server keeps a watch open; random between 5 and 10 minutes, like client-go's. */
  watchTimeoutSeconds?: number;
}

/** Lists with the caller's generated list call and watches `path` with client-node's Watch. */
export function apiListerWatcher<T extends KubernetesObject>(
  kubeConfig: KubeConfig,
  options: ApiListerWatcherOptions<T>,
): ListerWatcher<T> {
  const watcher = new Watch(kubeConfig);
  return {
    async list(signal) {
      // Every page comes from the snapshot of the first, whose resourceVersion they all carry.
      const items: T[] = [];
      let page: ListPage = { limit: options.pageSize ?? 500 };
      for (;;) {
        const list = await options.list(page, withSignal(signal));
        items.push(...(options.trim ? list.items.map(options.trim) : list.items));
        const next = list.metadata?._continue;
        if (!next) return { items, resourceVersion: list.metadata?.resourceVersion ?? '' };
        page = { ...page, _continue: next };
      }
    },
    watch(resourceVersion, onEvent, signal) {
      return new Promise<void>((resolve, reject) => {
        if (signal.aborted) {
          reject(signal.reason);
          return;
        }
        let request: AbortController | undefined;
        const onAbort = () => {
          request?.abort();
          reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        const finish = (error: unknown) => {
          signal.removeEventListener('abort', onAbort);
          if (error) reject(error);
          else resolve();
        };
        const query = {
          resourceVersion,
          allowWatchBookmarks: true,
          timeoutSeconds: options.watchTimeoutSeconds ?? Math.round(300 * (1 + Math.random())),
          labelSelector: options.labelSelector,
          fieldSelector: options.fieldSelector,
        };
        // watch() resolves with the request's controller once the response has begun; it calls
        // `finish` (null when the server ended the stream) at most once, possibly before that.
        watcher.watch(options.path, query, onEvent, finish).then((controller) => {
          request = controller;
          if (signal.aborted) controller.abort();
        }, finish);
      });
    },
  };
}

/** The cache key of an object: `namespace/name`, or `name` for a cluster-scoped one. */
export function objectKey(object: KubernetesObject): string {
  const { namespace, name = '' } = object.metadata ?? {};
  return namespace ? `${namespace}/${name}` : name;
}

/** The parts of a cache key. */
export function splitKey(key: string): { namespace?: string; name: string } {
  const slash = key.indexOf('/');
  return slash < 0 ? { name: key } : { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}

/**
 * Called with the key of each object that changed and each version of it the change involves:
 * the previous and the current one for an update, the last known one for a delete. A mapping
 * function can thus enqueue both the owner an object had and the one it has now. Handlers only
 * enqueue keys; they never act on the kind of change.
 */
export type ChangeHandler<T> = (key: string, object: T) => void;

export interface InformerOptions<T = unknown> {
  /** The resource's kind, for logs. */
  kind: string;
  /** Relist after this long without hearing anything. 5 minutes. */
  silenceMs?: number;
  /** The first delay after a failure, doubled after each further one. 1 s. */
  initialBackoffMs?: number;
  /** The longest delay after failures. 30 s. */
  maxBackoffMs?: number;
  log?: Logger;
  /**
   * What of each object to keep, applied before it is cached and handed to handlers: a cache of
   * every pod of a large cluster is mostly fields nobody here reads.
   */
  trim?: (object: T) => T;
}

const silence = new Error('Nothing heard from the watch');
const stopped = new Error('Informer stopped');

/** A cache of one resource; start() once, stop() ends it for good. */
export class Informer<T extends KubernetesObject> {
  readonly #source: ListerWatcher<T>;
  readonly #kind: string;
  readonly #silenceMs: number;
  readonly #initialBackoffMs: number;
  readonly #maxBackoffMs: number;
  readonly #log: Logger;
  readonly #trim: (object: T) => T;
  #objects = new Map<string, T>();
  readonly #handlers: ChangeHandler<T>[] = [];
  #synced = false;
  #syncWaiters: ((synced: boolean) => void)[] = [];
  #loop: Promise<void> | undefined;
  #stopped = false;
  readonly #stop = new AbortController();
  /** The list or watch in flight, aborted by silence or stop(). */
  #attempt: AbortController | undefined;
  #silenceTimer: NodeJS.Timeout | undefined;
  #relistWanted = false;
  /** Ends the wait after a failure early (retryNow). */
  #backoff: AbortController | undefined;
  readonly #counts = { lists: 0, watches: 0, failures: 0 };

  constructor(source: ListerWatcher<T>, options: InformerOptions<T>) {
    this.#source = source;
    this.#kind = options.kind;
    this.#silenceMs = options.silenceMs ?? 5 * 60_000;
    this.#initialBackoffMs = options.initialBackoffMs ?? 1000;
    this.#maxBackoffMs = options.maxBackoffMs ?? 30_000;
    this.#log = options.log ?? jsonLogger;
    this.#trim = options.trim ?? ((object) => object);
  }

  /** Starts listing and watching; a no-op if started before. */
  start(): void {
    if (this.#loop || this.#stopped) return;
    this.#resetSilence();
    this.#loop = this.#run();
  }

  /** Ends the loop and the request in flight; no handler is called after it resolves. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#stop.abort(stopped);
    this.#attempt?.abort(stopped);
    clearTimeout(this.#silenceTimer);
    this.#settleSync(false);
    await this.#loop;
  }

  /**
   * Tries again at once, for a caller that knows the apiserver answers again (a request of its own
   * went through after failures): ends the wait after failures, which may last up to maxBackoffMs,
   * or else relists in place of the request in flight, which may be one sent while the apiserver
   * could not be reached, hanging until silenceMs.
   */
  retryNow(): void {
    if (this.#backoff) return this.#backoff.abort();
    this.#relistWanted = true;
    this.#attempt?.abort(silence);
  }

  /** Whether the first list has filled the cache (it stays filled through later relists). */
  hasSynced(): boolean {
    return this.#synced;
  }

  /** Resolves true once the cache has synced, or false if the informer stops before. */
  waitForSync(): Promise<boolean> {
    if (this.#synced || this.#stopped) return Promise.resolve(this.#synced);
    return new Promise((resolve) => this.#syncWaiters.push(resolve));
  }

  get(key: string): T | undefined {
    return this.#objects.get(key);
  }

  list(): T[] {
    return [...this.#objects.values()];
  }

  /** Adds a handler; it is called at once for each object already cached. */
  onChange(handler: ChangeHandler<T>): void {
    this.#handlers.push(handler);
    for (const [key, object] of this.#objects) this.#call(handler, key, object);
  }

  /** Lists, watches and failures so far, for metrics and tests. */
  get counts(): Readonly<{ lists: number; watches: number; failures: number }> {
    return { ...this.#counts };
  }

  async #run(): Promise<void> {
    let resourceVersion = '';
    let failures = 0;
    while (!this.#stopped) {
      const attempt = new AbortController();
      this.#attempt = attempt;
      if (this.#relistWanted) {
        this.#relistWanted = false;
        resourceVersion = '';
      }
      let delivered = false;
      const began = performance.now();
      try {
        if (resourceVersion === '') {
          resourceVersion = await this.#relist(attempt.signal);
          failures = 0;
          this.#resetSilence();
          this.#settleSync(true);
        }
        this.#counts.watches++;
        let status: { code?: number; message?: string } | undefined;
        await this.#source.watch(
          resourceVersion,
          (type, object) => {
            if (attempt.signal.aborted) return;
            delivered = true;
            failures = 0;
            this.#resetSilence();
            if (type === 'ERROR') {
              // The server closes the watch after an ERROR event; the status decides what follows.
              status = object as typeof status;
              return;
            }
            const item = object as T;
            if (type === 'ADDED' || type === 'MODIFIED') this.#upsert(item);
            else if (type === 'DELETED') this.#remove(item);
            resourceVersion = item.metadata?.resourceVersion || resourceVersion;
          },
          attempt.signal,
        );
        if (status) throw Object.assign(new Error(status.message ?? 'Watch failed'), { code: status.code });
        // A server that ends every watch at once, with nothing to say, must not be hammered.
        if (!delivered && performance.now() - began < 1000) throw new Error('Watch ended at once');
      } catch (error) {
        if (this.#stopped) break;
        if (attempt.signal.reason === silence) continue;
        if (statusCode(error) === 410) {
          this.#log.info('Watch expired, relisting', { kind: this.#kind, resourceVersion });
          resourceVersion = '';
          continue;
        }
        if ((error as { name?: unknown } | undefined)?.name === 'TimeoutError' && resourceVersion !== '') continue;
        failures++;
        this.#counts.failures++;
        const delay = Math.min(this.#initialBackoffMs * 2 ** (failures - 1), this.#maxBackoffMs);
        this.#log.error('Watch failed, retrying', {
          kind: this.#kind,
          phase: resourceVersion === '' ? 'list' : 'watch',
          error: errorText(error),
          retryInMs: delay,
        });
        this.#backoff = new AbortController();
        await sleep(delay, undefined, { signal: AbortSignal.any([this.#stop.signal, this.#backoff.signal]) }).catch(
          () => {},
        );
        this.#backoff = undefined;
      }
    }
  }

  /**
   * Lists into the cache and returns the resourceVersion to watch from. A function of its own so
   * that the list, every object as the apiserver sent it, is garbage once the cache holds it: a
   * variable of #run's would keep it for as long as the watch that follows runs.
   */
  async #relist(signal: AbortSignal): Promise<string> {
    this.#counts.lists++;
    const list = await this.#source.list(signal);
    if (signal.aborted) throw signal.reason;
    this.#replace(list.items);
    return list.resourceVersion;
  }

  /** Starts the silence clock again: at start, and whenever something comes from the apiserver. */
  #resetSilence(): void {
    clearTimeout(this.#silenceTimer);
    if (this.#stopped) return;
    this.#silenceTimer = setTimeout(() => {
      this.#log.info('Watch went silent, relisting', { kind: this.#kind, silentMs: this.#silenceMs });
      this.#relistWanted = true;
      this.#attempt?.abort(silence);
      // Keeps ticking while nothing is heard, so that a relist that hangs is abandoned too.
      this.#resetSilence();
    }, this.#silenceMs);
  }

  #settleSync(synced: boolean): void {
    if (synced) this.#synced = true;
    const waiters = this.#syncWaiters;
    this.#syncWaiters = [];
    for (const resolve of waiters) resolve(synced);
  }

  #replace(items: T[]): void {
    const previous = this.#objects;
    this.#objects = new Map(items.map((item) => [objectKey(item), this.#trim(item)]));
    for (const [key, item] of this.#objects) {
      const old = previous.get(key);
      if (old) {
        if (old.metadata?.resourceVersion === item.metadata?.resourceVersion) continue;
        this.#notify(key, old);
      }
      this.#notify(key, item);
    }
    for (const [key, old] of previous) if (!this.#objects.has(key)) this.#notify(key, old);
  }

  #upsert(received: T): void {
    const item = this.#trim(received);
    const key = objectKey(item);
    const old = this.#objects.get(key);
    if (old && old.metadata?.resourceVersion === item.metadata?.resourceVersion) return;
    this.#objects.set(key, item);
    if (old) this.#notify(key, old);
    this.#notify(key, item);
  }

  #remove(received: T): void {
    const item = this.#trim(received);
    const key = objectKey(item);
    this.#objects.delete(key);
    this.#notify(key, item);
  }

  #notify(key: string, object: T): void {
    for (const handler of this.#handlers) this.#call(handler, key, object);
  }

  #call(handler: ChangeHandler<T>, key: string, object: T): void {
    try {
      handler(key, object);
    } catch (error) {
      this.#log.error('Event handler failed', { kind: this.#kind, key, error: errorText(error) });
    }
  }
}
