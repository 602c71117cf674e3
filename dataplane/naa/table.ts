// The association table: which application of which pod owns each flow the node's pods opened.
// The gateway's kernel rules key a flow by (pod address, protocol, source port); the table keeps
// the destination too, so the attribution query can answer for a whole 5-tuple.
import type { PodRef } from '../../proto/index.ts';
import type { FlowAssociation } from '../render.ts';
import { sourceKey } from '../flow-key.ts';

export type Transport = 'tcp' | 'udp';

/**
 * An association as the server keeps it: the dataplane's association (render.ts), with what the
 * server knows of every accepted one: the pod's identity, when it was observed and received, and
 * the destination, empty with port 0 when the socket is unconnected.
 */
export interface AssociationEntry extends FlowAssociation {
  pod: PodRef;
  transport: Transport;
  destinationAddress: string;
  destinationPort: number;
  observedAt: Date;
  /** When the gateway accepted it. */
  receivedAt: Date;
}

/** A flow of a pod as a dissociation names it: an entry without what the driver says of its owner. */
export type PodFlow = Omit<AssociationEntry, 'application' | 'observedAt' | 'receivedAt'>;

/** A change to the table as data: what an NAA stream decides (stream.ts) and its server makes. */
export type TableChange =
  | { op: 'upsert'; entry: AssociationEntry }
  | { op: 'remove'; flow: PodFlow }
  | { op: 'replacePod'; pod: PodRef; entries: AssociationEntry[] };

export interface AssociationChanges {
  upsert: AssociationEntry[];
  remove: AssociationEntry[];
}

/** The kernel key of an entry: what the gateway's rules can see of a flow's first packet. */
export function kernelKey(entry: Pick<AssociationEntry, 'transport' | 'sourceAddress' | 'sourcePort'>): string {
  return sourceKey(entry.transport, entry.sourceAddress, entry.sourcePort);
}

export function entryKey(
  entry: Pick<
    AssociationEntry,
    'transport' | 'sourceAddress' | 'sourcePort' | 'destinationAddress' | 'destinationPort'
  >,
): string {
  return `${kernelKey(entry)} ${entry.destinationAddress} ${entry.destinationPort}`;
}

/**
 * Entries by pod. Replacing a pod's whole set (a snapshot) or single entries yields exactly the
 * changes the kernel needs, so the caller can apply them in one batch.
 */
export class AssociationTable {
  #byPod = new Map<string, Map<string, AssociationEntry>>();

  /** Makes `change`; returns what changed. */
  change(change: TableChange): AssociationChanges {
    switch (change.op) {
      case 'upsert':
        return this.upsert(change.entry);
      case 'remove':
        return this.remove(change.flow);
      case 'replacePod':
        return this.replacePod(change.pod, change.entries);
    }
  }

  /** Puts `entries` in place of everything the pod had; returns what changed. */
  replacePod(pod: PodRef, entries: AssociationEntry[]): AssociationChanges {
    const before = this.#byPod.get(pod.uid) ?? new Map<string, AssociationEntry>();
    const after = new Map(entries.map((e) => [entryKey(e), e]));
    const changes: AssociationChanges = { upsert: [], remove: [] };
    for (const [key, entry] of after) {
      const old = before.get(key);
      if (!old || old.application.pid !== entry.application.pid) changes.upsert.push(entry);
      else after.set(key, old);
    }
    for (const [key, entry] of before) if (!after.has(key)) changes.remove.push(entry);
    if (after.size) this.#byPod.set(pod.uid, after);
    else this.#byPod.delete(pod.uid);
    return changes;
  }

  upsert(entry: AssociationEntry): AssociationChanges {
    const pod = this.#podEntries(entry.pod);
    pod.set(entryKey(entry), entry);
    return { upsert: [entry], remove: [] };
  }

  remove(entry: PodFlow): AssociationChanges {
    const pod = this.#byPod.get(entry.pod.uid);
    const key = entryKey(entry);
    const found = pod?.get(key);
    if (!found) return { upsert: [], remove: [] };
    pod!.delete(key);
    if (pod!.size === 0) this.#byPod.delete(entry.pod.uid);
    return { upsert: [], remove: [found] };
  }

  /** Forgets a pod that is gone. */
  removePod(pod: PodRef): AssociationChanges {
    return this.replacePod(pod, []);
  }

  /** Whether the pod holds an entry for the same flow (an upsert of it replaces, not adds). */
  has(entry: AssociationEntry): boolean {
    return this.#byPod.get(entry.pod.uid)?.has(entryKey(entry)) ?? false;
  }

  countFor(pod: PodRef): number {
    return this.#byPod.get(pod.uid)?.size ?? 0;
  }

  get size(): number {
    let size = 0;
    for (const entries of this.#byPod.values()) size += entries.size;
    return size;
  }

  /** Entries whose flow starts from this address and port, newest first. */
  lookup(transport: Transport, sourceAddress: string, sourcePort: number): AssociationEntry[] {
    const key = kernelKey({ transport, sourceAddress, sourcePort });
    const found: AssociationEntry[] = [];
    for (const entries of this.#byPod.values()) {
      for (const entry of entries.values()) if (kernelKey(entry) === key) found.push(entry);
    }
    return found.sort((a, b) => b.receivedAt.getTime() - a.receivedAt.getTime());
  }

  entries(): AssociationEntry[] {
    return [...this.#byPod.values()].flatMap((entries) => [...entries.values()]);
  }

  #podEntries(pod: PodRef): Map<string, AssociationEntry> {
    let entries = this.#byPod.get(pod.uid);
    if (!entries) this.#byPod.set(pod.uid, (entries = new Map()));
    return entries;
  }
}
