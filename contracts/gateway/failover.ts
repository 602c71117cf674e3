// Gateway-node high availability: how a gateway node holds its failover addresses. Each gateway
// node renews a Lease of its own (one per gateway and node) in the operator's namespace; the
// annotations say which addresses it owns, which of its uplinks are healthy and whether it is
// draining. The other gateway nodes of the gateway read these Leases to decide who takes an
// address over, and the operator reads them for the gateway's status.failover and its Events.
// A node is alive for the others while its Lease changes at least once per lease duration, as
// each of them observes it on its own clock (so no two clocks are compared).
import { createHash } from 'node:crypto';
import { gatewayLabels } from './objects.ts';

/** The label that marks a Lease as a gateway node's failover Lease (value: the node). */
export const failoverNodeLabel = 'naat.dev/failover-node';

/** The Lease's annotations: addresses owned, healthy uplinks, draining, and the last claim. */
export const failoverAnnotations = {
  /** The failover addresses the node owns, canonical, comma-separated, sorted. */
  addresses: 'naat.dev/addresses',
  /** The node's uplinks that are healthy, comma-separated, sorted: an address needs its uplink. */
  uplinks: 'naat.dev/healthy-uplinks',
  /** "true" while the node gives up its addresses and takes none. */
  draining: 'naat.dev/draining',
  /**
   * "false" while the node's replica of the other nodes' flows is not complete yet (just started):
   * the others are preferred to take an address over. A Lease without it counts as complete.
   */
  replicaReady: 'naat.dev/replica-ready',
  /** The lease duration in milliseconds the node renews with (the Lease's own field counts seconds). */
  durationMs: 'naat.dev/lease-duration-ms',
  /** JSON FailoverClaim of the node's most recent claim of an address. */
  lastClaim: 'naat.dev/last-claim',
} as const;

/** Why an address moved, as status.failover.lastFailover.reason says. */
export type FailoverReason = 'LeaseExpired' | 'Released' | 'Failback' | 'Unowned';

/** A node's claim of an address, recorded in its Lease (failoverAnnotations.lastClaim). */
export interface FailoverClaim {
  address: string;
  /** The node that owned it before, if any. */
  from?: string;
  /** When the claim was made (RFC 3339 with milliseconds). */
  at: string;
  reason: FailoverReason;
  /** How long the address had no owner, as the claiming node measured it. */
  milliseconds?: number;
}

/** The name of a gateway node's failover Lease; long names end in a hash so that it stays a valid name. */
export function failoverLeaseName(gateway: string, node: string): string {
  const name = `naat-fo-${gateway}-${node}`;
  if (name.length <= 253) return name;
  const hash = createHash('sha256').update(`${gateway}\0${node}`).digest('hex').slice(0, 16);
  return `${name.slice(0, 236).replace(/[-.]+$/, '')}-${hash}`;
}

/** The labels of a gateway node's failover Lease. */
export function failoverLeaseLabels(gateway: string, node: string): Record<string, string> {
  return { ...gatewayLabels(gateway), [failoverNodeLabel]: node.length <= 63 ? node : nodeLabelValue(node) };
}

// A label value holds 63 characters; a longer node name is named by the Lease's holderIdentity.
const nodeLabelValue = (node: string) =>
  `${node.slice(0, 46).replace(/[-.]+$/, '')}-${createHash('sha256').update(node).digest('hex').slice(0, 16)}`;
