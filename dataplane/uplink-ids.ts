// Uplink ids: the number of each uplink in the marks of its flows and in its routing table. An id
// is allocated once per uplink name and kept in the state directory (/run/naat, which goes away
// with the conntrack table on reboot), so a restart or an added uplink never renumbers the marks
// of flows already pinned.
//
// The uplinks of failover addresses are the exception: their ids are fixed by the config (the same
// on every gateway node), because a flow translated to a failover address carries its uplink id in
// its conntrack mark, and the entry replicated to the node that takes the address over must select
// the same uplink there. Turning failover on for an uplink can therefore renumber a node's uplinks
// once: flows pinned to a renumbered id then leave by the uplink that holds it now and break.
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Keeps the ids of uplinks that had one and gives new uplinks the lowest free ids, so that a
 * restart or an added uplink never renumbers the marks of flows already pinned. Ids run from 1 to
 * `maxId` (what the mark bits hold); a kept id above it (the bits were narrowed) is given anew.
 * `fixed` ids (failoverUplinkIds) win over kept ones and are never given to another uplink.
 */
export function allocateUplinkIds(
  previous: ReadonlyMap<string, number>,
  names: readonly string[],
  maxId: number,
  fixed: ReadonlyMap<string, number> = new Map(),
): Map<string, number> {
  const ids = new Map<string, number>();
  for (const [name, id] of fixed) {
    if (id > maxId) throw new Error(`uplink ${name} needs id ${id}: the uplink id mark bits hold ${maxId}`);
  }
  const reserved = new Set(fixed.values());
  for (const name of names) {
    const pinned = fixed.get(name);
    const id = previous.get(name);
    if (pinned !== undefined) ids.set(name, pinned);
    else if (id !== undefined && id <= maxId && !reserved.has(id)) ids.set(name, id);
  }
  const used = new Set([...ids.values(), ...reserved]);
  let next = 1;
  for (const name of [...names].sort()) {
    if (ids.has(name)) continue;
    while (used.has(next)) next++;
    if (next > maxId) throw new Error(`more than ${maxId} uplinks: the uplink id mark bits hold no more`);
    ids.set(name, next);
    used.add(next);
  }
  return ids;
}

/** The ids in use, saved in `stateDir` before any flow is marked with a new one. */
export class UplinkIds {
  readonly #file: string;
  readonly #dir: string;
  #ids = new Map<string, number>();

  /** `file` lets other numbered things (the node agent's peers) keep their ids the same way. */
  constructor(stateDir: string, file = 'uplinks.json') {
    this.#dir = stateDir;
    this.#file = join(stateDir, file);
  }

  /** Reads the saved ids; none when there is no file or it cannot be read. */
  async load(): Promise<void> {
    try {
      this.#ids = new Map(Object.entries(JSON.parse(await readFile(this.#file, 'utf8')) as Record<string, number>));
    } catch {
      this.#ids = new Map();
    }
  }

  /** The ids of `names` (see allocateUplinkIds), saved first when they changed. */
  async allocate(
    names: readonly string[],
    maxId: number,
    fixed?: ReadonlyMap<string, number>,
  ): Promise<ReadonlyMap<string, number>> {
    const ids = allocateUplinkIds(this.#ids, names, maxId, fixed);
    if (!sameIds(ids, this.#ids)) await this.#save(ids);
    this.#ids = ids;
    return ids;
  }

  get current(): ReadonlyMap<string, number> {
    return this.#ids;
  }

  /** The name of the uplink with this id; undefined for 0, not naat's. */
  nameOf(id: number): string | undefined {
    if (!id) return undefined;
    for (const [name, value] of this.#ids) if (value === id) return name;
    return undefined;
  }

  async #save(ids: Map<string, number>): Promise<void> {
    await mkdir(this.#dir, { recursive: true });
    await writeFile(`${this.#file}.tmp`, JSON.stringify(Object.fromEntries(ids)));
    await rename(`${this.#file}.tmp`, this.#file);
  }
}

function sameIds(a: ReadonlyMap<string, number>, b: ReadonlyMap<string, number>): boolean {
  return a.size === b.size && [...a].every(([name, id]) => b.get(name) === id);
}
