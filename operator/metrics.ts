// The operator's /metrics: reconciles timed and counted by controller and result, the work queues'
// depth, leadership, the webhook's reviews, and the gateways' failovers. Values that something else
// keeps (a queue's length, the webhook's counts, a gateway's status) are read at each scrape.
import { Counter, Gauge, Histogram, readAtScrape, Registry } from '../common/metrics/index.ts';
import type { FailoverStatus, LastFailover } from './failover.ts';
import type { ControllerOptions, ReconcileResult } from './runtime/controller.ts';

type Around = NonNullable<ControllerOptions['around']>;

export interface OperatorMetricSources {
  /** Keys waiting in each controller's queue, by controller name. */
  queueDepths(): Iterable<readonly [string, number]>;
  isLeader(): boolean;
  /** Admission reviews answered so far, by result. */
  webhookReviews(): Readonly<Record<string, number>>;
  /** The status.failover of each gateway with failover addresses, by gateway name. */
  failovers(): Iterable<readonly [string, FailoverStatus]>;
}

export class OperatorMetrics {
  readonly registry = new Registry();
  readonly reconcileDuration = new Histogram({
    name: 'naat_operator_reconcile_duration_seconds',
    help: 'Duration of each reconcile, its span included, by controller and result (error: it threw and will be retried).',
    labelNames: ['controller', 'result'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly reconciles = new Counter({
    name: 'naat_operator_reconcile_total',
    help: 'Reconciles finished, by controller and result: success, or error (it threw and will be retried).',
    labelNames: ['controller', 'result'],
    registers: [this.registry],
  });
  readonly #failovers = new Counter({
    name: 'naat_operator_failovers_total',
    help: 'Failover addresses claimed by a gateway node, by gateway and reason (LeaseExpired, Released, Failback, Unowned), each counted once by the leader that told it with an Event.',
    labelNames: ['gateway', 'reason'],
    registers: [this.registry],
  });
  readonly #failoverDuration = new Histogram({
    name: 'naat_operator_failover_duration_seconds',
    help: "How long each claimed failover address had no owner, by gateway: from the old owner's last renewal or release to the claim, as the claiming node measured it.",
    labelNames: ['gateway'],
    buckets: [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30],
    registers: [this.registry],
  });

  constructor(sources: OperatorMetricSources) {
    new Gauge({
      name: 'naat_operator_queue_depth',
      help: "Keys waiting in the controller's queue to be reconciled.",
      labelNames: ['controller'],
      collect: readAtScrape(() =>
        [...sources.queueDepths()].map(([controller, depth]) => [{ controller }, depth] as const),
      ),
      registers: [this.registry],
    });
    new Gauge({
      name: 'naat_operator_leader',
      help: 'Whether this replica holds the leader Lease, 1 or 0.',
      collect: readAtScrape(() => [[{}, sources.isLeader() ? 1 : 0]]),
      registers: [this.registry],
    });
    new Counter({
      name: 'naat_operator_webhook_reviews_total',
      help: 'Pod admission reviews answered, by result: injected, skipped, failed or rejected.',
      labelNames: ['result'],
      collect: readAtScrape(() =>
        Object.entries(sources.webhookReviews()).map(([result, count]) => [{ result }, count] as const),
      ),
      registers: [this.registry],
    });
    const failovers = () => [...sources.failovers()];
    new Gauge({
      name: 'naat_operator_failover_healthy_nodes',
      help: 'Gateway nodes that renew their failover Lease and are not drained, by gateway, as its status says: the candidates for its failover addresses.',
      labelNames: ['gateway'],
      collect: readAtScrape(() =>
        failovers().map(([gateway, f]) => [{ gateway }, f.healthyNodes?.length ?? 0] as const),
      ),
      registers: [this.registry],
    });
    new Gauge({
      name: 'naat_operator_failover_unowned_addresses',
      help: 'Failover addresses that no gateway node with a current Lease owns, by gateway, as its status says: new flows of the pods given them are dropped until a node claims them.',
      labelNames: ['gateway'],
      collect: readAtScrape(() =>
        failovers().map(([gateway, f]) => [{ gateway }, (f.addresses ?? []).filter((a) => !a.node).length] as const),
      ),
      registers: [this.registry],
    });
  }

  /** Counts a claim of a failover address that was told with an Event. */
  failoverClaimed(gateway: string, failover: LastFailover): void {
    this.#failovers.inc({ gateway, reason: failover.reason });
    if (failover.milliseconds !== undefined) {
      this.#failoverDuration.observe({ gateway }, failover.milliseconds / 1000);
    }
  }

  /**
   * A Controller's `around`: times and counts each reconcile of `controller`, with `inner` (such as
   * a tracing span) inside, so that the time includes it. Returns or throws what the reconcile does.
   */
  timed(controller: string, inner?: Around): Around {
    return async (key, next) => {
      const started = performance.now();
      let result = 'error';
      try {
        const value: ReconcileResult = await (inner ? inner(key, next) : next());
        result = 'success';
        return value;
      } finally {
        const labels = { controller, result };
        this.reconcileDuration.observe(labels, (performance.now() - started) / 1000);
        this.reconciles.inc(labels);
      }
    };
  }
}
