// Looks at the pod: its network namespace's socket tables and the processes that hold them.
// Only sockets it has not seen before cost a walk of /proc/<pid>/fd. A quiet pod costs a few
// small file reads per scan: the UDP tables, and counters that say whether the TCP tables
// changed. The TCP tables themselves are read only when they did, or when `tcpRereadMs` has
// passed since they were last read: reading them walks the kernel's whole connection hash table,
// which all namespaces of the node share, and costs milliseconds even for an empty pod.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { flowKey, flowOf, outboundSockets, type Association } from './associations.ts';
import { parseSocketTable, tcpChangeMarker, type SocketEntry, type Transport } from './proc-net.ts';
import type { Application } from '../../proto/index.ts';
import { allPids, readApplication, socketOwners } from './processes.ts';

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

export class Scanner {
  readonly #proc: string;
  readonly #netDir: string;
  readonly #tcpRereadMs: number;
  readonly #owners: Owners;
  #applications = new Map<number, Application>();
  #current = new Map<string, Association>();
  /** Each table's text as last read, and its rows. */
  #tables = new Map<string, { text: string; entries: SocketEntry[] }>();
  /** The TCP change marker read just before the TCP tables were last read, and when that was. */
  #tcpRead: { marker: string | undefined; at: number } | undefined;

  /**
   * @param proc where procfs is mounted
   * @param netPid a process in the network namespace to look at ('self' for the scanner's own)
   * @param tcpRereadMs the longest time between two reads of the TCP tables when the counters say
   *   nothing changed: a safety net for what the counters do not show at once (a connection that
   *   its process closes after the peer did loses its owner at once, but moves the counters only
   *   when its last ACK arrives)
   * @param owners the processes that may own its sockets (the node agent's: those of one pod)
   */
  constructor(proc = '/proc', netPid: number | 'self' = 'self', tcpRereadMs = 5_000, owners?: Owners) {
    this.#proc = proc;
    this.#netDir = join(proc, String(netPid), 'net');
    this.#tcpRereadMs = tcpRereadMs;
    this.#owners = owners ?? { pids: () => allPids(proc), identify: (pid) => readApplication(proc, pid) };
  }

  /**
   * The pod's outbound flows and their applications now. When no socket table changed since the
   * last scan, it returns the very map it returned then (owners that could not be found are
   * looked for again at the next change).
   */
  async scan(now = new Date()): Promise<Map<string, Association>> {
    const readTcp = this.#tcpMayHaveChanged(now.getTime());
    let changed = false;
    for (const [name, transport, family] of tables) {
      if (transport === 'udp' || readTcp) changed = this.#readTable(name, transport, family) || changed;
    }
    if (!changed) return this.#current;

    const sockets = outboundSockets(tables.flatMap(([name]) => this.#tables.get(name)?.entries ?? []));
    const unknown = new Set(sockets.map((s) => s.inode).filter((inode) => !this.#applications.has(inode)));
    const owners = socketOwners(this.#proc, unknown, unknown.size ? this.#owners.pids() : []);
    const byPid = new Map<number, Promise<Application | undefined>>();
    for (const [inode, pid] of owners) {
      if (!byPid.has(pid)) byPid.set(pid, this.#owners.identify(pid));
      const application = await byPid.get(pid);
      if (application) this.#applications.set(inode, application);
    }

    const next = new Map<string, Association>();
    const live = new Set<number>();
    for (const socket of sockets) {
      const application = this.#applications.get(socket.inode);
      if (!application) continue;
      live.add(socket.inode);
      const flow = flowOf(socket);
      const key = flowKey(flow);
      next.set(key, { flow, application, observedAt: this.#current.get(key)?.observedAt ?? now });
    }
    for (const inode of this.#applications.keys()) if (!live.has(inode)) this.#applications.delete(inode);
    this.#current = next;
    return next;
  }

  /**
   * Whether the TCP tables must be read: the marker changed, cannot be read, or the tables were
   * read too long ago (or the clock went back). The marker is read before the tables, so that a
   * socket appearing between the two reads changes the marker against the one kept and is seen
   * at the next scan.
   */
  #tcpMayHaveChanged(now: number): boolean {
    const marker = tcpChangeMarker(this.#read('snmp'), this.#read('sockstat'), this.#read('sockstat6'));
    const last = this.#tcpRead;
    const recent = last !== undefined && now >= last.at && now - last.at < this.#tcpRereadMs;
    if (recent && marker !== undefined && marker === last.marker) return false;
    this.#tcpRead = { marker, at: now };
    return true;
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
   * Read synchronously: procfs answers from memory without waiting, while a promise-based read
   * costs several thread-pool round trips, which at five scans a second was most of the CPU an
   * idle sidecar used.
   */
  #read(name: string): string {
    try {
      return readFileSync(join(this.#netDir, name), 'utf8');
    } catch {
      return '';
    }
  }
}
