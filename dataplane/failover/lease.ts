// The gateway agent's hold on its failover addresses, through the apiserver: it renews its own
// failover Lease every third of the lease duration (owned addresses, healthy uplinks, draining in
// its annotations), watches the gateway's failover Leases, and on every change and at every
// deadline decides with decideOwnership which addresses it owns. `apply` puts a decision into the
// kernel; only once it has resolved does a claimed address go into the Lease (and owned()), and a
// released one out of them, so that the Lease never names an address the node does not carry.
//
// Times are this process's monotonic clock (performance.now()): when a Lease was seen changing and
// when a renewal request was sent. A renewal counts from when it was sent, not answered, so that
// the fence falls no later than any other node can see the Lease expire.
//
// Renewals go out on schedule whether or not the last one has been answered, so that one slow
// request does not fence the node: only an apiserver slower than two thirds of a lease duration
// does. Every write is a merge patch, which no write in between can make conflict. The state (the
// annotations) goes in writes one after another, so that a later one never lands before an
// earlier one and lists addresses the node no longer holds; a renewal due while one of those is
// on its way carries only the renewal time.
import {
  CoordinationV1Api,
  PatchStrategy,
  setHeaderOptions,
  V1MicroTime,
  type KubeConfig,
  type V1Lease,
} from '@kubernetes/client-node';
import { errorText, jsonLogger, type Logger } from '../../common/index.ts';
import { apiListerWatcher, Informer, statusCode, withSignal } from '../../common/kube/index.ts';
import {
  failoverAnnotations,
  failoverLeaseLabels,
  failoverLeaseName,
  failoverNodeLabel,
  gatewayLabel,
  type FailoverClaim,
} from '../../contracts/gateway/index.ts';
import type { AgentMetrics } from '../metrics.ts';
import {
  apiserverOutage,
  decideOwnership,
  emptyMemory,
  fenceDeadline,
  lapseAfterAnswer,
  renewingOnSchedule,
  type FailoverSettings,
  type Lapse,
  type NodeLease,
  type OwnershipClaim,
  type OwnershipRelease,
} from './ownership.ts';

/** Puts a decision into the kernel: `owned` is the whole set to own once it resolves. */
export type ApplyOwnership = (
  owned: ReadonlySet<string>,
  claims: readonly OwnershipClaim[],
  releases: readonly OwnershipRelease[],
) => Promise<void>;

export interface OwnershipLoopOptions {
  kubeConfig: KubeConfig;
  /** The agent's (and the operator's) namespace, where the failover Leases live. */
  namespace: string;
  gateway: string;
  node: string;
  failover: FailoverSettings;
  apply: ApplyOwnership;
  /**
   * Told until when the kernel may answer for the owned addresses should this process stop
   * (fenceDeadline, on performance.now()'s clock): after every successful renewal, and every third
   * of a lease duration (an apiserver outage extends it without renewals); not once it has passed.
   */
  fence?: (until: number) => void;
  /** The uplinks healthy at start; none until told otherwise. */
  healthyUplinks?: Iterable<string>;
  /** Whether this node's replica of the other nodes' flows is complete; asked at every renewal and decision. */
  replicaReady?: () => boolean;
  /**
   * Called when apiserverReachable() changes, as soon as it does: the /steering answers then tell
   * the peers at once. Half a lease duration after the last successful renewal request a node says
   * it does not reach the apiserver, and its peers must hear that before the first of them reaches
   * its fence (a sixth of a lease duration later at the least): an answer every 200 ms would not do.
   */
  onApiserverChange?: () => void;
  metrics?: Pick<AgentMetrics, 'failoverClaims' | 'failoverReleases' | 'failoverGap'>;
  log?: Logger;
}

const split = (text: string | undefined) => (text ? text.split(',').filter(Boolean) : []);

/** What a failover Lease says of its node, seen changing at `observedAt`; undefined without a holder. */
export function nodeLease(lease: V1Lease, observedAt: number): NodeLease | undefined {
  const node = lease.spec?.holderIdentity;
  if (!node) return undefined;
  const annotations = lease.metadata?.annotations ?? {};
  return {
    node,
    addresses: split(annotations[failoverAnnotations.addresses]),
    healthyUplinks: split(annotations[failoverAnnotations.uplinks]),
    draining: annotations[failoverAnnotations.draining] === 'true',
    replicaReady: annotations[failoverAnnotations.replicaReady] !== 'false',
    observedAt,
  };
}

/** The metadata and spec of a node's failover Lease, renewed now. */
export function failoverLeaseBody(
  namespace: string,
  gateway: string,
  node: string,
  state: {
    owned: Iterable<string>;
    healthyUplinks: Iterable<string>;
    draining: boolean;
    replicaReady: boolean;
    leaseDurationMs: number;
  },
  lastClaim: FailoverClaim | undefined,
): V1Lease {
  return {
    apiVersion: 'coordination.k8s.io/v1',
    kind: 'Lease',
    metadata: {
      name: failoverLeaseName(gateway, node),
      namespace,
      labels: failoverLeaseLabels(gateway, node),
      annotations: {
        [failoverAnnotations.addresses]: [...state.owned].sort().join(','),
        [failoverAnnotations.uplinks]: [...state.healthyUplinks].sort().join(','),
        [failoverAnnotations.draining]: String(state.draining),
        [failoverAnnotations.replicaReady]: String(state.replicaReady),
        [failoverAnnotations.durationMs]: String(state.leaseDurationMs),
        ...(lastClaim ? { [failoverAnnotations.lastClaim]: JSON.stringify(lastClaim) } : {}),
      },
    },
    spec: {
      holderIdentity: node,
      leaseDurationSeconds: Math.max(1, Math.ceil(state.leaseDurationMs / 1000)),
      renewTime: new V1MicroTime(),
    },
  };
}

export class OwnershipLoop {
  readonly #api: CoordinationV1Api;
  readonly #namespace: string;
  readonly #gateway: string;
  readonly #node: string;
  readonly #name: string;
  readonly #apply: ApplyOwnership;
  readonly #fence: OwnershipLoopOptions['fence'];
  readonly #replicaReady: () => boolean;
  readonly #onApiserverChange: OwnershipLoopOptions['onApiserverChange'];
  /** What apiserverReachable() said when last looked at, and the timer for when it turns false. */
  #reachable = false;
  #reachableTimer: NodeJS.Timeout | undefined;
  readonly #metrics: OwnershipLoopOptions['metrics'];
  readonly #log: Logger;
  readonly #informer: Informer<V1Lease>;
  /** When each Lease (by cache key) was last seen changing. */
  readonly #observed = new Map<string, number>();
  #failover: FailoverSettings;
  #owned = new Set<string>();
  #healthyUplinks: Set<string>;
  #draining = false;
  #peersHeard: ReadonlyMap<string, boolean> = new Map();
  #memory = emptyMemory;
  #alive: readonly string[] = [];
  #elsewhere: readonly string[] = [];
  #renewedAt: number | undefined;
  /** The lapses from the renewal schedule since the last decision on schedule, and whether a request failed since the last answer. */
  #lapse: Lapse | undefined;
  #failedSinceAnswer = false;
  /** When each recent write of this node's Lease was sent, by the renewTime it carried; and the latest the watch has shown. */
  readonly #sentAt = new Map<number, number>();
  #ownWriteSeen: number | undefined;
  #lastClaim: FailoverClaim | undefined;
  #renewFailing = false;
  /** Writes of the state, one after another, and how many of them are queued or on their way. */
  #renewal: Promise<void> = Promise.resolve();
  #writing = 0;
  /** Renewals of the time alone, on their way. */
  readonly #beats = new Set<Promise<void>>();
  #deciding: Promise<void> | undefined;
  #again = false;
  #wakeTimer: NodeJS.Timeout | undefined;
  #renewTimer: NodeJS.Timeout | undefined;
  #fenceTimer: NodeJS.Timeout | undefined;
  /** The fence deadline last told. */
  #fenceUntil: number | undefined;
  #started = false;
  #stopping = false;
  readonly #stop = new AbortController();

  constructor(options: OwnershipLoopOptions) {
    this.#api = options.kubeConfig.makeApiClient(CoordinationV1Api);
    this.#namespace = options.namespace;
    this.#gateway = options.gateway;
    this.#node = options.node;
    this.#name = failoverLeaseName(options.gateway, options.node);
    this.#failover = options.failover;
    this.#apply = options.apply;
    this.#fence = options.fence;
    this.#replicaReady = options.replicaReady ?? (() => true);
    this.#onApiserverChange = options.onApiserverChange;
    this.#metrics = options.metrics;
    this.#log = options.log ?? jsonLogger;
    this.#healthyUplinks = new Set(options.healthyUplinks ?? []);
    const { namespace } = options;
    const labelSelector = `${gatewayLabel}=${options.gateway},${failoverNodeLabel}`;
    const duration = options.failover.leaseDurationMs;
    this.#informer = new Informer(
      apiListerWatcher<V1Lease>(options.kubeConfig, {
        path: `/apis/coordination.k8s.io/v1/namespaces/${namespace}/leases`,
        labelSelector,
        list: (page, config) => this.#api.listNamespacedLease({ namespace, labelSelector, ...page }, config),
      }),
      {
        kind: 'Lease',
        // Its own renewals arrive every third of a lease duration: silence is a stalled watch.
        silenceMs: Math.max(3 * duration, 2000),
        // Back soon after the apiserver is: until then this node claims nothing.
        initialBackoffMs: Math.min(duration, 1000),
        maxBackoffMs: 5000,
        log: this.#log,
      },
    );
    this.#informer.onChange((key) => {
      const lease = this.#informer.get(key);
      if (lease) this.#observed.set(key, performance.now());
      else this.#observed.delete(key);
      if (lease && key === `${namespace}/${this.#name}`) this.#sawOwnWrite(lease);
      this.#kick();
    });
  }

  /** Creates or renews the Lease, starts watching, and decides once the Leases are listed. */
  async start(): Promise<void> {
    if (this.#started) return;
    this.#started = true;
    this.#informer.start();
    this.#scheduleRenewal(0);
    if (this.#fence) this.#scheduleFence();
    if (await this.#informer.waitForSync()) this.#kick();
  }

  /** The failover addresses this node owns: applied, and recorded (or being recorded) in its Lease. */
  owned(): ReadonlySet<string> {
    return new Set(this.#owned);
  }

  /** Whether this node reaches the apiserver, as its /steering answers tell its peers (renewingOnSchedule). */
  apiserverReachable(): boolean {
    return renewingOnSchedule(this.#renewedAt, performance.now(), this.#failover.leaseDurationMs);
  }

  /** The other gateway nodes this one counted alive at its last decision. */
  alivePeers(): readonly string[] {
    return this.#alive;
  }

  /** The failover addresses that one of those listed at the last decision. */
  heldElsewhere(): readonly string[] {
    return this.#elsewhere;
  }

  setFailover(failover: FailoverSettings): void {
    this.#failover = failover;
    this.#kick();
  }

  /** The uplinks that pass their health checks: published at once, and an owner gives up the addresses of the others. */
  setHealthyUplinks(uplinks: Iterable<string>): void {
    const next = new Set(uplinks);
    if ([...next].sort().join() === [...this.#healthyUplinks].sort().join()) return;
    this.#healthyUplinks = next;
    this.#kick();
    void this.#renew();
  }

  /** Draining: this node gives up its addresses at once and takes none. */
  setDraining(draining: boolean): void {
    if (draining === this.#draining) return;
    this.#draining = draining;
    this.#kick();
    void this.#renew();
  }

  /** The other gateway nodes heard directly, and whether each reaches the apiserver. */
  setPeersHeard(peers: ReadonlyMap<string, boolean>): void {
    const text = (map: ReadonlyMap<string, boolean>) => JSON.stringify([...map].sort());
    if (text(peers) === text(this.#peersHeard)) return;
    this.#peersHeard = new Map(peers);
    this.#kick();
  }

  /**
   * Stops renewing and watching. With `release`, first gives up every address (applied, then
   * recorded with the draining flag, so the successors claim them at once); without, the Lease is
   * left to expire, as after a crash.
   */
  async stop({ release }: { release: boolean }): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#wakeTimer);
    clearTimeout(this.#renewTimer);
    clearTimeout(this.#fenceTimer);
    clearTimeout(this.#reachableTimer);
    if (!release) this.#stop.abort();
    await this.#deciding;
    if (release) {
      this.#draining = true;
      const releases = [...this.#owned].map((address): OwnershipRelease => ({ address, reason: 'drain' }));
      if (releases.length) {
        await this.#apply(new Set(), [], releases).then(
          () => this.#released(releases),
          (error: unknown) => this.#log.error('Failed to release failover addresses', { error: errorText(error) }),
        );
      }
      await this.#renew();
      this.#stop.abort();
    }
    await Promise.all([this.#renewal, ...this.#beats]);
    await this.#informer.stop();
  }

  #scheduleRenewal(delayMs: number): void {
    if (this.#stopping) return;
    this.#renewTimer = setTimeout(() => {
      if (this.#writing) this.#beat();
      else void this.#renew();
      this.#scheduleRenewal(this.#failover.leaseDurationMs / 3);
    }, delayMs);
  }

  /** Writes the Lease with the current state, after the writes before it; a failure is logged and left to the next renewal. */
  #renew(): Promise<void> {
    this.#writing++;
    this.#renewal = this.#renewal.then(() => this.#write()).finally(() => this.#writing--);
    return this.#renewal;
  }

  async #write(): Promise<void> {
    if (this.#stop.signal.aborted) return;
    const sentAt = performance.now();
    const duration = this.#failover.leaseDurationMs;
    const options = this.#requestOptions();
    const namespace = this.#namespace;
    const body = failoverLeaseBody(
      namespace,
      this.#gateway,
      this.#node,
      {
        owned: this.#owned,
        healthyUplinks: this.#healthyUplinks,
        draining: this.#draining,
        replicaReady: this.#replicaReady(),
        leaseDurationMs: duration,
      },
      this.#lastClaim,
    );
    try {
      await this.#patch(body, options).catch(async (error: unknown) => {
        // 404: not made yet, or deleted (the operator deletes the Leases of nodes that left the
        // gateway): made again at once, since waiting for the next renewal would take this node
        // off its schedule.
        if (statusCode(error) !== 404) throw error;
        const spec = { ...body.spec, acquireTime: body.spec!.renewTime };
        await this.#api.createNamespacedLease({ namespace, body: { ...body, spec } }, options);
        this.#log.info('Failover Lease created', { lease: `${namespace}/${this.#name}` });
      });
      this.#renewed(sentAt);
    } catch (error) {
      if (this.#stop.signal.aborted) return;
      if (!this.#renewFailing)
        this.#log.error('Failed to renew failover Lease', {
          lease: `${namespace}/${this.#name}`,
          error: errorText(error),
        });
      this.#renewFailing = true;
      this.#failedSinceAnswer = true;
    }
  }

  /** Renews the Lease's time alone, beside a write of the state on its way; a failure is left to that write to tell. */
  #beat(): void {
    const sentAt = performance.now();
    const body: V1Lease = { spec: { renewTime: new V1MicroTime() } };
    const beat = this.#patch(body, this.#requestOptions()).then(
      () => this.#renewed(sentAt),
      () => {
        if (!this.#stop.signal.aborted) this.#failedSinceAnswer = true;
      },
    );
    this.#beats.add(beat);
    void beat.finally(() => this.#beats.delete(beat));
  }

  /** A merge patch of the Lease: what others put on it (owner references, say) stays. */
  async #patch(body: V1Lease, options: ReturnType<typeof withSignal>): Promise<void> {
    this.#sentAt.set(new Date(body.spec!.renewTime!).getTime(), performance.now());
    // A watch that falls further behind than this is judged by the renewals' schedule anyway.
    if (this.#sentAt.size > 32) this.#sentAt.delete(this.#sentAt.keys().next().value!);
    const patch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch, options);
    await this.#api.patchNamespacedLease({ namespace: this.#namespace, name: this.#name, body }, patch);
  }

  /** The watch showed this node's Lease: a write this node sent, when its renewTime is one of theirs. */
  #sawOwnWrite(lease: V1Lease): void {
    const renewTime = lease.spec?.renewTime;
    const sentAt = renewTime === undefined ? undefined : this.#sentAt.get(new Date(renewTime).getTime());
    if (sentAt !== undefined) this.#ownWriteSeen = Math.max(this.#ownWriteSeen ?? sentAt, sentAt);
  }

  /** A request that hangs past the lease duration could not keep the fence away anyway. */
  #requestOptions() {
    return withSignal(AbortSignal.any([this.#stop.signal, AbortSignal.timeout(this.#failover.leaseDurationMs)]));
  }

  /** A renewal sent at `sentAt` was answered. */
  #renewed(sentAt: number): void {
    const answeredAt = performance.now();
    const duration = this.#failover.leaseDurationMs;
    this.#lapse = lapseAfterAnswer(this.#lapse, this.#renewedAt, answeredAt, duration, this.#failedSinceAnswer);
    this.#failedSinceAnswer = false;
    this.#renewedAt = Math.max(this.#renewedAt ?? sentAt, sentAt);
    if (this.#renewFailing) {
      this.#log.info('Failover Lease renewed again', { lease: `${this.#namespace}/${this.#name}` });
      // The watch may have failed meanwhile: until it is back this node claims nothing.
      this.#informer.retryNow();
    }
    this.#renewFailing = false;
    this.#extendFence();
    this.#followReachable();
    this.#kick();
  }

  /** Tells a change of apiserverReachable(), and looks again when it would turn false. */
  #followReachable(): void {
    const reachable = this.apiserverReachable();
    if (reachable !== this.#reachable) {
      this.#reachable = reachable;
      this.#onApiserverChange?.();
    }
    clearTimeout(this.#reachableTimer);
    if (!reachable || this.#stopping) return;
    const turns = this.#renewedAt! + this.#failover.leaseDurationMs / 2 - performance.now();
    this.#reachableTimer = setTimeout(() => this.#followReachable(), Math.max(0, turns) + 1);
  }

  #scheduleFence(): void {
    this.#fenceTimer = setTimeout(() => {
      this.#extendFence();
      if (!this.#stopping) this.#scheduleFence();
    }, this.#failover.leaseDurationMs / 3);
  }

  #extendFence(): void {
    const now = performance.now();
    const outage = apiserverOutage(this.#failover, this.#node, this.#peersHeard);
    const until = fenceDeadline(this.#renewedAt, now, this.#failover.leaseDurationMs, outage);
    // The timer between renewals that succeed finds the deadline told already: no kernel write.
    if (until === undefined || until === this.#fenceUntil) return;
    this.#fenceUntil = until;
    this.#fence?.(until);
  }

  /** Decides again, at once or right after the decision in progress. */
  #kick(): void {
    if (this.#stopping || !this.#informer.hasSynced()) return;
    if (this.#deciding) {
      this.#again = true;
      return;
    }
    this.#deciding = (async () => {
      do {
        this.#again = false;
        await this.#decide();
      } while (this.#again && !this.#stopping);
    })().finally(() => (this.#deciding = undefined));
  }

  async #decide(): Promise<void> {
    const leases = this.#informer.list().flatMap((lease) => {
      const key = `${lease.metadata?.namespace}/${lease.metadata?.name}`;
      const parsed = nodeLease(lease, this.#observed.get(key) ?? performance.now());
      return parsed ? [parsed] : [];
    });
    const decision = decideOwnership(
      {
        failover: this.#failover,
        node: this.#node,
        now: performance.now(),
        leases,
        owned: this.#owned,
        renewedAt: this.#renewedAt,
        ...(this.#lapse ? { lapse: this.#lapse } : {}),
        ...(this.#ownWriteSeen !== undefined ? { ownWriteSeen: this.#ownWriteSeen } : {}),
        healthyUplinks: this.#healthyUplinks,
        draining: this.#draining,
        replicaReady: this.#replicaReady(),
        peersHeard: this.#peersHeard,
      },
      this.#memory,
    );
    this.#memory = decision.memory;
    // Weighed now that the node is back on schedule.
    if (decision.apiserverReachable) this.#lapse = undefined;
    this.#alive = decision.alive;
    this.#elsewhere = decision.elsewhere;
    clearTimeout(this.#wakeTimer);
    if (decision.wakeAt !== undefined && !this.#stopping)
      this.#wakeTimer = setTimeout(() => this.#kick(), Math.max(0, decision.wakeAt - performance.now()));
    const { claims, releases } = decision;
    if (!claims.length && !releases.length) return;
    try {
      await this.#apply(decision.owned, claims, releases);
    } catch (error) {
      this.#log.error('Failed to apply failover addresses', {
        claims: claims.map((c) => c.address),
        releases: releases.map((r) => r.address),
        error: errorText(error),
      });
      // Tried again at the next renewal, which decides again.
      return;
    }
    this.#owned = decision.owned;
    this.#released(releases);
    for (const claim of claims) {
      this.#metrics?.failoverClaims.inc({ address: claim.address, reason: claim.reason });
      if (claim.gapMs !== undefined) this.#metrics?.failoverGap.observe({ reason: claim.reason }, claim.gapMs / 1000);
      this.#lastClaim = {
        address: claim.address,
        ...(claim.from !== undefined ? { from: claim.from } : {}),
        at: new Date().toISOString(),
        reason: claim.reason,
        ...(claim.gapMs !== undefined ? { milliseconds: Math.round(claim.gapMs) } : {}),
      };
      this.#log.info('Claimed failover address', { gateway: this.#gateway, ...this.#lastClaim });
    }
    // Not awaited: a renewal that hangs must not hold up the next decision, the fence above all.
    void this.#renew();
  }

  #released(releases: readonly OwnershipRelease[]): void {
    for (const { address, reason } of releases) {
      this.#owned.delete(address);
      this.#metrics?.failoverReleases.inc({ address, reason });
      this.#log.info('Released failover address', { gateway: this.#gateway, address, reason });
    }
  }
}
