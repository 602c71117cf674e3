// A queue of keys ("namespace/name") in the manner of client-go's workqueue, which controllers
// drain with a few workers:
// - a key waits in the queue at most once however often it is added, so a burst of events for one
//   object costs one reconcile;
// - a key is handed to one worker at a time: a key added while a worker holds it waits until that
//   worker calls done(), and is then queued again, so its latest state is reconciled once more;
// - addAfter() and addRateLimited() hold a key back for a while first; addRateLimited() doubles a
//   key's delay with each failure until forget().
// Pure: time comes from an injected clock, so tests step through delays without waiting.

export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemClock: Clock = {
  now: () => performance.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface WorkQueueOptions {
  clock?: Clock;
  /** The delay of a key's first rate-limited add; it doubles with each further one. 5 ms. */
  baseDelayMs?: number;
  /** The longest rate-limited delay. 5 minutes. */
  maxDelayMs?: number;
}

export class WorkQueue {
  readonly #clock: Clock;
  readonly #baseDelayMs: number;
  readonly #maxDelayMs: number;
  /** Keys ready to be handed out, oldest first (a Set keeps insertion order). */
  readonly #ready = new Set<string>();
  /** Keys a worker holds. */
  readonly #processing = new Set<string>();
  /** Keys added while a worker held them: queued again by done(). */
  readonly #again = new Set<string>();
  /** Keys held back by addAfter(), with when they become ready. */
  readonly #delayed = new Map<string, { at: number; timer: unknown }>();
  /** Rate-limited adds of each key since it was last forgotten. */
  readonly #failures = new Map<string, number>();
  /** Workers waiting in get() for a key. */
  #getters: ((key: string | undefined) => void)[] = [];
  #shuttingDown = false;

  constructor(options: WorkQueueOptions = {}) {
    this.#clock = options.clock ?? systemClock;
    this.#baseDelayMs = options.baseDelayMs ?? 5;
    this.#maxDelayMs = options.maxDelayMs ?? 5 * 60_000;
  }

  /** Queues a key unless it is queued already; a no-op after shutdown(). */
  add(key: string): void {
    if (this.#shuttingDown || this.#ready.has(key)) return;
    if (this.#processing.has(key)) {
      this.#again.add(key);
      return;
    }
    const getter = this.#getters.shift();
    if (getter) {
      this.#processing.add(key);
      getter(key);
    } else {
      this.#ready.add(key);
    }
  }

  /**
   * Queues a key after `ms`. A key already held back becomes ready at the earlier of the two
   * times, so a short retry is never postponed by a long one.
   */
  addAfter(key: string, ms: number): void {
    if (this.#shuttingDown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = this.#clock.now() + ms;
    const waiting = this.#delayed.get(key);
    if (waiting) {
      if (waiting.at <= at) return;
      this.#clock.clearTimeout(waiting.timer);
    }
    const timer = this.#clock.setTimeout(() => {
      this.#delayed.delete(key);
      this.add(key);
    }, ms);
    this.#delayed.set(key, { at, timer });
  }

  /**
   * Queues a key after its backoff: baseDelayMs, doubled with each call since the key was last
   * forgotten, up to maxDelayMs. Returns the delay, for logs.
   */
  addRateLimited(key: string): number {
    const failures = this.#failures.get(key) ?? 0;
    this.#failures.set(key, failures + 1);
    const delay = Math.min(this.#baseDelayMs * 2 ** failures, this.#maxDelayMs);
    this.addAfter(key, delay);
    return delay;
  }

  /** Resets a key's backoff; a controller calls it when the key's reconcile succeeded. */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  /** Rate-limited adds of a key since it was last forgotten. */
  retries(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /**
   * The next ready key, once there is one; the caller holds it until done(key). Undefined once
   * the queue is shut down.
   */
  get(): Promise<string | undefined> {
    if (this.#shuttingDown) return Promise.resolve(undefined);
    const [key] = this.#ready;
    if (key !== undefined) {
      this.#ready.delete(key);
      this.#processing.add(key);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.#getters.push(resolve));
  }

  /** Ends a worker's hold on a key; a key added meanwhile is queued again. */
  done(key: string): void {
    this.#processing.delete(key);
    if (this.#again.delete(key)) this.add(key);
  }

  /** Keys ready to be handed out (the queue depth metric). */
  get len(): number {
    return this.#ready.size;
  }

  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /**
   * Drops every queued and held-back key and ends get() for every worker, now and later. Keys that
   * workers hold stay theirs until done(), which then queues nothing.
   */
  shutdown(): void {
    this.#shuttingDown = true;
    for (const { timer } of this.#delayed.values()) this.#clock.clearTimeout(timer);
    this.#delayed.clear();
    this.#ready.clear();
    this.#again.clear();
    const getters = this.#getters;
    this.#getters = [];
    for (const getter of getters) getter(undefined);
  }
}
