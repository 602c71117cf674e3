// Looks at the pod: its network namespace's socket tables and the processes that hold them.
// Only sockets it has not seen before cost a walk of /proc/<pid>/fd, so a quiet pod costs four
// small file reads per scan.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { flowKey, flowOf, outboundSockets, type Association } from './associations.ts';
import { parseSocketTable, type SocketEntry, type Transport } from './proc-net.ts';
import type { Application } from '../proto/index.ts';
import { readApplication, socketOwners } from './processes.ts';

const tables: [string, Transport, 4 | 6][] = [
  ['tcp', 'tcp', 4],
  ['tcp6', 'tcp', 6],
  ['udp', 'udp', 4],
  ['udp6', 'udp', 6],
];

export class Scanner {
  readonly #proc: string;
  readonly #netDir: string;
  #applications = new Map<number, Application>();
  #current = new Map<string, Association>();

  /**
   * @param proc where procfs is mounted
   * @param netPid a process in the network namespace to look at ('self' for the scanner's own)
   */
  constructor(proc = '/proc', netPid: number | 'self' = 'self') {
    this.#proc = proc;
    this.#netDir = join(proc, String(netPid), 'net');
  }

  /** The pod's outbound flows and their applications now. */
  async scan(now = new Date()): Promise<Map<string, Association>> {
    const sockets = outboundSockets((await Promise.all(tables.map((t) => this.#readTable(...t)))).flat());
    const unknown = new Set(sockets.map((s) => s.inode).filter((inode) => !this.#applications.has(inode)));
    const owners = await socketOwners(this.#proc, unknown);
    const byPid = new Map<number, Promise<Application | undefined>>();
    for (const [inode, pid] of owners) {
      if (!byPid.has(pid)) byPid.set(pid, readApplication(this.#proc, pid));
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

  async #readTable(name: string, transport: Transport, family: 4 | 6): Promise<SocketEntry[]> {
    // A table is missing when its family is disabled in the namespace.
    const text = await readFile(join(this.#netDir, name), 'utf8').catch(() => '');
    return parseSocketTable(text, transport, family);
  }
}
