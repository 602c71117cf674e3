// Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection does it,
// so that of the operator's replicas exactly one runs its controllers.
// - The leader renews the lease every retryPeriodMs. When it has not managed to for
//   renewDeadlineMs, it stops leading by itself, before the lease can look expired to anyone else
//   (renewDeadlineMs < leaseDurationSeconds); isLeader turns false at that deadline even if the
//   timer that announces it fires late.
// - A candidate takes the lease when it has no holder (it was released), or when it has not been
//   renewed for leaseDurationSeconds. That is measured on the candidate's own clock from when it
//   first saw the current renewal, not by comparing renewTime with its clock: clock skew between
//   nodes cannot make it take over early (client-go does the same).
// - Every write carries the resourceVersion it was based on, so of two candidates that read the
//   same lease and both try to take it, the apiserver accepts one and answers 409 to the other.
// - stop() ends leadership first (onStoppedLeading is awaited: the leader's work has stopped) and
//   then releases the lease by clearing holderIdentity, so that another replica takes over at its
//   next try rather than after the lease duration.
import { setTimeout as sleep } from 'node:timers/promises';
import { CoordinationV1Api, V1MicroTime, type KubeConfig, type V1Lease } from '@kubernetes/client-node';
import { errorText, jsonLogger, type Logger } from '../../common/index.ts';
import { statusCode, withSignal } from '../../common/kube/index.ts';

export interface LeaderElectorOptions {
  kubeConfig: KubeConfig;
  /** The Lease's namespace and name. */
  namespace: string;
  name: string;
  /** This candidate, unique among them (the pod's name). */
  identity: string;
  /** How long a lease that is not renewed keeps other candidates away. 15. */
  leaseDurationSeconds?: number;
  /** How long the leader keeps leading without managing to renew. 10 s. */
  renewDeadlineMs?: number;
  /** How often the leader renews and the others try to acquire. 2 s. */
  retryPeriodMs?: number;
  /** Called when this candidate becomes the leader. */
  onStartedLeading?: () => void | Promise<void>;
  /** Called when it stops leading, for whatever reason; awaited before the lease is released. */
  onStoppedLeading?: () => void | Promise<void>;
  log?: Logger;
}

export class LeaderElector {
  readonly #api: CoordinationV1Api;
  readonly #namespace: string;
  readonly #name: string;
  readonly #identity: string;
  readonly #leaseDurationSeconds: number;
  readonly #renewDeadlineMs: number;
  readonly #retryPeriodMs: number;
  readonly #onStartedLeading: () => void | Promise<void>;
  readonly #onStoppedLeading: () => void | Promise<void>;
  readonly #log: Logger;
  #leading = false;
  /** performance.now() at which leadership ends unless renewed. */
  #deadline = 0;
  #deadlineTimer: NodeJS.Timeout | undefined;
  /** The lease as this candidate's last write of it returned, while that write is the latest it knows of. */
  #written: V1Lease | undefined;
  /** The lease version last seen and when it was first seen, on this process's clock. */
  #observed: { resourceVersion: string; at: number } | undefined;
  /** The callbacks, run one after another so that a stop and the next start never overlap. */
  #callbacks: Promise<void> = Promise.resolve();
  #loop: Promise<void> | undefined;
  #stopped: Promise<void> | undefined;
  readonly #stop = new AbortController();

  constructor(options: LeaderElectorOptions) {
    this.#api = options.kubeConfig.makeApiClient(CoordinationV1Api);
    this.#namespace = options.namespace;
    this.#name = options.name;
    this.#identity = options.identity;
    this.#leaseDurationSeconds = options.leaseDurationSeconds ?? 15;
    this.#renewDeadlineMs = options.renewDeadlineMs ?? 10_000;
    this.#retryPeriodMs = options.retryPeriodMs ?? 2_000;
    this.#onStartedLeading = options.onStartedLeading ?? (() => {});
    this.#onStoppedLeading = options.onStoppedLeading ?? (() => {});
    this.#log = options.log ?? jsonLogger;
    if (this.#renewDeadlineMs >= this.#leaseDurationSeconds * 1000)
      throw new Error('renewDeadlineMs must be shorter than leaseDurationSeconds');
    if (this.#retryPeriodMs >= this.#renewDeadlineMs)
      throw new Error('retryPeriodMs must be shorter than renewDeadlineMs');
  }

  get isLeader(): boolean {
    return this.#leading && performance.now() < this.#deadline;
  }

  /** Starts trying to acquire the lease, then to renew it; a no-op if started before. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /**
   * Stops trying. A leader stops leading (onStoppedLeading has returned when this resolves) and,
   * unless `release` is false, releases the lease. `release: false` leaves the lease to expire, as
   * a crashed process would.
   */
  stop({ release = true }: { release?: boolean } = {}): Promise<void> {
    this.#stopped ??= (async () => {
      this.#stop.abort();
      await this.#loop;
      this.#stopLeading('elector stopped');
      await this.#callbacks;
      if (release) await this.#release();
    })();
    return this.#stopped;
  }

  async #run(): Promise<void> {
    while (!this.#stop.signal.aborted) {
      await this.#tryAcquireOrRenew();
      await sleep(this.#retryPeriodMs, undefined, { signal: this.#stop.signal }).catch(() => {});
    }
  }

  async #tryAcquireOrRenew(): Promise<void> {
    const began = performance.now();
    // A hung request must not hold up the tries after it for long; stop() ends it at once.
    const options = withSignal(AbortSignal.any([this.#stop.signal, AbortSignal.timeout(this.#renewDeadlineMs)]));
    const [namespace, name] = [this.#namespace, this.#name];
    try {
      // A leader renews what its last write returned: one request, not two, which matters when a
      // busy event loop (a compile of 50,000 pods) stretches each. Should another have written
      // the lease since, the apiserver refuses the write (409) and the next try reads it.
      let lease: V1Lease;
      try {
        lease = this.#written ?? (await this.#api.readNamespacedLease({ namespace, name }, options));
      } catch (error) {
        if (statusCode(error) !== 404) throw error;
        const now = new V1MicroTime();
        const spec = { holderIdentity: this.#identity, leaseDurationSeconds: this.#leaseDurationSeconds };
        const body = { metadata: { namespace, name }, spec: { ...spec, acquireTime: now, renewTime: now } };
        this.#observe(await this.#api.createNamespacedLease({ namespace, body }, options));
        this.#log.info('Lease created', { lease: `${namespace}/${name}`, identity: this.#identity });
        this.#renewed(began);
        return;
      }
      this.#observe(lease);
      const spec = lease.spec ?? {};
      const holder = spec.holderIdentity ?? '';
      const durationMs = (spec.leaseDurationSeconds ?? this.#leaseDurationSeconds) * 1000;
      if (holder !== '' && holder !== this.#identity && performance.now() < this.#observed!.at + durationMs) {
        this.#stopLeading(`lease is held by ${holder}`);
        return;
      }
      const now = new V1MicroTime();
      const acquired = holder !== this.#identity;
      const body: V1Lease = {
        ...lease,
        spec: {
          ...spec,
          holderIdentity: this.#identity,
          leaseDurationSeconds: this.#leaseDurationSeconds,
          renewTime: now,
          ...(acquired ? { acquireTime: now, leaseTransitions: (spec.leaseTransitions ?? 0) + 1 } : {}),
        },
      };
      this.#written = undefined;
      const written = await this.#api.replaceNamespacedLease({ namespace, name, body }, options);
      this.#observe(written);
      this.#written = written;
      if (acquired)
        this.#log.info('Lease acquired', {
          lease: `${namespace}/${name}`,
          identity: this.#identity,
          previousHolder: holder || undefined,
        });
      this.#renewed(began);
    } catch (error) {
      if (this.#stop.signal.aborted) return;
      // 409: another candidate wrote the lease since it was read; the next try reads it afresh.
      if (statusCode(error) === 409) return;
      this.#log.error('Failed to acquire or renew lease', {
        lease: `${namespace}/${name}`,
        identity: this.#identity,
        error: errorText(error),
      });
    }
  }

  #observe(lease: V1Lease): void {
    const resourceVersion = lease.metadata?.resourceVersion ?? '';
    if (this.#observed?.resourceVersion !== resourceVersion)
      this.#observed = { resourceVersion, at: performance.now() };
  }

  /** The lease was written with this candidate as holder by a try that began at `began`. */
  #renewed(began: number): void {
    const deadline = began + this.#renewDeadlineMs;
    const left = deadline - performance.now();
    // Too late to count: the deadline it extends has passed. The next try renews afresh.
    if (left <= 0 || this.#stop.signal.aborted) return;
    this.#deadline = deadline;
    clearTimeout(this.#deadlineTimer);
    this.#deadlineTimer = setTimeout(() => this.#stopLeading('lease not renewed in time'), left);
    if (this.#leading) return;
    this.#leading = true;
    this.#log.info('Started leading', { lease: `${this.#namespace}/${this.#name}`, identity: this.#identity });
    this.#queue(this.#onStartedLeading);
  }

  #stopLeading(reason: string): void {
    clearTimeout(this.#deadlineTimer);
    if (!this.#leading) return;
    this.#leading = false;
    this.#log.info('Stopped leading', { lease: `${this.#namespace}/${this.#name}`, identity: this.#identity, reason });
    this.#queue(this.#onStoppedLeading);
  }

  #queue(callback: () => void | Promise<void>): void {
    this.#callbacks = this.#callbacks.then(callback).catch((error: unknown) => {
      this.#log.error('Leader election callback failed', { identity: this.#identity, error: errorText(error) });
    });
  }

  /** Clears holderIdentity if the lease still names this candidate, as client-go's release does. */
  async #release(): Promise<void> {
    const [namespace, name] = [this.#namespace, this.#name];
    const options = withSignal(AbortSignal.timeout(this.#renewDeadlineMs));
    try {
      const lease = await this.#api.readNamespacedLease({ namespace, name }, options);
      if (lease.spec?.holderIdentity !== this.#identity) return;
      const now = new V1MicroTime();
      // A duration of 1 s, as client-go writes, lets candidates that look only at expiry move too.
      const spec = { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: now, acquireTime: now };
      await this.#api.replaceNamespacedLease({ namespace, name, body: { ...lease, spec } }, options);
      this.#log.info('Lease released', { lease: `${namespace}/${name}`, identity: this.#identity });
    } catch (error) {
      // 409: the lease changed since it was read, so it is no longer this candidate's to release.
      if (statusCode(error) === 409) return;
      this.#log.error('Failed to release lease', {
        lease: `${namespace}/${name}`,
        identity: this.#identity,
        error: errorText(error),
      });
    }
  }
}
