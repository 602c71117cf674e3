// Strict mode for a node-driven pod: the node agent answers the pod's programs' requests for a
// stamp (contracts/naa/stamps.ts), as the sidecar does for its pod, on a socket in the folder the
// pod's containers share (an emptyDir of the pod's own, which no other pod mounts): a request that
// comes in on a pod's socket comes from that pod. A program's pid is its own pid namespace's (no
// sidecar shares the pod's processes): the node agent finds the process among the pod's own (by
// their cgroups) by that namespace and the last field of NSpid in /proc/<pid>/status, which is the
// pid as the process's own namespace numbers it. At worst a program names another process of its
// own pod, and gets that one's stamp, as it could from the sidecar.
import { closeSync, constants, lstatSync, openSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import type { Server } from 'node:net';
import { join, relative } from 'node:path';
import type { StampRequest } from '../../contracts/naa/index.ts';

/** The pid as the process's innermost pid namespace numbers it: the last field of `NSpid:`. */
export function innermostPid(status: string): number | undefined {
  const line = /^NSpid:\s*(.*)$/m.exec(status)?.[1]?.trim();
  const last = line?.split(/\s+/).at(-1);
  return last && /^\d+$/.test(last) ? Number(last) : undefined;
}

/**
 * The host pid of the process that asked, among `pids` (the pod's processes, by the host's
 * numbers); undefined when none of them is in that pid namespace with that pid there.
 */
export function hostPidOf(proc: string, pids: readonly number[], request: StampRequest): number | undefined {
  if (!request.pidNamespace) return undefined;
  for (const pid of pids) {
    try {
      if (readlinkSync(join(proc, String(pid), 'ns', 'pid')) !== request.pidNamespace) continue;
      if (innermostPid(readFileSync(join(proc, String(pid), 'status'), 'utf8')) === request.pid) return pid;
    } catch {
      // Exited meanwhile.
    }
  }
  return undefined;
}

/**
 * Listens on the stamp socket in the pod's shared folder, reached through the root of one of the
 * pod's processes that mounts it there (/proc/<pid>/root: the container's own view of its files;
 * the sandbox's process mounts nothing), as the sidecar listens there; resolves with the path, or
 * undefined when none of `pids` mounts the folder yet. Root, with the node agent's
 * CAP_SYS_PTRACE, enters any process's root; no namespace is joined.
 *
 * The pod can change its own files while this runs: a folder on the way swapped for an absolute
 * link would be followed from the agent's root, to another pod's folder or the agent's own files.
 * So the folder is opened once, the mount it is on must be one mounted at that folder in the
 * process's own mount table (no other pod's or the agent's mount is in it), and the socket is
 * removed and bound through the open folder (/proc/self/fd/<fd>), which no later swap can move.
 * The folder stays open while the server listens: the socket is unlinked by that same path when
 * the server closes.
 */
export async function listenInPod(
  server: Server,
  proc: string,
  pids: readonly number[],
  folder: string,
  socketName: string,
): Promise<string | undefined> {
  for (const pid of pids) {
    const root = join(proc, String(pid), 'root');
    const dir = resolveWithin(root, folder);
    if (!dir) continue;
    let fd: number;
    try {
      fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
    } catch {
      continue;
    }
    try {
      const mountId = fdMountId(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      const mountPoints = mountPointsOf(readFileSync(join(proc, String(pid), 'mountinfo'), 'utf8'));
      // The pod's volume is mounted there: a folder of the container's own files is not it.
      if (mountId === undefined || mountPoints.get(mountId) !== '/' + relative(root, dir)) {
        closeSync(fd);
        continue;
      }
      const path = `/proc/self/fd/${fd}/${socketName}`;
      // A socket left by an earlier node agent, or by the pod.
      rmSync(path, { force: true });
      await listenForAll(server, path);
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    server.once('close', () => closeSync(fd));
    return join(dir, socketName);
  }
  return undefined;
}

/** The mount an open file is on, by its fdinfo (`mnt_id:`). */
export function fdMountId(fdinfo: string): number | undefined {
  const id = /^mnt_id:\s*(\d+)$/m.exec(fdinfo)?.[1];
  return id === undefined ? undefined : Number(id);
}

/** Each mount's mount point by its id, from a process's mountinfo (its octal escapes undone). */
export function mountPointsOf(mountinfo: string): Map<number, string> {
  const points = new Map<number, string>();
  for (const line of mountinfo.split('\n')) {
    const [id, , , , point] = line.split(' ');
    if (!id || point === undefined) continue;
    points.set(
      Number(id),
      point.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8))),
    );
  }
  return points;
}

/**
 * Listens on a Unix socket at `path` that every user may connect to (the pod's programs run as
 * any user). It is made so as it is bound (listen binds before it returns), not by a chmod
 * afterwards: the pod writes in the folder, and could put a link in the socket's place meanwhile,
 * which a chmod would follow to whatever file of the agent's it names.
 */
export function listenForAll(server: Server, path: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const umask = process.umask(0o111);
    try {
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    } finally {
      process.umask(umask);
    }
  });
}

/**
 * `path` as a process whose root is `root` sees it: its symbolic links (an image's /var/run →
 * /run) followed within that root, never above it. The kernel would follow an absolute link from
 * the node agent's own root instead. Undefined for a loop or a part that does not exist.
 */
export function resolveWithin(root: string, path: string): string | undefined {
  const todo = path.split('/').filter(Boolean);
  const done: string[] = [];
  for (let links = 0; todo.length;) {
    const part = todo.shift()!;
    if (part === '.') continue;
    if (part === '..') {
      done.pop();
      continue;
    }
    const at = join(root, ...done, part);
    try {
      if (!lstatSync(at).isSymbolicLink()) {
        done.push(part);
        continue;
      }
      if (++links > 40) return undefined;
      const target = readlinkSync(at);
      if (target.startsWith('/')) done.length = 0;
      todo.unshift(...target.split('/').filter(Boolean));
    } catch {
      return undefined;
    }
  }
  return join(root, ...done);
}
