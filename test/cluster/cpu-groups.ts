// A CPU cgroup for each machine the tests stand in for. The multi-node topology runs every node's
// processes, and the control plane's, on this one machine; ungrouped, the start of one node's agent
// (Node.js loading, then its first nft, conntrack and ip commands: a run queue of 30 on 2 vCPUs)
// kept the other nodes' agents off the CPU for 50–260 ms at a time, so that a gateway node's Lease
// renewal came late, as it never would on a machine of its own. In a group of its own, with the
// same weight as every other, a node gets its share of the CPU whatever another one runs. This is
// the cgroup v1 cpu hierarchy (this machine's); where it is missing, processes run ungrouped.
import { existsSync } from 'node:fs';
import { rmdir } from 'node:fs/promises';
import { join } from 'node:path';

const hierarchy = '/sys/fs/cgroup/cpu';
const parent = join(hierarchy, 'naat-test');

/** The command that runs `argv` in the CPU group `name`, made if missing; `argv` itself without the hierarchy. */
export function inCpuGroup(name: string, argv: readonly string[]): string[] {
  if (!existsSync(hierarchy)) return [...argv];
  // The shell joins the group and then becomes the command: nothing it starts runs outside.
  return ['sh', '-c', 'mkdir -p "$0" && echo $$ > "$0/cgroup.procs" && exec "$@"', join(parent, name), ...argv];
}

/**
 * Removes the group `name` once its processes are gone: a killed agent's children end a moment
 * after it, so it tries for a few seconds; one that is still busy then stays, empty later.
 */
export async function removeCpuGroup(name: string): Promise<void> {
  for (let tries = 0; tries < 30; tries++) {
    try {
      await rmdir(join(parent, name));
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EBUSY') return;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}
