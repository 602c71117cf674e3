// The dataplane agent: keeps the kernel (naat's nftables table and policy routes) equal to what
// the config, the uplinks' health and the known associations call for. Every change goes through
// one queue, so syncs never interleave; a sync is atomic in nftables and make-before-break in
// routing. Stopping leaves the kernel as it is, so a restarted agent takes over established
// flows without a gap; only `remove` (the gateway is gone for good) takes everything away.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../common/index.ts';
import { AttributionStore, type AttributionRecord, type AttributionUpdate, type Retention } from './attribution.ts';
import type { Application } from '../proto/index.ts';
import type { GatewayConfig } from '../contracts/gateway/index.ts';
import type { AgentReport } from './agent-report.ts';
import type { Conntrack, ConntrackStats, Flow } from './conntrack.ts';
import { FlowTable } from './conntrack.ts';
import { AgentMetrics } from './metrics.ts';
import type { Nftables, Operation } from './nft/nftables.ts';
import { elementOperations, namesOf, planSync } from './nft/nftables.ts';
import type { L4, Table } from './nft/model.ts';
import { trace, type Packet } from './nft/trace.ts';
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
  /** Reads the conntrack table's fill and drop counters (readConntrackStats); undefined where unknown. */
  conntrackStats?: () => ConntrackStats | undefined;
  log: Logger;
  /** How often LeastLoaded weights are recomputed from the flow counts. */
  rebalanceMs?: number;
  /** How often the flow table is listed afresh from conntrack. */
  relistMs?: number;
  /** How many attribution records are kept, and for how long after their flow ended. */
  retention?: Retention;
  /** Called with each attribution record as its flow ends (telemetry exports it); per-flow work, so optional. */
  onFlowEnd?: (record: AttributionRecord) => void;
}

const icmpTimeoutSysctls = ['net/netfilter/nf_conntrack_icmp_timeout', 'net/netfilter/nf_conntrack_icmpv6_timeout'];
/** Makes conntrack count packets and bytes of the flows that start after it is set. */
const accountingSysctl = 'net/netfilter/nf_conntrack_acct';

export class Agent {
  readonly #o: AgentOptions;
  readonly flows = new FlowTable();
  readonly attributions: AttributionStore;
  readonly metrics: AgentMetrics;
  /** The served pods by address, from the config: flows are theirs even without a sidecar. */
  #pods = new Map<string, { namespace: string; name: string }>();
  #config: GatewayConfig | undefined;
  #ids = new Map<string, number>();
  readonly #health = new Map<string, UplinkHealthState>();
  readonly #associations = new Map<string, FlowAssociation>();
  /** Strict mode: the application of each stamp, by pod address then stamp. */
  readonly #stamps = new Map<string, Map<number, Application>>();
  #strict = new Set<string>();
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
  /** The next attempt after a failed sync, and how many failed in a row (for the backoff). */
  #retry: NodeJS.Timeout | undefined;
  #failures = 0;
  #stopped = false;

  constructor(options: AgentOptions) {
    this.#o = options;
    this.attributions = new AttributionStore(options.retention);
    this.metrics = new AgentMetrics({ flows: this.flows, attributions: this.attributions });
  }

  /** Takes over whatever the kernel holds and makes it match `config`; established flows keep flowing. */
  async start(config: GatewayConfig): Promise<void> {
    this.#ids = await this.#loadIds();
    this.#setConfig(config);
    // Once at start, not on every sync: in a DaemonSet without a writable /proc/sys it fails
    // every time, and one error says it all (flows then have no byte and packet counts).
    await this.#o
      .writeSysctl?.(accountingSysctl, '1')
      .catch((error: Error) =>
        this.#o.log.error('Failed to turn on conntrack accounting', { path: accountingSysctl, error: error.message }),
      );
    this.flows.replace(await this.#o.conntrack.list());
    this.#stopWatch = this.#o.conntrack.watch(
      (event) => {
        this.flows.apply(event);
        const uplink = this.#uplinkName(event.flow.uplink);
        if (event.type === 'new') {
          if (event.flow.uplink) this.#openRecord(event.flow);
          if (uplink) this.metrics.newFlows.inc({ uplink });
          return;
        }
        const counters = event.flow.counters;
        if (uplink && counters) {
          this.metrics.bytes.inc({ uplink, direction: 'sent' }, counters.bytesSent);
          this.metrics.bytes.inc({ uplink, direction: 'received' }, counters.bytesReceived);
        }
        const ended = this.attributions.close(event.flow.id, event.flow.startedAt, event.flow.counters);
        if (ended) this.#o.onFlowEnd?.(ended);
        this.#expireAssociation(event.flow);
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
    // Flows that were open before the agent started are attributed from now on, once the ruleset
    // that decided them is known.
    for (const flow of this.flows.flows()) if (!this.attributions.isOpen(flow.id)) this.#openRecord(flow);
  }

  async configure(config: GatewayConfig): Promise<void> {
    this.#setConfig(config);
    await this.sync();
  }

  #setConfig(config: GatewayConfig): void {
    this.#config = config;
    this.#pods = new Map();
    for (const { namespace, name, addresses } of config.pods) {
      for (const address of addresses) if (!this.#pods.has(address)) this.#pods.set(address, { namespace, name });
    }
    // A stamp lives as long as its pod: when an address leaves strict mode (its pod is gone), its
    // stamps go, so a new pod that reuses the address starts without any. An address not yet in
    // the config keeps them: a new pod's sidecar announces stamps before the config names the pod.
    const strict = new Set(config.association?.strictSources ?? []);
    for (const address of this.#strict) if (!strict.has(address)) this.#stamps.delete(address);
    this.#strict = strict;
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

  /**
   * Strict mode: packets of `addresses` stamped `stamp` come from `application`. Resolves once the
   * kernel classifies them. A stamp is kept until its pod's addresses leave the config.
   */
  async stamp(addresses: readonly string[], stamp: number, application: Application): Promise<void> {
    for (const address of addresses) {
      const stamps = this.#stamps.get(address) ?? new Map<number, Application>();
      stamps.set(stamp, application);
      this.#stamps.set(address, stamps);
    }
    await this.#queueSync();
  }

  /**
   * Replaces associations: `upsert` and `remove` keyed by (address, transport, port). Resolves,
   * once the kernel holds them, with what new flows of each upserted one get.
   */
  async associate(
    upsert: FlowAssociation[],
    remove: FlowAssociation[],
  ): Promise<Array<AssociationVerdict | undefined>> {
    for (const a of remove) this.#associations.delete(flowKey(a));
    for (const a of upsert) this.#associations.set(flowKey(a), a);
    await this.#queueSync();
    const applied = Date.now();
    const decided = upsert.map((a) => {
      if (a.observedAt)
        this.metrics.associationLatency.observe({}, Math.max(0, applied - a.observedAt.getTime()) / 1000);
      const verdict = this.verdictFor(a);
      this.#countDecision(a, verdict);
      return { association: a, verdict };
    });
    await this.#applyLate(decided);
    return decided.map((d) => d.verdict);
  }

  /**
   * Counts the flow of an association by its application, once the ruleset has decided it: denied,
   * or allowed through an uplink (flows to bypassed destinations and the node are not the
   * gateway's, and an unconnected socket has no one destination to decide for).
   */
  #countDecision(a: FlowAssociation, verdict: AssociationVerdict | undefined): void {
    if (!verdict || (verdict.allowed && !verdict.uplink)) return;
    const application = this.metrics.application(a.application.processName);
    this.metrics.applicationFlows.inc({ application, verdict: verdict.allowed ? 'Allow' : 'Deny' });
    if (!verdict.allowed) this.metrics.applicationDenials.inc({ application });
  }

  /**
   * A flow can start before its association arrives and be let through by the pod's rules: its
   * attribution learns the application now, and when the association shows that the application
   * is denied, the flow is ended. Flows that stay allowed keep their uplink and the rule that
   * chose it.
   */
  async #applyLate(
    decided: Array<{ association: FlowAssociation; verdict: AssociationVerdict | undefined }>,
  ): Promise<void> {
    for (const { association: a, verdict } of decided) {
      // Only flows that leave through an uplink: a flow to the node itself or a bypassed
      // destination is not the gateway's to end.
      const flow = this.flows.fromSource(a.transport, a.sourceAddress, a.sourcePort);
      if (!flow) continue;
      const denied = verdict?.allowed === false;
      this.attributions.update(flow.id, {
        ...this.#identity(a.sourceAddress, a),
        ...(denied ? { verdict: 'Deny', ...ruleOf(verdict) } : {}),
      });
      if (!denied) continue;
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
    if (!a.destinationAddress || !a.destinationPort) return undefined;
    return this.#decide({
      family: a.sourceAddress.includes(':') ? 6 : 4,
      saddr: a.sourceAddress,
      daddr: a.destinationAddress,
      protocol: a.transport,
      sport: a.sourcePort,
      dport: a.destinationPort,
    });
  }

  /** What the ruleset the kernel holds does with the first packet of this flow; undefined before the first sync. */
  #decide(packet: Packet): AssociationVerdict | undefined {
    const table = this.#applied?.rendered.table;
    if (!table) return undefined;
    const result = trace(table, 'prerouting', packet);
    const id = (result.ctMark & markMask) >>> markShift;
    const uplink = this.#uplinkName(id);
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

  /** Starts the attribution record of a flow that leaves through an uplink. */
  #openRecord(flow: Flow): void {
    const decided = this.#decide({
      family: flow.family,
      saddr: flow.source,
      daddr: flow.destination,
      protocol: flow.protocol as L4,
      sport: flow.sourcePort,
      dport: flow.destinationPort,
    });
    const { uplink: uplinkId, startedAt, ...tuples } = flow;
    const uplink = this.#uplinkName(uplinkId);
    this.attributions.open({
      ...tuples,
      start: startedAt,
      ...(uplink ? { uplink } : {}),
      // It has an uplink, so the ruleset let it through.
      verdict: 'Allow',
      ...ruleOf(decided),
      ...this.#identity(flow.source, this.#associations.get(`${flow.source} ${flow.protocol} ${flow.sourcePort}`)),
    });
  }

  /** The name of the uplink with this id (at most 254 of them); undefined for 0, not naat's. */
  #uplinkName(id: number): string | undefined {
    if (!id) return undefined;
    for (const [name, value] of this.#ids) if (value === id) return name;
    return undefined;
  }

  /** Who is behind a source address: the association's pod and application when known, else the config's pod. */
  #identity(source: string, a: FlowAssociation | undefined): AttributionUpdate {
    const pod = a?.pod ?? this.#pods.get(source);
    if (!a) return pod ? { pod } : {};
    const { processName, executable, uid, containerName } = a.application;
    return {
      ...(pod ? { pod } : {}),
      ...(containerName ? { container: containerName } : {}),
      application: { processName, executable, uid },
      ...(a.trace ? { trace: a.trace } : {}),
    };
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
    // A failed sync rejects the queue; the next one runs regardless (a rejected promise would
    // skip it, and every sync after it, for good).
    this.#queue = this.#queue
      .catch(() => {})
      .then(async () => {
        this.#pending = false;
        await this.#sync();
      });
    return this.#queue;
  }

  report(): AgentReport {
    const active = this.flows.activeByUplink();
    const busiest = this.flows.busiestMapping();
    const uplinks = this.#config ? localUplinks(this.#config, this.#o.node) : [];
    const conntrack = this.#o.conntrackStats?.();
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
      ...(conntrack ? { conntrack } : {}),
    };
  }

  /** /metrics: the report's gauges, and what the agent counted since it started. */
  renderMetrics(): string {
    return this.metrics.render(this.report());
  }

  /** Stops watching; the kernel keeps the ruleset and routes so traffic goes on. */
  async stop(): Promise<void> {
    this.#stopWatch?.();
    clearInterval(this.#rebalance);
    clearInterval(this.#relist);
    clearTimeout(this.#expiry);
    clearTimeout(this.#retry);
    this.#stopped = true;
    await this.#queue.catch(() => {});
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
        stamps: [...this.#stamps].flatMap(([address, stamps]) =>
          [...stamps].map(([stamp, application]) => ({ address, stamp, application })),
        ),
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
      let operations: Operation[];
      if (this.#applied?.structure === structure) {
        full = false;
        operations = flowMapChanges(this.#applied.rendered.table, rendered.table);
      } else {
        // After a sync of its own the agent knows what the table holds; listing it costs more
        // than the transaction on a large table, so only a fresh or failed agent asks the kernel.
        operations = planSync(
          rendered.table,
          this.#applied ? namesOf(this.#applied.rendered.table) : await this.#o.nft.list(),
        );
      }
      const applying = performance.now();
      await this.#o.nft.run(operations);
      this.metrics.applyDuration.observe({ full: String(full) }, (performance.now() - applying) / 1000);
      await this.#o.routing
        .remove(routing.remove)
        .catch((error: Error) => this.#o.log.error('Failed to remove uplink routes', { error: error.message }));
      if (full) await this.#writeIcmpTimeout(config.timeouts.icmpSeconds);
      this.#applied = { rendered, structure, ...(config.hash ? { hash: config.hash } : {}) };
      this.#lastSync = { at: new Date().toISOString(), durationMs: performance.now() - started, full };
      this.#failures = 0;
      clearTimeout(this.#retry);
    } catch (error) {
      const message = (error as Error).message;
      this.#lastSync = { at: new Date().toISOString(), durationMs: performance.now() - started, full, error: message };
      this.metrics.applyFailures.inc();
      this.#o.log.error('Failed to sync the kernel', { error: message });
      // The next sync starts from what the kernel holds, not from what this one meant to apply.
      this.#applied = undefined;
      // Nothing else may ask for a sync for a long time (the config, health and associations can
      // all stay as they are), so the agent tries again by itself, backing off to 30 s.
      clearTimeout(this.#retry);
      if (!this.#stopped) {
        this.#retry = setTimeout(() => this.sync().catch(() => {}), Math.min(30_000, 500 * 2 ** this.#failures++));
        this.#retry.unref();
      }
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

/** `namespace/name#rule` as the rule's comment holds it, split. */
function ruleOf(verdict: AssociationVerdict | undefined): Pick<AttributionUpdate, 'policy' | 'rule'> {
  const at = verdict?.rule?.lastIndexOf('#') ?? -1;
  if (!verdict?.rule || at < 0) return {};
  return { policy: verdict.rule.slice(0, at), rule: verdict.rule.slice(at + 1) };
}

const flowKey = (a: FlowAssociation) => `${a.sourceAddress} ${a.transport} ${a.sourcePort}`;

function sameIds(a: Map<string, number>, b: Map<string, number>): boolean {
  return a.size === b.size && [...a].every(([name, id]) => b.get(name) === id);
}

/** Maps whose elements change with associations and stamps; they change in place, not by a full sync. */
const flowMaps = new Set(['flows4', 'flows6', 'stamps4', 'stamps6']);

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
