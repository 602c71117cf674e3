// One sync at a time, in the order asked: syncs asked for while one waits are folded into it, and
// a failed sync is tried again by the queue itself, backing off, because nothing else may ask for
// one for a long time (the config, health and associations can all stay as they are).

/** The wait before the next attempt after `failures` failed syncs in a row: 0.5 s doubling to 30 s. */
export function retryDelayMs(failures: number): number {
  return Math.min(30_000, 500 * 2 ** failures);
}

export class SyncQueue {
  readonly #run: () => Promise<void>;
  #queue: Promise<void> = Promise.resolve();
  #pending = false;
  /** The next attempt after a failed sync, and how many failed in a row (for the backoff). */
  #retry: NodeJS.Timeout | undefined;
  #failures = 0;
  #stopped = false;

  /** `run` does one sync; it throws when the sync failed. */
  constructor(run: () => Promise<void>) {
    this.#run = run;
  }

  /** Resolves once a sync that started after this call has ended; rejects when it failed. */
  request(): Promise<void> {
    if (this.#pending) return this.#queue;
    this.#pending = true;
    // A failed sync rejects the queue; the next one runs regardless (a rejected promise would
    // skip it, and every sync after it, for good).
    this.#queue = this.#queue
      .catch(() => {})
      .then(async () => {
        this.#pending = false;
        await this.#attempt();
      });
    return this.#queue;
  }

  async #attempt(): Promise<void> {
    try {
      await this.#run();
      this.#failures = 0;
      clearTimeout(this.#retry);
    } catch (error) {
      clearTimeout(this.#retry);
      if (!this.#stopped) {
        this.#retry = setTimeout(() => this.request().catch(() => {}), retryDelayMs(this.#failures++));
        this.#retry.unref();
      }
      throw error;
    }
  }

  /** Asks for no more retries; resolves once the sync under way has ended. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retry);
    await this.#queue.catch(() => {});
  }
}
