// The dataplane agent: keeps the kernel (naat's nftables table and policy routes) equal to what
// the config, the uplinks' health and the known associations call for. Every change goes through
// one queue, so syncs never interleave; a sync is atomic in nftables and make-before-break in
// routing. Stopping leaves the kernel as it is, so a restarted agent takes over established
// flows without a gap; only `remove` (the gateway is gone for good) takes everything away.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { GatewayConfig } from './config.ts';
import type { Conntrack, Flow } from './conntrack.ts';
import { FlowTable } from './conntrack.ts';
import type { Nftables, Operation } from './nft/nftables.ts';
import { elementOperations, namesOf, planSync } from './nft/nftables.ts';
import type { Table } from './nft/model.ts';
import { trace } from './nft/trace.ts';
import {
  allocateUplinkIds,
  leastLoadedCounts,
  localUplinks,
  markMask,
  markShift,
  render,
  type FlowAssociation,
  type Rendered,
} from './render.ts';
import { desiredRouting, planRouting, type Routing } from './routing.ts';

export interface Logger {
  info(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export interface UplinkReport {
  name: string;
  id: number;
  interface: string;
  healthy: boolean;
  since: string;
  latencyMs?: number;
  lossPercent?: number;
  activeFlows: number;
  portUtilisationPercent: number;
}

export interface AgentReport {
  node: string;
  gateway?: string;
  /** Hash of the config the kernel holds now; absent before the first successful sync. */
  appliedHash?: string;
  lastSync?: { at: string; durationMs: number; full: boolean; error?: string };
  uplinks: UplinkReport[];
  flows: number;
  associations: number;
}

export interface AttributedFlow extends Flow {
  uplinkName: string | undefined;
  application?: FlowAssociation['application'];
  pod?: { namespace: string; name: string };
}

export interface AssociationVerdict {
  allowed: boolean;
  uplink?: string;
  /** namespace/name#rule of the policy rule that decided; absent for the default action. */
  rule?: string;
}

export interface UplinkHealthState {
  healthy: boolean;
  since: Date;
  latencyMs?: number;
  lossPercent?: number;
}

export interface AgentOptions {
  node: string;
  nft: Nftables;
  routing: Routing;
  conntrack: Conntrack;
  /** Where the uplink ids are kept across restarts; /run/naat, so they go with the conntrack table on reboot. */
  stateDir: string;
  /** Addresses of an interface, the probe sources of uplinks that translate to the interface's own. */
  interfaceAddresses: (name: string) => Promise<string[]>;
  /** Writes a kernel setting of the node (conntrack ICMP timeouts have no nftables object). */
  writeSysctl?: (path: string, value: string) => Promise<void>;
  log: Logger;
  /** How often LeastLoaded weights are recomputed from the flow counts. */
  rebalanceMs?: number;
  /** How often the flow table is listed afresh from conntrack. */
  relistMs?: number;
}

const icmpTimeoutSysctls = ['net/netfilter/nf_conntrack_icmp_timeout', 'net/netfilter/nf_conntrack_icmpv6_timeout'];

export class Agent {
  readonly #o: AgentOptions;
  readonly flows = new FlowTable();
  #config: GatewayConfig | undefined;
  #ids = new Map<string, number>();
  readonly #health = new Map<string, UplinkHealthState>();
  readonly #associations = new Map<string, FlowAssociation>();
  #applied: { rendered: Rendered; structure: string; hash?: string } | undefined;
  #lastSync: AgentReport['lastSync'];
  #queue: Promise<void> = Promise.resolve();
  #pending = false;
  #checkRoutes = true;
  #stopWatch: (() => void) | undefined;
  #rebalance: NodeJS.Timeout | undefined;
  #lastCounts = '';
  #expiry: NodeJS.Timeout | undefined;
  #relist: NodeJS.Timeout | undefined;

  constructor(options: AgentOptions) {
    this.#o = options;
  }

  /** Takes over whatever the kernel holds and makes it match `config`; established flows keep flowing. */
  async start(config: GatewayConfig): Promise<void> {
    this.#ids = await this.#loadIds();
    this.#config = config;
    this.flows.replace(await this.#o.conntrack.list());
    this.#stopWatch = this.#o.conntrack.watch(
      (event) => {
        this.flows.apply(event);
        if (event.type === 'destroy') this.#expireAssociation(event.flow);
      },
      (error) => this.#o.log.error('Conntrack event stream failed', { error: error.message }),
    );
    this.#rebalance = setInterval(() => this.#maybeRebalance(), this.#o.rebalanceMs ?? 1000);
    this.#rebalance.unref();
    // Events can be lost (a full socket buffer, a restarted watcher) and closing flows stay in
    // the table until they are destroyed: a periodic listing keeps the counts true.
    this.#relist = setInterval(() => {
      this.#o.conntrack
        .list()
        .then((flows) => this.flows.replace(flows))
        .catch((error: Error) => this.#o.log.error('Failed to list conntrack flows', { error: error.message }));
    }, this.#o.relistMs ?? 10_000);
    this.#relist.unref();
    await this.sync();
  }

  async configure(config: GatewayConfig): Promise<void> {
    this.#config = config;
    await this.sync();
  }

  /** Called by the health monitor. An uplink that fails loses its flows once it is no longer chosen. */
  async setHealth(name: string, state: UplinkHealthState): Promise<void> {
    const before = this.#health.get(name)?.healthy ?? true;
    this.#health.set(name, state);
    if (before === state.healthy) return;
    this.#o.log.info(state.healthy ? 'Uplink recovered' : 'Uplink failed', { uplink: name });
    await this.sync();
    const id = this.#ids.get(name);
    if (!state.healthy && id !== undefined) {
      const deleted = await this.#o.conntrack.deleteUplink(id);
      this.#o.log.info('Deleted flows of failed uplink', { uplink: name, flows: deleted });
    }
  }

  /** Health details without a change of state (latency, loss) for the report. */
  noteHealth(name: string, state: UplinkHealthState): void {
    const old = this.#health.get(name);
    if (old && old.healthy !== state.healthy) return;
    this.#health.set(name, state);
  }

  /** Replaces associations: `upsert` and `remove` keyed by (address, transport, port). */
  async associate(upsert: FlowAssociation[], remove: FlowAssociation[]): Promise<void> {
    for (const a of remove) this.#associations.delete(flowKey(a));
    for (const a of upsert) this.#associations.set(flowKey(a), a);
    await this.#queueSync();
    await this.#endLateDenials(upsert);
  }

  /**
   * A flow can start before its association arrives and be let through by the pod's rules; when
   * the association shows that its application is denied, the flow is ended. Flows that stay
   * allowed keep their uplink.
   */
  async #endLateDenials(associations: FlowAssociation[]): Promise<void> {
    for (const a of associations) {
      // Only flows that leave through an uplink: a flow to the node itself or a bypassed
      // destination is not the gateway's to end.
      if (!this.flows.fromSource(a.transport, a.sourceAddress, a.sourcePort)) continue;
      if (this.verdictFor(a)?.allowed !== false) continue;
      const ended = await this.#o.conntrack.deleteFlow(a.transport, a.sourceAddress, a.sourcePort);
      if (ended)
        this.#o.log.info('Ended a flow its association denies', {
          source: flowKey(a),
          application: a.application.processName,
        });
    }
  }

  /**
   * What the gateway does with new flows of this association now: allowed or denied, through
   * which uplink, by which rule (the default action when none). Undefined for an unconnected
   * socket, whose destinations vary.
   */
  verdictFor(a: FlowAssociation): AssociationVerdict | undefined {
    const table = this.#applied?.rendered.table;
    if (!table || !a.destinationAddress || !a.destinationPort) return undefined;
    const result = trace(table, 'prerouting', {
      family: a.sourceAddress.includes(':') ? 6 : 4,
      saddr: a.sourceAddress,
      daddr: a.destinationAddress,
      protocol: a.transport,
      sport: a.sourcePort,
      dport: a.destinationPort,
    });
    const id = (result.ctMark & markMask) >>> markShift;
    const uplink = [...this.#ids].find(([, value]) => value === id)?.[0];
    return {
      allowed: result.verdict === 'accept',
      ...(result.verdict === 'accept' && uplink ? { uplink } : {}),
      ...(result.rule ? { rule: result.rule } : {}),
    };
  }

  /** The config the kernel holds now. */
  get config(): GatewayConfig | undefined {
    return this.#config;
  }

  /** The flows leaving through the uplinks, with the application and pod behind each when known. */
  attribution(): AttributedFlow[] {
    const names = new Map([...this.#ids].map(([name, id]) => [id, name]));
    return [...this.flows.flows()].map((flow) => {
      const a = this.#associations.get(`${flow.source} ${flow.protocol} ${flow.sourcePort}`);
      return {
        ...flow,
        uplinkName: names.get(flow.uplink),
        ...(a ? { application: a.application, ...(a.pod ? { pod: a.pod } : {}) } : {}),
      };
    });
  }

  /** Queues a sync; syncs asked for while one waits are folded into it. */
  sync(): Promise<void> {
    this.#checkRoutes = true;
    return this.#queueSync();
  }

  /**
   * A sync that reads the kernel's routes only when the uplinks' routes changed: association
   * batches come several times a second and cannot move routes, and each listing costs
   * processes. Other syncs (config, health, a link that came back) always check them.
   */
  #queueSync(): Promise<void> {
    if (this.#pending) return this.#queue;
    this.#pending = true;
    this.#queue = this.#queue.then(async () => {
      this.#pending = false;
      await this.#sync();
    });
    return this.#queue;
  }

  report(): AgentReport {
    const active = this.flows.activeByUplink();
    const busiest = this.flows.busiestMapping();
    const uplinks = this.#config ? localUplinks(this.#config, this.#o.node) : [];
    return {
      node: this.#o.node,
      ...(this.#config ? { gateway: this.#config.gateway } : {}),
      ...(this.#applied?.hash ? { appliedHash: this.#applied.hash } : {}),
      ...(this.#lastSync ? { lastSync: this.#lastSync } : {}),
      uplinks: uplinks.map((u) => {
        const id = this.#ids.get(u.name) ?? 0;
        const health = this.#health.get(u.name);
        const range = u.snat.ports.max - u.snat.ports.min + 1;
        return {
          name: u.name,
          id,
          interface: u.interface,
          healthy: health?.healthy ?? true,
          since: (health?.since ?? new Date(0)).toISOString(),
          ...(health?.latencyMs !== undefined ? { latencyMs: health.latencyMs } : {}),
          ...(health?.lossPercent !== undefined ? { lossPercent: health.lossPercent } : {}),
          activeFlows: active.get(id) ?? 0,
          portUtilisationPercent: Math.min(100, (100 * (busiest.get(id) ?? 0)) / range),
        };
      }),
      flows: this.flows.size,
      associations: this.#associations.size,
    };
  }

  /** Stops watching; the kernel keeps the ruleset and routes so traffic goes on. */
  async stop(): Promise<void> {
    this.#stopWatch?.();
    clearInterval(this.#rebalance);
    clearInterval(this.#relist);
    clearTimeout(this.#expiry);
    await this.#queue;
  }

  /** The gateway is gone: removes naat's table, routes and state. */
  async remove(): Promise<void> {
    await this.stop();
    const existing = await this.#o.nft.list();
    if (existing) await this.#o.nft.run([{ op: 'delete', what: 'table' }]);
    const current = await this.#o.routing.list();
    await this.#o.routing.remove(current);
    await rm(this.#o.stateDir, { recursive: true, force: true });
    this.#applied = undefined;
  }

  async #sync(): Promise<void> {
    const config = this.#config;
    if (!config) return;
    const started = performance.now();
    let full = true;
    try {
      const uplinks = localUplinks(config, this.#o.node);
      const ids = allocateUplinkIds(
        this.#ids,
        uplinks.map((u) => u.name),
      );
      if (!sameIds(ids, this.#ids)) await this.#saveIds(ids);
      this.#ids = ids;
      const interfaceAddresses = new Map<string, string[]>();
      for (const u of uplinks) {
        if (!u.snat.addresses?.length)
          interfaceAddresses.set(u.interface, await this.#o.interfaceAddresses(u.interface));
      }
      const rendered = render({
        config,
        node: this.#o.node,
        ids,
        health: new Map([...this.#health].map(([name, h]) => [name, h.healthy])),
        load: this.#loadByName(),
        associations: [...this.#associations.values()],
        interfaceAddresses,
      });
      const structure = structureOf(rendered.table);
      const routesUnchanged = JSON.stringify(this.#applied?.rendered.routes) === JSON.stringify(rendered.routes);
      const checkRoutes = this.#checkRoutes || !routesUnchanged;
      this.#checkRoutes = false;
      const none = { rules: [], routes: [] };
      const routing = checkRoutes
        ? planRouting(await this.#o.routing.list(), desiredRouting(rendered.routes))
        : { add: none, remove: none };
      await this.#o.routing
        .add(routing.add)
        .catch((error: Error) => this.#o.log.error('Failed to add uplink routes', { error: error.message }));
      if (this.#applied?.structure === structure) {
        full = false;
        await this.#o.nft.run(flowMapChanges(this.#applied.rendered.table, rendered.table));
      } else {
        // After a sync of its own the agent knows what the table holds; listing it costs more
        // than the transaction on a large table, so only a fresh or failed agent asks the kernel.
        await this.#o.nft.run(
          planSync(rendered.table, this.#applied ? namesOf(this.#applied.rendered.table) : await this.#o.nft.list()),
        );
      }
      await this.#o.routing
        .remove(routing.remove)
        .catch((error: Error) => this.#o.log.error('Failed to remove uplink routes', { error: error.message }));
      if (full) await this.#writeIcmpTimeout(config.timeouts.icmpSeconds);
      this.#applied = { rendered, structure, ...(config.hash ? { hash: config.hash } : {}) };
      this.#lastSync = { at: new Date().toISOString(), durationMs: performance.now() - started, full };
    } catch (error) {
      const message = (error as Error).message;
      this.#lastSync = { at: new Date().toISOString(), durationMs: performance.now() - started, full, error: message };
      this.#o.log.error('Failed to sync the kernel', { error: message });
      // The next sync starts from what the kernel holds, not from what this one meant to apply.
      this.#applied = undefined;
      throw error;
    }
    this.#o.log.info('Synced the kernel', { full, durationMs: Math.round(performance.now() - started) });
  }

  /** An association ends with its flow; the sidecar reports the socket again if it lives on. */
  #expireAssociation(flow: Flow): void {
    const key = `${flow.source} ${flow.protocol} ${flow.sourcePort}`;
    if (!this.#associations.delete(key) || this.#expiry) return;
    this.#expiry = setTimeout(() => {
      this.#expiry = undefined;
      this.sync().catch(() => {});
    }, 200);
  }

  #loadByName(): Map<string, number> {
    const active = this.flows.activeByUplink();
    return new Map([...this.#ids].map(([name, id]) => [name, active.get(id) ?? 0]));
  }

  #maybeRebalance(): void {
    const config = this.#config;
    if (config?.balancing.mode !== 'LeastLoaded') return;
    const uplinks = localUplinks(config, this.#o.node);
    const counts = leastLoadedCounts(uplinks, this.#loadByName()).join(',');
    if (counts === this.#lastCounts) return;
    this.#lastCounts = counts;
    this.sync().catch(() => {});
  }

  async #writeIcmpTimeout(seconds: number): Promise<void> {
    const write = this.#o.writeSysctl;
    if (!write) return;
    for (const path of icmpTimeoutSysctls) {
      await write(path, String(seconds)).catch((error: Error) =>
        this.#o.log.error('Failed to set the ICMP conntrack timeout', { path, error: error.message }),
      );
    }
  }

  async #loadIds(): Promise<Map<string, number>> {
    try {
      const saved = JSON.parse(await readFile(join(this.#o.stateDir, 'uplinks.json'), 'utf8')) as Record<
        string,
        number
      >;
      return new Map(Object.entries(saved));
    } catch {
      return new Map();
    }
  }

  async #saveIds(ids: Map<string, number>): Promise<void> {
    await mkdir(this.#o.stateDir, { recursive: true });
    const file = join(this.#o.stateDir, 'uplinks.json');
    await writeFile(`${file}.tmp`, JSON.stringify(Object.fromEntries(ids)));
    await rename(`${file}.tmp`, file);
  }
}

const flowKey = (a: FlowAssociation) => `${a.sourceAddress} ${a.transport} ${a.sourcePort}`;

function sameIds(a: Map<string, number>, b: Map<string, number>): boolean {
  return a.size === b.size && [...a].every(([name, id]) => b.get(name) === id);
}

const flowMaps = new Set(['flows4', 'flows6']);

/** Everything but the association maps' elements: when it is unchanged, only those elements move. */
function structureOf(table: Table): string {
  return JSON.stringify({ ...table, sets: table.sets.map((s) => (flowMaps.has(s.name) ? { ...s, elements: [] } : s)) });
}

function flowMapChanges(before: Table, after: Table): Operation[] {
  const ops: Operation[] = [];
  for (const name of flowMaps) {
    const old = new Set(before.sets.find((s) => s.name === name)?.elements);
    const now = new Set(after.sets.find((s) => s.name === name)?.elements);
    ops.push(
      ...elementOperations(
        'delete',
        name,
        [...old].filter((e) => !now.has(e)),
      ),
    );
    ops.push(
      ...elementOperations(
        'add',
        name,
        [...now].filter((e) => !old.has(e)),
      ),
    );
  }
  return ops;
}
