// The tunnels, steering routes and rules in the kernel behind a small interface: `add` makes the
// kernel hold at least the desired state, `prune` takes away what a role owns beyond it. Callers
// add before they change nftables and prune after, so that no flow is ever marked for a route
// that is not there yet (make before break). A role owns the VXLAN devices of its name prefix,
// the ip rules of its preferences and the routing tables of its range, and nothing else.
import { exec, type Command } from '../exec.ts';
import {
  tunnelDeviceName,
  tunnelSysctls,
  type Family,
  type TunnelDevice,
  type TunnelRoute,
  type TunnelRule,
  type TunnelState,
  type Underlay,
} from './tunnel.ts';

export interface TunnelOwnership {
  role: 'node' | 'gateway';
  preferences: readonly number[];
  ownsTable(table: number): boolean;
}

export interface TunnelKernel {
  /** Creates or updates the desired devices, peers, routes and rules; removes nothing. */
  add(desired: TunnelState): Promise<void>;
  /** Removes what the role owns beyond `desired` (everything, given an empty state). */
  prune(desired: TunnelState): Promise<void>;
  /** Adds or replaces these routes alone: nothing is listed or checked first. */
  replaceRoutes(routes: readonly TunnelRoute[]): Promise<void>;
  /** Removes these routes alone; one already gone is no error. */
  removeRoutes(routes: readonly TunnelRoute[]): Promise<void>;
  /** This node's underlay address and MTU per family, as routing reaches these addresses. */
  underlay(towards: readonly string[]): Promise<Map<Family, Underlay>>;
}

export const emptyTunnelState = (): TunnelState => ({ devices: [], routes: [], rules: [] });

const routeKey = (r: TunnelRoute) => `${r.family} ${r.table} ${r.destination} ${r.device} ${r.via}`;
/** What `ip route replace` replaces: the route of one destination in one table. */
const routeSlot = (r: TunnelRoute) => `${r.family} ${r.table} ${r.destination}`;
const ruleKey = (r: TunnelRule) =>
  `${r.family} ${r.preference} ${r.table} ${r.fwmark ? `${r.fwmark.value}/${r.fwmark.mask}` : ''} ${r.iif ?? ''} ${r.from ?? ''}`;
/** An `ip -batch` line and the family it runs under (`ip -4`/`ip -6`). */
type Line = [Family, string];
const hex = (n: number) => `0x${n.toString(16)}`;
const prefixOf = (role: TunnelOwnership['role']) => tunnelDeviceName(role, 0).slice(0, -1);

interface LinkInfo {
  ifname: string;
  mtu: number;
  address: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; port?: number; local?: string; local6?: string } };
}

/** Drives `ip` and `bridge`; kernel settings through `writeSysctl` (paths under /proc/sys). */
export class ExecTunnelKernel implements TunnelKernel {
  readonly #own: TunnelOwnership;
  readonly #ip: Command;
  readonly #bridge: Command;
  readonly #writeSysctl: (path: string, value: string) => Promise<void>;

  constructor(
    ownership: TunnelOwnership,
    writeSysctl: (path: string, value: string) => Promise<void>,
    ip: Command = ['ip'],
    bridge: Command = ['bridge'],
  ) {
    this.#own = ownership;
    this.#writeSysctl = writeSysctl;
    this.#ip = ip;
    this.#bridge = bridge;
  }

  async add(desired: TunnelState): Promise<void> {
    const links = new Map((await this.#devices()).map((l) => [l.ifname, l]));
    for (const device of desired.devices) await this.#ensureDevice(device, links.get(device.name));
    for (const [path, value] of desired.sysctls ?? []) await this.#writeSysctl(path, value);
    const routes = desired.routes.map((r) => routeLine('replace', r));
    const have = new Set((await this.#rules()).map(ruleKey));
    const rules = desired.rules
      .filter((r) => !have.has(ruleKey(r)))
      .map((r): Line => [r.family, `rule add ${ruleSelector(r)}`]);
    // Routes first: a rule must never lead to a table that is not filled yet.
    await this.#lines([...routes, ...rules]);
  }

  async prune(desired: TunnelState): Promise<void> {
    const wantRules = new Set(desired.rules.map(ruleKey));
    const rules = (await this.#rules()).filter((r) => !wantRules.has(ruleKey(r)));
    await this.#lines(rules.map((r): Line => [r.family, `rule del ${ruleSelector(r)}`]));
    const wantRoutes = new Set(desired.routes.map(routeKey));
    const routes = (await this.#routes()).filter((r) => !wantRoutes.has(routeKey(r)));
    await this.removeRoutes(routes);
    const wanted = new Map(desired.devices.map((d) => [d.name, d]));
    for (const link of await this.#devices()) {
      const device = wanted.get(link.ifname);
      if (!device) await this.#run(this.#ip, ['link', 'del', link.ifname]);
      else await this.#prunePeers(device);
    }
  }

  async replaceRoutes(routes: readonly TunnelRoute[]): Promise<void> {
    await this.#lines(routes.map((r) => routeLine('replace', r)));
  }

  async removeRoutes(routes: readonly TunnelRoute[]): Promise<void> {
    await this.#lines(routes.map((r) => routeLine('del', r)));
  }

  async underlay(towards: readonly string[]): Promise<Map<Family, Underlay>> {
    const found = new Map<Family, Underlay>();
    for (const address of towards) {
      const family: Family = address.includes(':') ? 6 : 4;
      if (found.has(family)) continue;
      const [route] = JSON.parse(await this.#run(this.#ip, ['-j', 'route', 'get', address])) as Array<{
        dev: string;
        prefsrc?: string;
      }>;
      if (!route?.prefsrc) continue;
      const [link] = JSON.parse(await this.#run(this.#ip, ['-j', 'link', 'show', 'dev', route.dev])) as LinkInfo[];
      if (link) found.set(family, { address: route.prefsrc, mtu: link.mtu });
    }
    return found;
  }

  async #ensureDevice(device: TunnelDevice, link: LinkInfo | undefined): Promise<void> {
    const data = link?.linkinfo?.info_data;
    const same =
      data && data.id === device.vni && data.port === device.port && (data.local ?? data.local6) === device.local;
    if (link && !same) await this.#run(this.#ip, ['link', 'del', device.name]);
    if (!link || !same) {
      await this.#run(this.#ip, [
        'link',
        'add',
        device.name,
        'address',
        device.mac,
        'mtu',
        String(device.mtu),
        'type',
        'vxlan',
        'id',
        String(device.vni),
        'dstport',
        String(device.port),
        'local',
        device.local,
        'nolearning',
      ]);
      // The link-local address is the one peers route to; the kernel must not make another.
      await this.#run(this.#ip, ['link', 'set', device.name, 'addrgenmode', 'none']);
    } else if (link.mtu !== device.mtu || link.address !== device.mac) {
      await this.#run(this.#ip, ['link', 'set', device.name, 'mtu', String(device.mtu), 'address', device.mac]);
    }
    for (const [path, value] of tunnelSysctls(device.name)) await this.#writeSysctl(path, value);
    await this.#lines([
      [6, `address replace ${device.linkLocal}/64 dev ${device.name} nodad`],
      [6, `link set ${device.name} up`],
      ...device.peers.map((p): Line => [
        6,
        `neigh replace ${p.linkLocal} lladdr ${p.mac} dev ${device.name} nud permanent`,
      ]),
    ]);
    for (const p of device.peers) {
      await this.#run(this.#bridge, [
        'fdb',
        'replace',
        p.mac,
        'dev',
        device.name,
        'dst',
        p.remote,
        'self',
        'permanent',
      ]);
    }
  }

  /** Removes the FDB entries and neighbours of peers the device no longer has. */
  async #prunePeers(device: TunnelDevice): Promise<void> {
    const macs = new Set(device.peers.map((p) => p.mac));
    const fdb = JSON.parse(await this.#run(this.#bridge, ['-j', 'fdb', 'show', 'dev', device.name])) as Array<{
      mac: string;
      dst?: string;
    }>;
    for (const entry of fdb) {
      if (entry.dst && !macs.has(entry.mac)) {
        await this.#run(this.#bridge, ['fdb', 'del', entry.mac, 'dev', device.name, 'dst', entry.dst, 'self']);
      }
    }
    const linkLocals = new Set(device.peers.map((p) => p.linkLocal));
    const neighbours = JSON.parse(
      await this.#run(this.#ip, ['-6', '-j', 'neigh', 'show', 'dev', device.name, 'nud', 'permanent']),
    ) as Array<{ dst: string }>;
    const gone = neighbours.filter((n) => !linkLocals.has(n.dst));
    await this.#lines(gone.map((n): Line => [6, `neigh del ${n.dst} dev ${device.name}`]));
  }

  async #devices(): Promise<LinkInfo[]> {
    const links = JSON.parse(await this.#run(this.#ip, ['-d', '-j', 'link', 'show', 'type', 'vxlan'])) as LinkInfo[];
    const prefix = prefixOf(this.#own.role);
    return links.filter((l) => l.ifname.startsWith(prefix) && /^\d+$/.test(l.ifname.slice(prefix.length)));
  }

  async #rules(): Promise<TunnelRule[]> {
    const rules: TunnelRule[] = [];
    for (const [family, text] of await this.#listBoth(['rule', 'show'])) {
      const listed = JSON.parse(text) as Array<Record<string, string | number>>;
      for (const r of listed) {
        const preference = Number(r.priority);
        if (!this.#own.preferences.includes(preference)) continue;
        const table = r.table === 'main' ? 'main' : Number(r.table);
        if (table !== 'main' && !this.#own.ownsTable(table)) continue;
        rules.push({
          family,
          preference,
          table,
          ...(r.fwmark !== undefined
            ? { fwmark: { value: Number(r.fwmark), mask: Number(r.fwmask ?? 0xffffffff) } }
            : {}),
          ...(r.iif !== undefined ? { iif: String(r.iif) } : {}),
          ...(r.src !== undefined && r.src !== 'all' ? { from: String(r.src) } : {}),
        });
      }
    }
    return rules;
  }

  async #routes(): Promise<TunnelRoute[]> {
    const routes: TunnelRoute[] = [];
    for (const [family, text] of await this.#listBoth(['route', 'show', 'table', 'all'])) {
      const listed = JSON.parse(text) as Array<{
        dst: string;
        table?: string;
        dev?: string;
        gateway?: string;
        via?: { host: string };
      }>;
      for (const r of listed) {
        const table = Number(r.table);
        if (!this.#own.ownsTable(table)) continue;
        const via = r.via?.host ?? r.gateway;
        if (!via || !r.dev) continue;
        routes.push({ family, table, destination: r.dst, device: r.dev, via });
      }
    }
    return routes;
  }

  /** `ip -j <args>` of both families, listed at once. */
  async #listBoth(args: string[]): Promise<Array<[Family, string]>> {
    return Promise.all(
      ([4, 6] as const).map(async (family): Promise<[Family, string]> => [
        family,
        await this.#run(this.#ip, [`-${family}`, '-j', ...args]),
      ]),
    );
  }

  // -force goes on past a failed line (a route whose device is gone already); what matters is
  // the state afterwards, which the next sync reads again. The two families' batches run at once:
  // a line of one never depends on one of the other.
  async #lines(lines: Line[]): Promise<void> {
    await Promise.all(
      ([4, 6] as const).map(async (family) => {
        const text = lines.filter(([f]) => f === family).map(([, line]) => line);
        if (text.length) await this.#run(this.#ip, [`-${family}`, '-force', '-batch', '-'], `${text.join('\n')}\n`);
      }),
    );
  }

  async #run(command: Command, args: string[], input?: string): Promise<string> {
    const { code, stdout, stderr } = await exec(command, args, input);
    if (code !== 0) throw new Error(`${[...command, ...args].join(' ')} failed: ${stderr.trim()}`);
    return stdout;
  }
}

/** The `ip -batch` line that replaces or deletes a route. */
function routeLine(verb: 'replace' | 'del', r: TunnelRoute): Line {
  return [
    r.family,
    `route ${verb} ${r.destination} via ${r.family === 4 ? 'inet6 ' : ''}${r.via} dev ${r.device} table ${r.table}`,
  ];
}

function ruleSelector(r: TunnelRule): string {
  const parts = [`pref ${r.preference}`];
  if (r.fwmark) parts.push(`fwmark ${hex(r.fwmark.value)}/${hex(r.fwmark.mask)}`);
  if (r.iif) parts.push(`iif ${r.iif}`);
  if (r.from) parts.push(`from ${r.from}`);
  parts.push(`table ${r.table}`);
  return parts.join(' ');
}

/** The kernel's state in memory, for unit tests of the agents. */
export class FakeTunnelKernel implements TunnelKernel {
  state: TunnelState = emptyTunnelState();
  readonly underlays: Map<Family, Underlay>;

  constructor(underlays: Map<Family, Underlay> = new Map([[4, { address: '192.0.2.1', mtu: 1500 }]])) {
    this.underlays = underlays;
  }

  async add(desired: TunnelState): Promise<void> {
    const devices = new Map(this.state.devices.map((d) => [d.name, d]));
    for (const d of desired.devices) devices.set(d.name, d);
    const routes = new Map([...this.state.routes, ...desired.routes].map((r) => [routeKey(r), r]));
    const rules = new Map([...this.state.rules, ...desired.rules].map((r) => [ruleKey(r), r]));
    this.state = { devices: [...devices.values()], routes: [...routes.values()], rules: [...rules.values()] };
  }

  async prune(desired: TunnelState): Promise<void> {
    const devices = new Map(desired.devices.map((d) => [d.name, d]));
    const routes = new Set(desired.routes.map(routeKey));
    const rules = new Set(desired.rules.map(ruleKey));
    this.state = {
      devices: this.state.devices.filter((d) => devices.has(d.name)).map((d) => devices.get(d.name)!),
      routes: this.state.routes.filter((r) => routes.has(routeKey(r)) && devices.has(r.device)),
      rules: this.state.rules.filter((r) => rules.has(ruleKey(r))),
    };
  }

  async replaceRoutes(routes: readonly TunnelRoute[]): Promise<void> {
    const replaced = new Set(routes.map(routeSlot));
    this.state = {
      ...this.state,
      routes: [...this.state.routes.filter((r) => !replaced.has(routeSlot(r))), ...routes],
    };
  }

  async removeRoutes(routes: readonly TunnelRoute[]): Promise<void> {
    const gone = new Set(routes.map(routeKey));
    this.state = { ...this.state, routes: this.state.routes.filter((r) => !gone.has(routeKey(r))) };
  }

  async underlay(): Promise<Map<Family, Underlay>> {
    return this.underlays;
  }
}
