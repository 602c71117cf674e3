// Looks at the pod: its network namespace's socket tables and the processes that hold them.
// Only sockets it has not seen before cost a walk of /proc/<pid>/fd. A quiet pod costs a few
// small file reads per scan: the UDP tables, and counters that say whether the TCP tables
// changed (with `skipQuiet`, only the namespace's packet and socket counts, until they move).
// The TCP tables themselves are read only when they did, or, every `rereadMs`, when a descriptor
// that held one of the pod's associated TCP sockets no longer does: reading them walks the
// kernel's whole connection hash table, which all namespaces of the node share, and costs
// milliseconds even for an empty pod (a node agent driving a hundred pods spent most of its idle
// CPU there when it read them every 5 s), while a descriptor costs a microsecond. Where the kernel
// counts a process's descriptors (Linux 6.2 and later), only the descriptors of a process whose
// count moved are looked at, and all of them every `fullLookEvery` intervals.
import { join } from 'node:path';
import { flowKey, flowOf, outboundSockets, type Association } from './associations.ts';
import { ProcFile } from './proc-file.ts';
import { parseSocketTable, quietMarker, tcpChangeMarker, type SocketEntry, type Transport } from './proc-net.ts';
import type { Application } from '../../proto/index.ts';
import {
  allPids,
  descriptorCounter,
  readApplication,
  socketOwners,
  stillHolds,
  type SocketHolder,
} from './processes.ts';

const tables: [string, Transport, 4 | 6][] = [
  ['tcp', 'tcp', 4],
  ['tcp6', 'tcp', 6],
  ['udp', 'udp', 4],
  ['udp6', 'udp', 6],
];

/**
 * Which processes may own the namespace's sockets, and who each is. By default every process
 * procfs shows (the sidecar's view of its pod), as `readApplication` reads them.
 */
export interface Owners {
  pids(): Iterable<number>;
  identify(pid: number): Promise<Application | undefined>;
}

/**
 * Every this many safety intervals, the associated TCP sockets are looked for at their descriptors
 * whatever their owners' descriptor counts say: a process that closed one and opened another
 * descriptor between two looks has the same count.
 */
export const fullLookEvery = 4;

export interface ScannerOptions {
  /**
   * How often, at the longest, the scanner looks at what its cheap checks say did not change:
   * the associated TCP sockets in their owners' descriptors (the TCP tables are read when one is
   * not there), and with `skipQuiet` the namespace itself. A safety net for what the counters do
   * not show at once: a socket handed to another process; and a connection that its process closes
   * after the peer did, which loses its owner at once, but where CurrEstab does not count
   * CLOSE_WAIT moves the TCP counters only when its last ACK arrives (on Linux 6.18 the close
   * moves CurrEstab at once, measured with the FIN dropped; not `sockets: used`, which counts the
   * kernel's socket until it is freed). 5 s.
   *
   * Where the kernel counts descriptors (`descriptors`), a process whose count did not move since
   * all its sockets were last found held is taken to hold them still: that saves a `readlink` per
   * socket, fifty for a process of fifty connections, for one `stat`. A close it hides (the process
   * opened another descriptor, not a TCP socket, whose connect() would move the counters) is seen
   * at the next full look, within `fullLookEvery` intervals, or when the counters move first (the
   * kernel frees the closed connection once its last ACK comes or its FIN is given up on).
   */
  rereadMs?: number;
  /**
   * Counts a process's open descriptors; by default `descriptorCounter`'s, which is none where the
   * kernel does not count them (then every associated socket is looked for at each interval).
   */
  descriptors?: ((pid: number) => number | undefined) | undefined;
  /** The processes that may own its sockets (the node agent's: those of one pod). */
  owners?: Owners;
  /**
   * Whether a scan returns at once what the last one did while the namespace's packet and socket
   * counters stand still (`quietMarker`), until `rereadMs` has passed: a few microseconds instead
   * of the tens that the TCP counters and the UDP tables cost, for a node agent that scans a
   * hundred pods five times a second. A UDP socket bound already that connects without sending
   * is then seen at its first datagram or within `rereadMs`, instead of at the next scan.
   */
  skipQuiet?: boolean;
}

export class Scanner {
  readonly #proc: string;
  readonly #netDir: string;
  readonly #rereadMs: number;
  readonly #owners: Owners;
  readonly #skipQuiet: boolean;
  /** Each associated socket's application, and where its owner was last seen holding it, by inode. */
  #owned = new Map<number, { application: Application; holder: SocketHolder }>();
  /** The inodes of the TCP sockets among the current associations. */
  #tcpOwned: number[] = [];
  readonly #descriptors: ((pid: number) => number | undefined) | undefined;
  /**
   * Each owner's descriptor count when all its associated TCP sockets were last found held, since
   * the associations last changed.
   */
  #heldCounts = new Map<number, number>();
  /** When the safety net last looked for every associated TCP socket at its descriptor. */
  #fullLookAt = -Infinity;
  #current = new Map<string, Association>();
  /** Each table's text as last read, and its rows. */
  #tables = new Map<string, { text: string; entries: SocketEntry[] }>();
  /**
   * The TCP change marker read just before the TCP tables were last read, and when they were read
   * or their associated sockets last found held.
   */
  #tcpRead: { marker: string | undefined; at: number } | undefined;
  /** With `skipQuiet`: the quiet marker read just before the last scan that looked, and when that was. */
  #looked: { marker: string | undefined; at: number } | undefined;
  /**
   * The outbound sockets whose owner the last look did not find, and the owners' processes it
   * looked among: looked for again once those processes are others.
   */
  #unowned: { inodes: ReadonlySet<number>; pids: string } = { inodes: new Set(), pids: '' };
  /** The namespace's /proc/net files by name, kept open. */
  readonly #files = new Map<string, ProcFile>();

  /**
   * @param proc where procfs is mounted
   * @param netPid a process in the network namespace to look at ('self' for the scanner's own)
   */
  constructor(proc = '/proc', netPid: number | 'self' = 'self', options: ScannerOptions = {}) {
    this.#proc = proc;
    this.#netDir = join(proc, String(netPid), 'net');
    this.#rereadMs = options.rereadMs ?? 5_000;
    this.#owners = options.owners ?? { pids: () => allPids(proc), identify: (pid) => readApplication(proc, pid) };
    this.#skipQuiet = options.skipQuiet ?? false;
    this.#descriptors = 'descriptors' in options ? options.descriptors : descriptorCounter(proc);
  }

  /**
   * The pod's outbound flows and their applications now. When no socket table changed since the
   * last scan, it returns the very map it returned then (owners that could not be found are
   * looked for again at the next change).
   */
  async scan(now = new Date()): Promise<Map<string, Association>> {
    if (this.#skipQuiet && this.#stillQuiet(now.getTime()) && !this.#newOwners()) return this.#current;
    const readTcp = this.#tcpMayHaveChanged(now.getTime());
    let changed = false;
    for (const [name, transport, family] of tables) {
      if (transport === 'udp' || readTcp) changed = this.#readTable(name, transport, family) || changed;
    }
    if (!changed && !this.#newOwners()) return this.#current;

    const sockets = outboundSockets(tables.flatMap(([name]) => this.#tables.get(name)?.entries ?? []));
    const unknown = new Set(sockets.map((s) => s.inode).filter((inode) => !this.#owned.has(inode)));
    const pids = unknown.size ? [...this.#owners.pids()] : [];
    const owners = socketOwners(this.#proc, unknown, pids);
    const byPid = new Map<number, Promise<Application | undefined>>();
    for (const [inode, holder] of owners) {
      if (!byPid.has(holder.pid)) byPid.set(holder.pid, this.#owners.identify(holder.pid));
      const application = await byPid.get(holder.pid);
      if (application) this.#owned.set(inode, { application, holder });
    }

    const next = new Map<string, Association>();
    const live = new Set<number>();
    this.#tcpOwned = [];
    // A count taken before a socket became one of the associations says nothing of it.
    this.#heldCounts.clear();
    for (const socket of sockets) {
      const application = this.#owned.get(socket.inode)?.application;
      if (!application) continue;
      live.add(socket.inode);
      if (socket.transport === 'tcp') this.#tcpOwned.push(socket.inode);
      const flow = flowOf(socket);
      const key = flowKey(flow);
      next.set(key, { flow, application, observedAt: this.#current.get(key)?.observedAt ?? now });
    }
    for (const inode of this.#owned.keys()) if (!live.has(inode)) this.#owned.delete(inode);
    this.#unowned = { inodes: new Set([...unknown].filter((inode) => !live.has(inode))), pids: pids.join(',') };
    this.#current = next;
    return next;
  }

  /**
   * The outbound sockets, by inode, whose owner the last look did not find among the owners'
   * processes: a process the owners do not include yet (the node agent's listing of a pod's
   * processes is what names them), one that exited, or one that is not the pod's.
   */
  get unowned(): ReadonlySet<number> {
    return this.#unowned.inodes;
  }

  /** Whether a socket's owner was not found and the owners' processes are others now: look again. */
  #newOwners(): boolean {
    return this.#unowned.inodes.size > 0 && [...this.#owners.pids()].join(',') !== this.#unowned.pids;
  }

  /**
   * Whether the TCP tables must be read: the marker changed or cannot be read, the clock went
   * back, or the safety interval has passed and an associated socket is no longer where its owner
   * held it. The marker is read before the tables, so that a socket appearing between the two
   * reads changes the marker against the one kept and is seen at the next scan.
   */
  #tcpMayHaveChanged(now: number): boolean {
    const marker = tcpChangeMarker(this.#read('snmp'), this.#read('sockstat'), this.#read('sockstat6'));
    const last = this.#tcpRead;
    if (last !== undefined && marker !== undefined && marker === last.marker && now >= last.at) {
      if (now - last.at < this.#rereadMs) return false;
      if (this.#tcpStillHeld(now)) {
        last.at = now;
        return false;
      }
    }
    this.#tcpRead = { marker, at: now };
    return true;
  }

  /**
   * Whether the namespace's packet and socket counters have not moved since the last scan that
   * looked, and that scan is recent (and the clock did not go back). The marker is read before
   * anything else, so that what happens during a scan moves it against the one kept.
   */
  #stillQuiet(now: number): boolean {
    const marker = quietMarker(this.#read('dev'), this.#read('sockstat'));
    const last = this.#looked;
    if (last && marker !== undefined && marker === last.marker && now >= last.at && now - last.at < this.#rereadMs)
      return true;
    this.#looked = { marker, at: now };
    return false;
  }

  /**
   * Whether every associated TCP socket is still held by one of the owners' processes: then none
   * lost its owner, which is what the counters may not show yet (what else of a held socket they
   * do not show, its queues and timers, does not change its association).
   * A socket no longer at its descriptor (closed there, but held by a forked child, say) is looked
   * for again among the owners' processes, and is found there next time. An owner's descriptors
   * are looked at only when its count moved since they were last all found held, or at a full look
   * (`ScannerOptions.rereadMs`); each count is taken before them, so that a close while they are
   * looked at moves it against the one kept.
   */
  #tcpStillHeld(now: number): boolean {
    const full = now - this.#fullLookAt >= this.#rereadMs * fullLookEvery || now < this.#fullLookAt;
    if (full) this.#fullLookAt = now;
    const counts = new Map<number, number | undefined>();
    const moved = new Set<number>();
    for (const inode of this.#tcpOwned) {
      const { holder } = this.#owned.get(inode)!;
      if (!counts.has(holder.pid)) counts.set(holder.pid, this.#descriptors?.(holder.pid));
      const count = counts.get(holder.pid);
      if (!full && count !== undefined && this.#heldCounts.get(holder.pid) === count) continue;
      if (!stillHolds(holder, inode)) moved.add(inode);
    }
    const movedFrom = new Set([...moved].map((inode) => this.#owned.get(inode)!.holder.pid));
    this.#heldCounts = new Map(
      [...counts].filter((entry): entry is [number, number] => entry[1] !== undefined && !movedFrom.has(entry[0])),
    );
    if (moved.size === 0) return true;
    const found = socketOwners(this.#proc, moved, this.#owners.pids());
    for (const [inode, holder] of found) this.#owned.get(inode)!.holder = holder;
    return found.size === moved.size;
  }

  /** Reads a table; returns whether its text changed since it was last read. */
  #readTable(name: string, transport: Transport, family: 4 | 6): boolean {
    const text = this.#read(name);
    if (this.#tables.get(name)?.text === text) return false;
    this.#tables.set(name, { text, entries: parseSocketTable(text, transport, family) });
    return true;
  }

  /**
   * A file of the namespace's /proc/net; empty when missing (a family disabled in the namespace).
   * Kept open (`ProcFile`): a node agent reads them for each pod it drives.
   */
  #read(name: string): string {
    let file = this.#files.get(name);
    if (!file) this.#files.set(name, (file = new ProcFile(join(this.#netDir, name))));
    return file.read();
  }

  /** Closes the namespace's files: while they are open, they hold the namespace. */
  close(): void {
    for (const file of this.#files.values()) file.close();
    this.#files.clear();
  }
}
