// Which failover addresses this gateway node owns, decided from what it sees of the gateway's
// failover Leases (HA design, "Ownership"). Pure: the shell (lease.ts) brings the Leases, the
// clock and what it heard from its peers, applies the decision and keeps the memory it returns.
//
// The rules:
// - A node is alive for this one while this one saw its Lease change within the lease duration, on
//   this node's own clock (no two clocks are compared). Just after this node (re)gains the
//   apiserver, every Lease counts as seen then: it takes nothing over for a full lease duration.
//   A lapse from its renewal schedule in which every request was only answered late counts as
//   losing the apiserver only when a peer it heard meanwhile did not reach the apiserver either;
//   otherwise the node claims nothing only until its watch shows a renewal it sent after the lapse.
// - Eligible for an address: alive, not draining, and the address's uplink healthy on the node.
//   Among the eligible, those whose replica of the others' flows is complete come first: a node
//   that has just started would take an address over without its flows. Only when none is does
//   the choice fall on the others. A node counts itself complete, as eligible, only once its own
//   Lease has said so for a lease duration.
// - An owner keeps its address while it is eligible (no flapping). With failback, it gives it up
//   once the rendezvous-preferred eligible node has been that for the failback delay (and for at
//   least one lease duration, so that the preferred node is past its own wait and claims at once),
//   and only while it hears that node directly saying it reaches the apiserver.
// - A node claims an address when it is the rendezvous winner among the eligible nodes and no
//   alive node lists it. Two refinements keep two nodes from claiming at once although a claim
//   shows in a Lease only once applied: a node counts itself eligible only once its own Lease has
//   said so (as the others see it) for a lease duration, so that a node whose view lags knows it
//   too, and a new winner waits for the node preferred before it (see mayBeClaiming).
// - Fence: a node whose last successful renewal request was sent more than a lease duration ago
//   gives up everything, since the others may already have taken its addresses over; except when
//   it hears at least one other gateway node directly and none of those it hears reaches the
//   apiserver (an apiserver outage: nobody can take over, so nothing moves). A gateway of one node
//   keeps its addresses through an outage too. When the outage ends, the peers seldom renew in the
//   same instant: a node that held through it keeps holding for half a lease duration after it
//   stopped counting the outage, time for its own renewal to succeed. No peer can claim before
//   then: a node whose lapse a peer may have counted so settles (and may claim) only a lease
//   duration after it regained its schedule. Such a peer, off its own schedule, says so on its
//   /steering answers half a lease duration before its fence would fall.
// - A node claims nothing while it has not seen its own Lease change for a lease duration: a watch
//   that stalls would make every other Lease look expired. Once it sees its own Lease again, every
//   Lease counts as seen then, as after regaining the apiserver: a watch that comes back delivers
//   what it missed one Lease at a time (a relist too, as far as when each was seen goes), and its
//   own may come first, fresh beside another's that only looks expired.
import { rendezvous } from '../../common/index.ts';
import type { FailoverReason, GatewayConfig } from '../../contracts/gateway/index.ts';

export type FailoverSettings = NonNullable<GatewayConfig['failover']>;

/** What this node sees of another gateway node's failover Lease. */
export interface NodeLease {
  node: string;
  /** The addresses it lists as owned. */
  addresses: readonly string[];
  healthyUplinks: readonly string[];
  draining: boolean;
  /** Whether its replica of the other nodes' flows is complete (each sent it a whole round, or it waited long enough). */
  replicaReady: boolean;
  /** When this node last saw the Lease change, in milliseconds on this node's clock. */
  observedAt: number;
}

export interface OwnershipInput {
  failover: FailoverSettings;
  /** This node. */
  node: string;
  /** Milliseconds on this node's (monotonic) clock. */
  now: number;
  /** The gateway's failover Leases as this node sees them, its own among them (what the others know of it). */
  leases: readonly NodeLease[];
  /** The addresses this node owns now. */
  owned: ReadonlySet<string>;
  /** When this node sent its last renewal request that succeeded; undefined before the first. */
  renewedAt: number | undefined;
  /**
   * This node's lapses from its renewal schedule (renewingOnSchedule) since its last decision on
   * schedule, taken together: a lapse between two decisions is seen through this.
   */
  lapse?: Lapse;
  /** When this node sent the latest of its Lease writes that its watch has shown. */
  ownWriteSeen?: number;
  /** This node's uplinks that are healthy. */
  healthyUplinks: ReadonlySet<string>;
  /** This node gives up its addresses and takes none (SIGTERM with the node leaving), besides config.draining. */
  draining: boolean;
  /** Whether this node's replica of the other nodes' flows is complete. */
  replicaReady: boolean;
  /** The other gateway nodes this node hears directly, and whether each says it reaches the apiserver. */
  peersHeard: ReadonlyMap<string, boolean>;
}

/** A time off the renewal schedule: what this node's peers could hear of it, and why it was. */
export interface Lapse {
  /** When it went off schedule: from then its /steering answers said it does not reach the apiserver. */
  from: number;
  /** When the answer came that put it back on schedule. */
  to: number;
  /** Whether a renewal request failed meanwhile, rather than only being answered late. */
  failed: boolean;
}

/** Why this node gives an address up. */
export type ReleaseReason = 'drain' | 'uplink' | 'fence' | 'failback' | 'conflict' | 'removed';

export interface OwnershipClaim {
  address: string;
  reason: FailoverReason;
  /** The node that owned it before, when this node knows one. */
  from?: string;
  /** How long the address had no owner, as this node measured it; without a previous owner, unknown. */
  gapMs?: number;
}

export interface OwnershipRelease {
  address: string;
  reason: ReleaseReason;
}

/** What a decision remembers for the next: carried by the shell, never read by it. */
export interface OwnershipMemory {
  /**
   * Since when this node renews on schedule (renewingOnSchedule), leaving aside lapses that nobody
   * could act on (see decideOwnership); kept through a lapse until it is known whether it counts.
   */
  reachableSince: number | undefined;
  /** When this node last heard a peer say it does not reach the apiserver. */
  heardOutageAt: number | undefined;
  /** The end of a lapse that did not count, until the watch shows a write this node sent after it. */
  catchUpAfter: number | undefined;
  /** Whether the last decision counted an apiserver outage (apiserverOutage). */
  outage: boolean;
  /** Until when this node keeps its addresses without renewing, the outage it counted over. */
  holdUntil: number | undefined;
  /** Whether this node saw its own Lease change within a lease duration at the last decision, and since when it does. */
  currentSince: number | undefined;
  /** Per address, the node last seen listing it (this one included) and when that ended, if it did. */
  owners: ReadonlyMap<string, { node: string; goneAt?: number; reason?: FailoverReason }>;
  /** Per uplink, since when this node's own Lease has said without a break that it may carry its addresses. */
  eligibleSince: ReadonlyMap<string, number>;
  /** Since when this node's own Lease has said without a break that its replica is complete. */
  replicaReadySince: number | undefined;
  /** Per address, the rendezvous-preferred eligible node (if any), since when, and the one preferred before. */
  preferred: ReadonlyMap<string, Preference>;
}

export interface Preference {
  node: string | undefined;
  since: number;
  previous: string | undefined;
}

export const emptyMemory: OwnershipMemory = {
  reachableSince: undefined,
  heardOutageAt: undefined,
  catchUpAfter: undefined,
  outage: false,
  holdUntil: undefined,
  currentSince: undefined,
  eligibleSince: new Map(),
  replicaReadySince: undefined,
  owners: new Map(),
  preferred: new Map(),
};

export interface OwnershipDecision {
  /** The addresses this node should own now. */
  owned: Set<string>;
  claims: OwnershipClaim[];
  releases: OwnershipRelease[];
  /** Whether this node renews on schedule (renewingOnSchedule), for the /steering answers. */
  apiserverReachable: boolean;
  memory: OwnershipMemory;
  /** The other nodes this one counts alive. */
  alive: string[];
  /** The failover addresses one of those lists in its Lease: held elsewhere. */
  elsewhere: string[];
  /** The latest time to decide again when nothing changes before: the next deadline a rule has. */
  wakeAt: number | undefined;
}

/**
 * Whether a node reaches the apiserver as its peers hear it (and as it must to claim): its last
 * successful renewal was sent within half a lease duration. Renewing every third of one, a node
 * keeps to that with room for the request's latency; and when the apiserver goes away for all,
 * each says so before the first of them reaches its fence (at least two thirds of a lease
 * duration after the outage began), so that none mistakes the outage for its own partition.
 */
export function renewingOnSchedule(renewedAt: number | undefined, now: number, leaseDurationMs: number): boolean {
  return renewedAt !== undefined && now - renewedAt <= leaseDurationMs / 2;
}

/**
 * The lapses to pass to the next decision once a renewal is answered at `answeredAt`: `lapse`
 * (those not weighed yet) joined by the one this answer ends, if the node was off its schedule
 * (its last successful renewal sent at `renewedAt`); `failed`: a request failed since the last answer.
 */
export function lapseAfterAnswer(
  lapse: Lapse | undefined,
  renewedAt: number | undefined,
  answeredAt: number,
  leaseDurationMs: number,
  failed: boolean,
): Lapse | undefined {
  if (renewedAt === undefined || renewingOnSchedule(renewedAt, answeredAt, leaseDurationMs)) return lapse;
  const from = renewedAt + leaseDurationMs / 2;
  return { from: Math.min(lapse?.from ?? from, from), to: answeredAt, failed: (lapse?.failed ?? false) || failed };
}

/**
 * An outage of the apiserver, not of this node: it hears at least one other gateway node directly
 * and none of those reaches the apiserver (or the gateway has no other node). Nobody can take over
 * then, so the fence does not fall.
 */
export function apiserverOutage(
  failover: Pick<FailoverSettings, 'nodes'>,
  self: string,
  peersHeard: ReadonlyMap<string, boolean>,
): boolean {
  const heard = [...peersHeard].filter(([peer]) => peer !== self);
  return !failover.nodes.some((n) => n.node !== self) || (heard.length > 0 && heard.every(([, reaches]) => !reaches));
}

/**
 * Until when the kernel may answer for this node's addresses should its agent stop deciding
 * (SIGKILL, a hang): no later than any other node may claim them, a lease duration after the last
 * successful renewal request was sent; through an apiserver outage, which keeps the addresses, a
 * lease duration after now (the others take nothing over before a full lease duration after they
 * regain the apiserver). Undefined when neither holds: the agent's fence has fallen or is due.
 */
export function fenceDeadline(
  renewedAt: number | undefined,
  now: number,
  leaseDurationMs: number,
  outage: boolean,
): number | undefined {
  const deadlines = [
    ...(renewedAt !== undefined && renewedAt + leaseDurationMs > now ? [renewedAt + leaseDurationMs] : []),
    ...(outage ? [now + leaseDurationMs] : []),
  ];
  return deadlines.length ? Math.max(...deadlines) : undefined;
}

/** The decision for `input`, given the memory the previous one returned. */
export function decideOwnership(input: OwnershipInput, memory: OwnershipMemory): OwnershipDecision {
  const { failover, node: self, now, owned } = input;
  const duration = failover.leaseDurationMs;
  const deadlines: number[] = [];
  const reachable = input.renewedAt !== undefined && now - input.renewedAt <= duration;
  const onSchedule = renewingOnSchedule(input.renewedAt, now, duration);
  if (input.renewedAt !== undefined && reachable) deadlines.push(input.renewedAt + duration + 1);
  // Off schedule, a node's peers hear that it does not reach the apiserver. One that does not reach
  // it either counts an outage and may keep its addresses past its fence (see the fence): back on
  // schedule, this node waits a full lease duration before it claims, as after a failed request,
  // which may have cost it its watch too. Such a peer says so half a lease duration before its
  // fence falls, so a lapse no peer was heard saying that around, and in which every request was
  // only answered late (a slow apiserver, a busy machine), holds back only until the watch shows a
  // renewal sent after it: a stall that delayed the answers may have delayed the watch too, and
  // what it delivers after this node's own write includes every Lease written before it.
  const heardOutageAt = [...input.peersHeard].some(([peer, reaches]) => peer !== self && !reaches)
    ? now
    : memory.heardOutageAt;
  const { lapse } = input;
  const lapseCounts =
    onSchedule && lapse !== undefined && (lapse.failed || (heardOutageAt ?? -Infinity) >= lapse.from - duration);
  const scheduleSince = onSchedule
    ? Math.max(memory.reachableSince ?? now, lapseCounts ? lapse.to : -Infinity)
    : memory.reachableSince;
  const reachableSince = onSchedule ? scheduleSince : undefined;
  const lapseEnd = onSchedule && lapse !== undefined && !lapseCounts ? lapse.to : undefined;
  const catchingUp = Math.max(memory.catchUpAfter ?? -Infinity, lapseEnd ?? -Infinity);
  const catchUpAfter = catchingUp > (input.ownWriteSeen ?? -Infinity) ? catchingUp : undefined;
  const draining = new Set(failover.draining);
  const others = input.leases.filter((lease) => lease.node !== self);
  const published = input.leases.find((lease) => lease.node === self);
  // This node sees its own renewals: its view of the Leases is current, not a watch that stalled.
  const current = published !== undefined && now - published.observedAt <= duration;
  const currentSince = current ? (memory.currentSince ?? now) : undefined;
  if (current) deadlines.push(published.observedAt + duration + 1);
  // Since when both hold: what this node saw of a Lease before then may be stale.
  const since =
    reachableSince !== undefined && currentSince !== undefined ? Math.max(reachableSince, currentSince) : undefined;
  const settled = since !== undefined && now - since >= duration;
  if (since !== undefined && !settled) deadlines.push(since + duration);
  const seenAt = (lease: NodeLease) =>
    Math.max(lease.observedAt, reachableSince ?? -Infinity, currentSince ?? -Infinity);
  const alive = others.filter((lease) => {
    const live = now - seenAt(lease) <= duration;
    if (live) deadlines.push(seenAt(lease) + duration + 1);
    return live;
  });
  const uplinkOf = new Map(failover.addresses.map((a) => [a.address, a.uplink]));
  const selfDraining = input.draining || draining.has(self);
  // Since when this node's own Lease has said, without a break, that it may carry each uplink's
  // addresses (healthy there, not draining).
  const eligibleSince = new Map<string, number>();
  if (published && !published.draining) {
    for (const uplink of published.healthyUplinks) eligibleSince.set(uplink, memory.eligibleSince.get(uplink) ?? now);
  }
  const replicaReadySince =
    published?.replicaReady && input.replicaReady ? (memory.replicaReadySince ?? now) : undefined;
  const selfReplicaReady = replicaReadySince !== undefined && now - replicaReadySince >= duration;
  if (replicaReadySince !== undefined && !selfReplicaReady) deadlines.push(replicaReadySince + duration);
  const replicaReady = new Set([
    ...alive.filter((l) => l.replicaReady).map((l) => l.node),
    ...(selfReplicaReady ? [self] : []),
  ]);
  const eligible = (address: string): string[] => {
    const uplink = uplinkOf.get(address)!;
    const nodes = alive
      .filter((l) => !l.draining && !draining.has(l.node) && l.healthyUplinks.includes(uplink))
      .map((l) => l.node);
    // The others see this node alive only while it renews, and eligible only once its Lease says
    // so: counting on an uplink that came back before the others know would make two winners. And
    // a node whose view lags, by up to a lease duration while it still sees its own renewals, may
    // not know yet: it must have seen this node eligible before this node may win over it.
    const eligibleFrom = eligibleSince.get(uplink);
    if (eligibleFrom !== undefined && now - eligibleFrom < duration) deadlines.push(eligibleFrom + duration);
    if (
      reachable &&
      !selfDraining &&
      input.healthyUplinks.has(uplink) &&
      eligibleFrom !== undefined &&
      now - eligibleFrom >= duration
    )
      nodes.push(self);
    return nodes;
  };

  // Hearing changes brings a decision at once: an outage counted at the last one lasted until now.
  const outage = apiserverOutage(failover, self, input.peersHeard);
  const holdUntil = outage ? undefined : memory.outage ? now + duration / 2 : memory.holdUntil;
  const holding = holdUntil !== undefined && now < holdUntil;
  if (holding) deadlines.push(holdUntil);
  const fenced = !reachable && !outage && !holding;

  const owners = new Map(memory.owners);
  const preferred = new Map<string, Preference>();
  const result = new Set<string>();
  const claims: OwnershipClaim[] = [];
  const releases: OwnershipRelease[] = [];
  for (const { address } of failover.addresses) {
    const candidates = eligible(address);
    const complete = candidates.filter((node) => replicaReady.has(node));
    const winner = rendezvous(address, complete.length ? complete : candidates);
    const before = memory.preferred.get(address);
    const preference =
      before && before.node === winner
        ? before
        : { node: winner, since: now, previous: before?.node ?? before?.previous };
    preferred.set(address, preference);
    const listers = alive.filter((l) => l.addresses.includes(address));
    trackOwner(owners, address, self, owned.has(address), others, listers, now);

    if (owned.has(address)) {
      const release = releaseReason(address);
      if (release) releases.push({ address, reason: release });
      else result.add(address);
      continue;
    }
    if (
      onSchedule &&
      settled &&
      catchUpAfter === undefined &&
      winner === self &&
      listers.length === 0 &&
      !mayBeClaiming(preference)
    ) {
      result.add(address);
      claims.push(claimOf(address, owners.get(address), winner, candidates));
    }
  }

  // A claim shows in the claimer's Lease only once applied. The node preferred before this one may
  // have claimed just before the preference changed: wait until its Lease changed after that (it
  // would list the address by then), it is gone, or a lease duration passed (it would be fenced).
  // Taken out of the config: given up at once.
  for (const address of owned) if (!uplinkOf.has(address)) releases.push({ address, reason: 'removed' });

  function mayBeClaiming({ since, previous }: Preference): boolean {
    const lease = alive.find((l) => l.node === previous);
    if (!lease || lease.observedAt > since || now >= since + duration) return false;
    deadlines.push(since + duration);
    return true;
  }

  function releaseReason(address: string): ReleaseReason | undefined {
    if (fenced) return 'fence';
    if (selfDraining) return 'drain';
    if (!input.healthyUplinks.has(uplinkOf.get(address)!)) return 'uplink';
    // Two owners (a partition that healed): the rendezvous winner among them keeps it. Only owners
    // seen renewing since this node reaches the apiserver and sees its own Lease count: just after
    // either, every Lease looks alive, that of a node long gone too.
    const listers = alive
      .filter((l) => l.addresses.includes(address) && l.observedAt >= (since ?? Infinity))
      .map((l) => l.node);
    if (listers.length > 0 && rendezvous(address, [self, ...listers]) !== self) return 'conflict';
    const favourite = preferred.get(address);
    // Only to a node heard directly saying it reaches the apiserver: one powered off a moment ago
    // is still alive by its Lease, and would leave the address without an owner.
    const heardUp = favourite?.node !== undefined && input.peersHeard.get(favourite.node) === true;
    if (failover.failback && heardUp && favourite!.node !== self) {
      const due = favourite.since + Math.max(failover.failbackDelaySeconds * 1000, duration);
      if (now >= due) return 'failback';
      deadlines.push(due);
    }
    return undefined;
  }

  function claimOf(
    address: string,
    before: { node: string; goneAt?: number; reason?: FailoverReason } | undefined,
    winner: string,
    candidates: string[],
  ): OwnershipClaim {
    if (!before || before.goneAt === undefined) return { address, reason: 'Unowned' };
    let reason = before.reason ?? 'Released';
    // Given up while it could have kept it: the preferred node takes it back.
    if (reason === 'Released' && failover.failback && candidates.includes(before.node) && winner !== before.node)
      reason = 'Failback';
    return { address, reason, from: before.node, gapMs: Math.max(0, now - before.goneAt) };
  }

  return {
    owned: result,
    claims,
    releases,
    apiserverReachable: onSchedule,
    memory: {
      reachableSince: scheduleSince,
      heardOutageAt,
      catchUpAfter,
      outage,
      holdUntil,
      currentSince,
      eligibleSince,
      replicaReadySince,
      owners,
      preferred,
    },
    alive: alive.map((l) => l.node),
    elsewhere: failover.addresses.map((a) => a.address).filter((a) => alive.some((l) => l.addresses.includes(a))),
    wakeAt: deadlines.length ? Math.min(...deadlines) : undefined,
  };
}

/**
 * Keeps, per address, who was seen owning it last and when that ended: for a claim's reason, its
 * previous owner and the time the address had none. A Lease that stops listing it ended it when
 * that change was seen (Released); one that listed it until it expired, at its last change
 * (LeaseExpired), the last sign of life of its owner.
 */
function trackOwner(
  owners: Map<string, { node: string; goneAt?: number; reason?: FailoverReason }>,
  address: string,
  self: string,
  ownedHere: boolean,
  leases: readonly NodeLease[],
  listers: readonly NodeLease[],
  now: number,
): void {
  if (ownedHere) {
    owners.set(address, { node: self });
    return;
  }
  const lister = listers[0];
  if (lister) {
    owners.set(address, { node: lister.node });
    return;
  }
  const before = owners.get(address);
  if (!before) {
    // Nobody seen owning it yet: an expired Lease that still lists it is its last owner.
    const expired = leases.find((l) => l.addresses.includes(address));
    if (expired) owners.set(address, { node: expired.node, goneAt: expired.observedAt, reason: 'LeaseExpired' });
    return;
  }
  if (before.goneAt !== undefined) return;
  if (before.node === self) {
    owners.set(address, { node: self, goneAt: now, reason: 'Released' });
    return;
  }
  const lease = leases.find((l) => l.node === before.node);
  if (lease?.addresses.includes(address))
    owners.set(address, { node: before.node, goneAt: lease.observedAt, reason: 'LeaseExpired' });
  else owners.set(address, { node: before.node, goneAt: lease?.observedAt ?? now, reason: 'Released' });
}
