// Gateway-node high availability in a gateway's status: status.failover (who owns each failover
// address, the healthy gateway nodes, the last failover) from the gateway nodes' failover Leases,
// and an Event for each claim of an address (operator/failover.ts computes both). Its nodes renew
// their Leases every third of the lease duration, so this runs often and reads only the caches;
// the status is written only when it changes. With nothing renewed, it looks again just after the
// first healthy node's Lease would go out of date, so that a silent node drops out on time.
// The Leases of nodes that are no longer gateway nodes (or whose gateway is gone) are deleted once
// their nodes stopped renewing them.
import type { CoordinationV1Api } from '@kubernetes/client-node';
import { errorText, type Logger } from '../../common/index.ts';
import { statusCode } from '../../common/kube/index.ts';
import { canonicalAddress, gatewayLabel } from '../../contracts/gateway/index.ts';
import type { EgressGateway } from '../../crds/index.ts';
import type { Caches } from '../caches.ts';
import type { EventRecorder } from '../events.ts';
import {
  claimEventName,
  claimNote,
  desiredFailoverStatus,
  lastFailoverOf,
  leftoverLeases,
  readFailoverLease,
  sight,
  type LastFailover,
  type Sightings,
} from '../failover.ts';
import type { ReconcileResult } from '../runtime/controller.ts';
import { matchesLabels } from '../selector.ts';
import type { StatusWriter } from '../status-writer.ts';

// The longest lease duration a gateway may set: how long a Lease that does not say its own may
// still be renewed by its node after its gateway is gone.
const maxLeaseDurationMs = 60_000;

export interface FailoverReconcilerOptions {
  caches: Pick<Caches, 'gateways' | 'failoverLeases' | 'nodes'>;
  /** Deletes the Leases of nodes that are no longer gateway nodes. */
  leases: Pick<CoordinationV1Api, 'deleteNamespacedLease'>;
  /** Where the failover Leases are: the operator's namespace. */
  namespace: string;
  status: StatusWriter;
  events: EventRecorder;
  log: Logger;
  /** Called for each claim this replica told with an Event, e.g. to count it. */
  onClaim?: (gateway: string, failover: LastFailover) => void;
  /** A monotonic clock in milliseconds, on which Leases are seen to change. */
  now?: () => number;
}

export class FailoverReconciler {
  readonly #o: FailoverReconcilerOptions;
  /** By gateway: when this replica saw each of its nodes' Leases change. */
  readonly #sightings = new Map<string, Sightings>();
  /** By gateway: the Events of the claims its Leases hold that are told. */
  readonly #told = new Map<string, Set<string>>();
  /** By gateway: the problems its Leases' annotations have, logged when they appeared. */
  readonly #problems = new Map<string, Set<string>>();

  constructor(options: FailoverReconcilerOptions) {
    this.#o = options;
  }

  async reconcile(name: string): Promise<ReconcileResult> {
    const { caches } = this.#o;
    const gateway = caches.gateways.get(name);
    const failover = gateway?.spec.failover;
    const now = this.#now();
    const leases = caches.failoverLeases
      .list()
      .filter((l) => l.metadata?.labels?.[gatewayLabel] === name)
      .flatMap((l) => {
        const read = readFailoverLease(l);
        return read ? [{ ...read, version: l.metadata?.resourceVersion ?? '' }] : [];
      });
    const sightings = sight(this.#sightings.get(name), leases, now);
    this.#sightings.set(name, sightings);
    const leftover = leftoverLeases({
      leases,
      // Only the Leases' nodes are looked up: this runs at every renewal, and the cluster may have many nodes.
      gatewayNodes: new Set(
        gateway && failover
          ? leases
              .map((l) => l.node)
              .filter((node) => {
                const known = caches.nodes.get(node);
                return known !== undefined && matchesLabels(gateway.spec.nodeSelector, known.metadata?.labels);
              })
          : [],
      ),
      leaseDurationMs: failover?.leaseDurationMilliseconds ?? maxLeaseDurationMs,
      sightings,
      now,
    });
    await this.#remove(leftover.leftover, leases);
    if (!gateway || !failover) {
      if (leases.length === leftover.leftover.length) this.#sightings.delete(name);
      this.#told.delete(name);
      this.#problems.delete(name);
      if (gateway) await this.#o.status.applyFailover(gateway, undefined);
      return leftover.recheckInMs === undefined ? undefined : { requeueAfterMs: leftover.recheckInMs };
    }
    this.#logProblems(
      name,
      leases.flatMap((l) => l.problems),
    );

    const drained = new Set(failover.drainNodes);
    for (const { node } of leases) if (caches.nodes.get(node)?.spec?.unschedulable) drained.add(node);
    const previous = gateway.status?.failover;
    const { status, recheckInMs } = desiredFailoverStatus({
      addresses: failover.addresses.map((a) => canonicalAddress(a.address)),
      leaseDurationMs: failover.leaseDurationMilliseconds,
      drained,
      leases,
      sightings,
      now,
      ...(previous ? { previous } : {}),
    });
    // Each claim is told before the status says it, so a replica that finds it in the status
    // knows it was told.
    await this.#tell(
      gateway,
      leases.flatMap((l) => (l.lastClaim ? [lastFailoverOf(l.node, l.lastClaim)] : [])),
    );
    await this.#o.status.applyFailover(gateway, status);
    const requeueAfterMs = Math.min(recheckInMs ?? Infinity, leftover.recheckInMs ?? Infinity);
    return requeueAfterMs === Infinity ? undefined : { requeueAfterMs };
  }

  /** Deletes these Leases, each only as the version read: one renewed since stays. */
  async #remove(names: string[], leases: Array<{ lease: string; node: string; version: string }>): Promise<void> {
    for (const name of names) {
      const lease = leases.find((l) => l.lease === name)!;
      try {
        await this.#o.leases.deleteNamespacedLease({
          name,
          namespace: this.#o.namespace,
          body: { preconditions: { resourceVersion: lease.version } },
        });
        this.#o.log.info('Deleted the failover Lease of a node no longer a gateway node', {
          lease: name,
          node: lease.node,
        });
      } catch (error) {
        if (statusCode(error) === 404 || statusCode(error) === 409) continue;
        this.#o.log.warn('Failed to delete a failover Lease left behind', { lease: name, error: errorText(error) });
      }
    }
  }

  /**
   * An Event for each claim not told yet, named after the claim (claimEventName), so that a claim
   * another replica or this one before a restart told is found to exist and told no more. The
   * first time this replica looks at a gateway, the claims no later than the status's
   * lastFailover count as told: their Events may have expired since.
   */
  async #tell(gateway: EgressGateway, claims: LastFailover[]): Promise<void> {
    const name = gateway.metadata.name;
    let told = this.#told.get(name);
    if (!told) {
      const recorded = gateway.status?.failover?.lastFailover;
      const upTo = recorded ? Date.parse(recorded.at) : -Infinity;
      told = new Set(claims.filter((c) => Date.parse(c.at) <= upTo).map((c) => claimEventName(name, c)));
    }
    // Only the claims the Leases hold now: a node's next claim replaces its last one for good.
    const held = new Set<string>();
    for (const claim of claims) {
      const event = claimEventName(name, claim);
      if (told.has(event)) {
        held.add(event);
        continue;
      }
      const result = await this.#o.events.recordOnce('EgressGateway', gateway, {
        name: event,
        // An owner that stopped renewing is a node lost; the other moves are planned.
        type: claim.reason === 'LeaseExpired' ? 'Warning' : 'Normal',
        reason: 'FailoverClaimed',
        action: 'Failover',
        note: claimNote(claim),
      });
      if (result === 'failed') continue;
      held.add(event);
      if (result === 'created') this.#o.onClaim?.(name, claim);
    }
    this.#told.set(name, held);
  }

  /** Logs each problem when it appears, not at every renewal of the Lease that has it. */
  #logProblems(gateway: string, problems: string[]): void {
    const known = this.#problems.get(gateway);
    for (const problem of problems) {
      if (!known?.has(problem)) this.#o.log.warn('Ignored part of a failover Lease', { gateway, problem });
    }
    this.#problems.set(gateway, new Set(problems));
  }

  #now(): number {
    return this.#o.now?.() ?? performance.now();
  }
}
