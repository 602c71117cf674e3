// The pure core of the driver: which sockets are outbound flows, and what changed between two
// looks at the pod.
import type { Application } from '../../proto/index.ts';
import { tcpState, type SocketEntry, type Transport } from './proc-net.ts';

export interface Flow {
  transport: Transport;
  family: 4 | 6;
  /** Empty for a socket bound to every address; the gateway takes the pod's own address. */
  sourceAddress: string;
  sourcePort: number;
  /** Empty, with port 0, for an unconnected UDP socket, which may send anywhere. */
  destinationAddress: string;
  destinationPort: number;
}

export interface Association {
  flow: Flow;
  application: Application;
  observedAt: Date;
}

export interface AssociationChanges {
  associate: Association[];
  dissociate: Flow[];
}

export function flowKey(flow: Flow): string {
  return `${flow.transport} ${flow.sourceAddress} ${flow.sourcePort} ${flow.destinationAddress} ${flow.destinationPort}`;
}

const wildcard = new Set(['0.0.0.0', '::']);
const loopback = (address: string) => address.startsWith('127.') || address === '::1';

/**
 * The sockets that can carry egress flows: TCP connections this pod opened (not listening
 * sockets, not connections accepted by one of its listeners, not TIME_WAIT leftovers without an
 * owner) and bound UDP sockets. Sockets on the loopback address never leave the pod (and are not
 * the pod's address, which the gateway would refuse).
 */
export function outboundSockets(entries: readonly SocketEntry[]): SocketEntry[] {
  const listening = new Set(
    entries.filter((e) => e.transport === 'tcp' && e.state === tcpState.listen).map((e) => e.localPort),
  );
  return entries.filter((e) => {
    if (e.inode === 0 || e.localPort === 0 || loopback(e.localAddress)) return false;
    if (e.transport === 'udp') return true;
    return e.state !== tcpState.listen && e.state !== tcpState.timeWait && !listening.has(e.localPort);
  });
}

export function flowOf(entry: SocketEntry): Flow {
  const connected = !wildcard.has(entry.remoteAddress) || entry.remotePort !== 0;
  return {
    transport: entry.transport,
    family: entry.family,
    sourceAddress: wildcard.has(entry.localAddress) ? '' : entry.localAddress,
    sourcePort: entry.localPort,
    destinationAddress: connected ? entry.remoteAddress : '',
    destinationPort: connected ? entry.remotePort : 0,
  };
}

/** What to send so that a gateway holding `previous` holds `current`. */
export function diffAssociations(
  previous: ReadonlyMap<string, Association>,
  current: ReadonlyMap<string, Association>,
): AssociationChanges {
  const associate: Association[] = [];
  const dissociate: Flow[] = [];
  for (const [key, association] of current) {
    const before = previous.get(key);
    if (!before || !sameApplication(before.application, association.application)) associate.push(association);
  }
  for (const [key, association] of previous) {
    if (!current.has(key)) dissociate.push(association.flow);
  }
  return { associate, dissociate };
}

function sameApplication(a: Application, b: Application): boolean {
  return (
    a.pid === b.pid &&
    a.executable === b.executable &&
    a.processName === b.processName &&
    a.containerName === b.containerName &&
    a.uid === b.uid
  );
}
