// Gateway-node high availability as the operator reports it: who owns each failover address,
// which gateway nodes are healthy, and the last failover, read from the gateway nodes' failover
// Leases (contracts/gateway/failover.ts), and one Event per claim. Pure: the reconciler
// (reconcilers/failover.ts) brings the Leases, when it saw each of them change, and the time.
// A node is healthy while the operator saw its Lease change within the lease duration, on the
// operator's own clock, as the gateway nodes judge each other: no two clocks are compared.
import { createHash } from 'node:crypto';
import { isIP } from 'node:net';
import type { V1Lease } from '@kubernetes/client-node';
import {
  canonicalAddress,
  failoverAnnotations,
  type FailoverClaim,
  type FailoverReason,
} from '../contracts/gateway/index.ts';
import type { EgressGatewayStatus } from '../crds/index.ts';

export type FailoverStatus = NonNullable<EgressGatewayStatus['failover']>;
export type LastFailover = NonNullable<FailoverStatus['lastFailover']>;

const reasons: readonly FailoverReason[] = ['LeaseExpired', 'Released', 'Failback', 'Unowned'];

/** What the operator reads of one gateway node's failover Lease. */
export interface NodeLease {
  /** The Lease's name, for messages. */
  lease: string;
  /** The node that holds it (holderIdentity). */
  node: string;
  /** The addresses it says the node owns. */
  addresses: string[];
  draining: boolean;
  /** The lease duration the node renews with, when it says one. */
  durationMs?: number;
  lastClaim?: FailoverClaim;
  /** What is wrong with its annotations: that part is ignored. */
  problems: string[];
}

/** A gateway node's failover Lease as the operator reads it; none without a holder. */
export function readFailoverLease(lease: V1Lease): NodeLease | undefined {
  const node = lease.spec?.holderIdentity;
  if (!node) return undefined;
  const name = lease.metadata?.name ?? '';
  const annotations = lease.metadata?.annotations ?? {};
  const problems: string[] = [];
  const problem = (annotation: string, what: string) =>
    problems.push(`Lease ${name}: annotation ${annotation} ${what}: ${JSON.stringify(annotations[annotation])}`);

  const addresses: string[] = [];
  for (const address of (annotations[failoverAnnotations.addresses] ?? '').split(',').filter(Boolean)) {
    if (isIP(address)) addresses.push(canonicalAddress(address));
    else problem(failoverAnnotations.addresses, `holds ${JSON.stringify(address)}, not an IP address`);
  }
  const duration = annotations[failoverAnnotations.durationMs];
  const durationMs = Number(duration);
  const durationSaid = duration !== undefined && Number.isInteger(durationMs) && durationMs > 0;
  if (duration !== undefined && !durationSaid) {
    problem(failoverAnnotations.durationMs, 'is not a positive whole number of milliseconds');
  }
  const claim = annotations[failoverAnnotations.lastClaim];
  let lastClaim: FailoverClaim | undefined;
  if (claim !== undefined) {
    const why = claimProblem(claim);
    if (why) problem(failoverAnnotations.lastClaim, why);
    else lastClaim = JSON.parse(claim) as FailoverClaim;
  }
  return {
    lease: name,
    node,
    addresses,
    draining: annotations[failoverAnnotations.draining] === 'true',
    ...(durationSaid ? { durationMs } : {}),
    ...(lastClaim ? { lastClaim: { ...lastClaim, address: canonicalAddress(lastClaim.address) } } : {}),
    problems,
  };
}

/** What is wrong with a last-claim annotation, if anything. */
function claimProblem(text: string): string | undefined {
  let claim: unknown;
  try {
    claim = JSON.parse(text);
  } catch {
    return 'is not JSON';
  }
  if (!claim || typeof claim !== 'object' || Array.isArray(claim)) return 'is not a JSON object';
  const { address, from, at, reason, milliseconds } = claim as Record<string, unknown>;
  if (typeof address !== 'string' || !isIP(address)) return 'has no IP address in address';
  if (from !== undefined && (typeof from !== 'string' || !from)) return 'has a from that is not a node name';
  if (typeof at !== 'string' || Number.isNaN(Date.parse(at))) return 'has no RFC 3339 time in at';
  if (!reasons.includes(reason as FailoverReason)) return `has a reason other than ${reasons.join(', ')}`;
  if (milliseconds !== undefined && !(Number.isInteger(milliseconds) && (milliseconds as number) >= 0)) {
    return 'has milliseconds that are not a whole number of at least 0';
  }
  return undefined;
}

/**
 * When the operator first saw each Lease's current version (its resourceVersion), by Lease name;
 * `inherited` while the version is one the Lease already had when the operator first looked.
 */
export type Sightings = ReadonlyMap<string, { version: string; at: number; inherited?: boolean }>;

/**
 * The sightings after reading `leases` at `now`: a Lease whose version changed was renewed (or
 * written) since it was last read, so it is seen now; one that is gone is forgotten. At the first
 * look (no previous sightings) nothing says when the Leases were last renewed: they are inherited,
 * and the status written before decides about them until they change (desiredFailoverStatus).
 */
export function sight(
  previous: Sightings | undefined,
  leases: Array<{ lease: string; version: string }>,
  now: number,
): Sightings {
  return new Map(
    leases.map(({ lease, version }) => {
      const seen = previous?.get(lease);
      if (seen?.version === version) return [lease, seen] as const;
      return [lease, { version, at: now, ...(previous ? {} : { inherited: true }) }] as const;
    }),
  );
}

export interface FailoverView {
  /** The gateway's failover addresses (spec.failover.addresses), canonical. */
  addresses: string[];
  /** spec.failover.leaseDurationMilliseconds, for Leases that do not say theirs. */
  leaseDurationMs: number;
  /** Nodes drained by the gateway (spec.failover.drainNodes) or cordoned. */
  drained: ReadonlySet<string>;
  leases: NodeLease[];
  sightings: Sightings;
  /** The time on the sightings' clock. */
  now: number;
  /** The status as last written: its lastFailover stays until a later claim replaces it. */
  previous?: FailoverStatus;
}

/**
 * The gateway's status.failover, and how long until a healthy node's Lease would be out of date
 * if it is not renewed (when the status must be looked at again even if nothing changes).
 * - A Lease is current while it was seen to change within its lease duration. An inherited one
 *   (unchanged since the operator first looked, after a restart or a change of leader) is current
 *   for a lease duration only if the status written before names its node, healthy or owner: a
 *   node that was out stays out and one that was in stays in, so a new leader rewrites nothing.
 * - An address's owner is the node whose current Lease lists it; of two (the moment a node takes
 *   over from one that still renews), the one that claimed it last. None while no current Lease
 *   lists it.
 * - Healthy nodes: those with a current Lease that neither drain themselves nor are drained.
 * - lastFailover: the latest claim in the Leases, or the previous one if none is later.
 */
export function desiredFailoverStatus(view: FailoverView): { status: FailoverStatus; recheckInMs?: number } {
  const leftMs = (l: NodeLease) => {
    const seen = view.sightings.get(l.lease);
    return seen ? seen.at + (l.durationMs ?? view.leaseDurationMs) - view.now : -1;
  };
  const named = new Set([
    ...(view.previous?.healthyNodes ?? []),
    ...(view.previous?.addresses ?? []).flatMap((a) => (a.node ? [a.node] : [])),
  ]);
  const current = view.leases.filter(
    (l) => leftMs(l) >= 0 && (!view.sightings.get(l.lease)?.inherited || named.has(l.node)),
  );
  const claimedAt = (l: NodeLease, address: string) =>
    l.lastClaim?.address === address ? Date.parse(l.lastClaim.at) : -Infinity;
  const addresses = view.addresses.map((address) => {
    const [owner] = current
      .filter((l) => l.addresses.includes(address))
      .sort((a, b) => claimedAt(b, address) - claimedAt(a, address) || a.node.localeCompare(b.node));
    return owner ? { address, node: owner.node } : { address };
  });
  const healthyNodes = [
    ...new Set(current.filter((l) => !l.draining && !view.drained.has(l.node)).map((l) => l.node)),
  ].sort();
  const lastFailover = latest([
    ...(view.previous?.lastFailover ? [view.previous.lastFailover] : []),
    ...view.leases.flatMap((l) => (l.lastClaim ? [lastFailoverOf(l.node, l.lastClaim)] : [])),
  ]);
  const recheck = Math.min(...current.map(leftMs));
  return {
    status: {
      addresses,
      ...(healthyNodes.length ? { healthyNodes } : {}),
      ...(lastFailover ? { lastFailover } : {}),
    },
    // Just past the moment the first current Lease goes out of date.
    ...(current.length ? { recheckInMs: Math.floor(recheck) + 1 } : {}),
  };
}

/**
 * The failover Leases left behind: those of nodes that are no longer gateway nodes of their
 * gateway (or whose gateway, or its failover, is gone), once they went unrenewed for twice their
 * lease duration as the sightings saw it. Earlier, the node's agent may still hold addresses
 * through it, and the other nodes would take a deleted Lease for a node lost at once. Also how
 * long until the next of the others may go.
 */
export function leftoverLeases(view: {
  leases: Array<Pick<NodeLease, 'lease' | 'node' | 'durationMs'>>;
  /** The gateway's nodes; none when the gateway or its failover is gone. */
  gatewayNodes: ReadonlySet<string>;
  /** For Leases that do not say theirs. */
  leaseDurationMs: number;
  sightings: Sightings;
  now: number;
}): { leftover: string[]; recheckInMs?: number } {
  const leftover: string[] = [];
  let recheck = Infinity;
  for (const l of view.leases) {
    if (view.gatewayNodes.has(l.node)) continue;
    const seen = view.sightings.get(l.lease)?.at ?? view.now;
    const leftMs = seen + 2 * (l.durationMs ?? view.leaseDurationMs) - view.now;
    if (leftMs < 0) leftover.push(l.lease);
    else recheck = Math.min(recheck, leftMs);
  }
  return { leftover, ...(recheck < Infinity ? { recheckInMs: Math.floor(recheck) + 1 } : {}) };
}

/** The latest of these failovers by their time; the earlier-listed of two at the same time. */
function latest(failovers: LastFailover[]): LastFailover | undefined {
  return failovers.reduce<LastFailover | undefined>(
    (best, f) => (!best || Date.parse(f.at) > Date.parse(best.at) ? f : best),
    undefined,
  );
}

/** A node's claim as the status's lastFailover says it. */
export function lastFailoverOf(node: string, claim: FailoverClaim): LastFailover {
  return {
    address: claim.address,
    ...(claim.from ? { from: claim.from } : {}),
    to: node,
    at: claim.at,
    reason: claim.reason,
    ...(claim.milliseconds !== undefined ? { milliseconds: claim.milliseconds } : {}),
  };
}

/**
 * The name of the Event that tells of a claim, the same wherever and whenever it is made: a
 * replica that finds it exists knows the claim was told, by itself before a restart or by another
 * replica that led before it.
 */
export function claimEventName(gateway: string, failover: LastFailover): string {
  const hash = createHash('sha256')
    .update([gateway, failover.to, failover.address, failover.at, failover.reason].join('\0'))
    .digest('hex')
    .slice(0, 16);
  return `${gateway.slice(0, 220).replace(/[-.]+$/, '')}.failover.${hash}`;
}

/** An Event's note about a claim, e.g. "address 192.0.2.10 moved from a to b (LeaseExpired) after 640 ms". */
export function claimNote(failover: LastFailover): string {
  const after = failover.milliseconds !== undefined ? ` after ${failover.milliseconds} ms` : '';
  return failover.from
    ? `address ${failover.address} moved from ${failover.from} to ${failover.to} (${failover.reason})${after}`
    : `address ${failover.address} claimed by ${failover.to} (${failover.reason})${after}`;
}
