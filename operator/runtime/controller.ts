// A controller in the manner of controller-runtime's: informers' handlers enqueue keys, a work
// queue deduplicates them, and workers call reconcile(key). A reconcile reads the current state
// from caches and makes the world match it; it never learns which event brought the key, so it
// cannot branch on one (level-based). A reconcile that throws is retried after the key's backoff;
// one that succeeds resets the backoff and may ask to run again after a while. Workers start only
// once every cache the reconciler reads has synced, so that a first reconcile never acts on a
// half-filled cache (and, say, deletes what it does not see yet).
import type { ChangeHandler } from '../../common/kube/index.ts';
import { errorText, jsonLogger, type Logger } from '../../common/index.ts';
import { statusCode } from '../../common/kube/index.ts';
import { WorkQueue, type WorkQueueOptions } from './workqueue.ts';

/** What a reconcile may ask for: to run again after `requeueAfterMs` even if nothing changes. */
export type ReconcileResult = { requeueAfterMs?: number } | void;

/** What a controller needs of a cache it reads: to know when it has synced. */
export interface SyncedCache {
  /** Resolves true once synced, false if it stops first. */
  waitForSync(): Promise<boolean>;
}

/** What a controller needs of a cache it watches (an Informer). */
export interface WatchedCache<T> extends SyncedCache {
  onChange(handler: ChangeHandler<T>): void;
}

export interface ControllerOptions {
  /** Names the controller in logs. */
  name: string;
  reconcile: (key: string) => Promise<ReconcileResult>;
  /** Reconciles that may run at once, each on a different key. 1. */
  workers?: number;
  /** Caches the reconciler reads without watching them; watch() adds the watched ones. */
  caches?: readonly SyncedCache[];
  queue?: WorkQueueOptions;
  /**
   * Wraps each reconcile, e.g. in a tracing span or a timer: it calls `next` once and returns what
   * it returns, or throws what it throws.
   */
  around?: (key: string, next: () => Promise<ReconcileResult>) => Promise<ReconcileResult>;
  log?: Logger;
}

export class Controller {
  readonly queue: WorkQueue;
  readonly #name: string;
  readonly #reconcile: (key: string) => Promise<ReconcileResult>;
  readonly #workers: number;
  readonly #caches: SyncedCache[];
  readonly #around: ControllerOptions['around'];
  readonly #log: Logger;
  #running: Promise<void> | undefined;
  readonly #stopping: Promise<false>;
  #stop: () => void = () => {};

  constructor(options: ControllerOptions) {
    this.#name = options.name;
    this.#reconcile = options.reconcile;
    this.#workers = options.workers ?? 1;
    this.#caches = [...(options.caches ?? [])];
    this.#around = options.around;
    this.#log = options.log ?? jsonLogger;
    this.queue = new WorkQueue(options.queue);
    this.#stopping = new Promise((resolve) => (this.#stop = () => resolve(false)));
  }

  /**
   * Enqueues the keys of `cache`'s changes: the object's own key, or the keys `map` returns for it
   * (e.g. its owner's), and waits for the cache before starting workers. Call before run().
   */
  watch<T>(cache: WatchedCache<T>, map?: (key: string, object: T) => Iterable<string>): void {
    this.#caches.push(cache);
    cache.onChange((key, object) => {
      if (!map) this.queue.add(key);
      else for (const mapped of map(key, object)) this.queue.add(mapped);
    });
  }

  /**
   * Waits for every cache to sync, then runs the workers until stop(). Resolves once the last
   * worker has finished its reconcile; at once if stop() comes first or a cache stops unsynced.
   */
  run(): Promise<void> {
    this.#running ??= this.#run();
    return this.#running;
  }

  /** Stops handing out keys and waits for the reconciles in flight. */
  async stop(): Promise<void> {
    this.queue.shutdown();
    this.#stop();
    await this.#running;
  }

  async #run(): Promise<void> {
    const synced = await Promise.race([
      Promise.all(this.#caches.map((cache) => cache.waitForSync())).then((all) => all.every(Boolean)),
      this.#stopping,
    ]);
    if (!synced || this.queue.shuttingDown) {
      this.#log.info('Controller stopped before its caches synced', { controller: this.#name });
      return;
    }
    this.#log.info('Controller started workers', { controller: this.#name, workers: this.#workers });
    await Promise.all(Array.from({ length: this.#workers }, () => this.#work()));
  }

  async #work(): Promise<void> {
    for (let key = await this.queue.get(); key !== undefined; key = await this.queue.get()) {
      await this.#process(key);
      this.queue.done(key);
    }
  }

  async #process(key: string): Promise<void> {
    const next = () => this.#reconcile(key);
    try {
      const result = await (this.#around ? this.#around(key, next) : next());
      this.queue.forget(key);
      if (result && result.requeueAfterMs !== undefined) this.queue.addAfter(key, result.requeueAfterMs);
    } catch (error) {
      const delay = this.queue.addRateLimited(key);
      const fields = {
        controller: this.#name,
        key,
        error: errorText(error),
        retries: this.queue.retries(key),
        retryInMs: delay,
      };
      // A conflict means the cache was behind a write (often the reconcile's own); the retry
      // reads the newer object. Expected, so not an error.
      if (statusCode(error) === 409) this.#log.debug('Reconcile conflicted with a newer write; retrying', fields);
      else this.#log.error('Reconcile failed', fields);
    }
  }
}
