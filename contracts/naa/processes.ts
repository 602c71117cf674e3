// Finds which process holds which socket, and who that process is, from /proc. The sidecar
// shares its pod's process namespace, so /proc shows every container's processes.
import { readdirSync, readlinkSync, statfsSync, statSync } from 'node:fs';
import { readFile, readlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { containerNameVariable } from '../sidecar-environment.ts';
import type { Application } from '../../proto/index.ts';

/** A process that holds a socket, and the descriptor through which it does. */
export interface SocketHolder {
  pid: number;
  /** The descriptor's path, /proc/<pid>/fd/<n>: it links to `socket:[<inode>]` while the process holds it. */
  fd: string;
}

/**
 * Maps each wanted socket inode to the process holding it. When several processes share a socket
 * (a parent that forked), the highest pid wins: the child is the more specific application.
 * It reads synchronously: a pod's processes may hold thousands of descriptors, procfs answers
 * each readlink from memory, and a promise per descriptor made a walk of 10,000 of them four
 * times slower (250 ms against 57 ms, without a JIT compiler, as the sidecar runs).
 */
export function socketOwners(
  proc: string,
  inodes: ReadonlySet<number>,
  pids: Iterable<number> = allPids(proc),
): Map<number, SocketHolder> {
  const owners = new Map<number, SocketHolder>();
  if (inodes.size === 0) return owners;
  for (const pid of pids) {
    const fdDir = join(proc, String(pid), 'fd');
    for (const name of readdirOrNothing(fdDir)) {
      const fd = join(fdDir, name);
      const inode = socketInode(readlinkOrNothing(fd));
      if (inode !== undefined && inodes.has(inode) && (owners.get(inode)?.pid ?? -1) < pid)
        owners.set(inode, { pid, fd });
    }
  }
  return owners;
}

/** Whether the process still holds the socket through that descriptor (not closed, nor reused for another file). */
export function stillHolds(holder: SocketHolder, inode: number): boolean {
  return socketInode(readlinkOrNothing(holder.fd)) === inode;
}

/** procfs's magic number, as statfs(2) gives it. */
const procSuperMagic = 0x9fa0;

/**
 * What counts a process's open descriptors with one `stat` of /proc/<pid>/fd, whose size Linux 6.2
 * and later set to that count: a call where looking at each descriptor takes one per descriptor.
 * Undefined where the size says nothing: a kernel before 6.2 (it is 0), or a `proc` that is not a
 * procfs (a directory's size on disk). A process that is gone counts as undefined.
 */
export function descriptorCounter(proc: string): ((pid: number) => number | undefined) | undefined {
  try {
    if (statfsSync(proc).type !== procSuperMagic || statSync(join(proc, 'self', 'fd')).size === 0) return undefined;
  } catch {
    return undefined;
  }
  return (pid) => {
    try {
      return statSync(join(proc, String(pid), 'fd')).size;
    } catch {
      return undefined;
    }
  };
}

/** The inode of a descriptor's link target `socket:[<inode>]`; undefined for any other file. */
function socketInode(target: string): number | undefined {
  const match = /^socket:\[(\d+)\]$/.exec(target);
  return match ? Number(match[1]) : undefined;
}

/** The pids of every process procfs shows. */
export function allPids(proc: string): number[] {
  return readdirSync(proc)
    .filter((name) => /^\d+$/.test(name))
    .map(Number);
}

// A process or descriptor may go away, or be another user's, while it is looked at.
function readdirOrNothing(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

function readlinkOrNothing(path: string): string {
  try {
    return readlinkSync(path);
  } catch {
    return '';
  }
}

/** Reads who a process is; undefined when it has exited meanwhile. */
export async function readApplication(proc: string, pid: number): Promise<Application | undefined> {
  const dir = join(proc, String(pid));
  try {
    const [comm, cmdline, status, cgroup, environ, executable] = await Promise.all([
      readFile(join(dir, 'comm'), 'utf8'),
      readFile(join(dir, 'cmdline'), 'utf8'),
      readFile(join(dir, 'status'), 'utf8'),
      readFile(join(dir, 'cgroup'), 'utf8'),
      readFile(join(dir, 'environ'), 'utf8').catch(() => ''),
      readlink(join(dir, 'exe')).catch(() => ''),
    ]);
    const commandLine = cmdline.split('\0').filter((arg, i, all) => arg !== '' || i < all.length - 1);
    return {
      // The name the program was started as: comm is what a program may rename (Node calls its
      // main thread "MainThread"), while argv[0] is what users see in ps and write in policies,
      // and a multi-call binary's applet name.
      processName: basename(commandLine[0] ?? '') || comm.trim(),
      executable,
      commandLine,
      containerName: environmentValue(environ, containerNameVariable),
      containerId: containerIdFromCgroup(cgroup),
      uid: Number(/^Uid:\s+(\d+)/m.exec(status)?.[1] ?? -1),
      pid,
    };
  } catch {
    return undefined;
  }
}

/** The container runtime's id (64 hex digits) from a /proc/<pid>/cgroup file; empty outside containers. */
export function containerIdFromCgroup(cgroup: string): string {
  const ids = cgroup.match(/[0-9a-f]{64}/g);
  return ids?.at(-1) ?? '';
}

/** Where the kubelet placed a process: its pod's uid and its container's runtime id. */
export interface PodPlace {
  podUid: string;
  containerId: string;
}

/**
 * The pod and container of a process from its /proc/<pid>/cgroup, or undefined for a process
 * outside the kubelet's pods. The kubelet puts each container under its pod's cgroup, named after
 * the pod's uid, in every hierarchy: `/kubepods[/<qos>]/pod<uid>/<id>` with the cgroupfs driver,
 * `/kubepods.slice/…/kubepods[-<qos>]-pod<uid with _ for ->.slice/<runtime>-<id>.scope` with
 * systemd's. A process cannot leave its container's cgroup for another pod's, and whatever it
 * makes below its own keeps the prefix, so this is not something the pod can claim.
 */
export function podOfCgroup(cgroup: string): PodPlace | undefined {
  const match =
    /^[^:\n]*:[^:\n]*:\/kubepods\b[^\n]*?pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?\/(?:[a-z]+-)*([0-9a-f]{64})(?:\.scope)?(?:\/|$)/m.exec(
      cgroup,
    );
  return match ? { podUid: match[1]!.replaceAll('_', '-'), containerId: match[2]! } : undefined;
}

function environmentValue(environ: string, name: string): string {
  const entry = environ.split('\0').find((e) => e.startsWith(`${name}=`));
  return entry?.slice(name.length + 1) ?? '';
}
