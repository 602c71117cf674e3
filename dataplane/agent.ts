// The dataplane agent: keeps the kernel (naat's nftables table and policy routes) equal to what
// the config, the uplinks' health and the known associations call for. Every change goes through
// one queue, so syncs never interleave; a sync is atomic in nftables and make-before-break in
// routing. Stopping leaves the kernel as it is, so a restarted agent takes over established
// flows without a gap, and may leave the attribution log in the state folder for the next run to
// take back; only `remove` (the gateway is gone for good) takes everything away.
//
// Failover addresses: whoever decides which ones this node owns (the ownership loop) hands them
// to setFailoverOwned, which puts them in place in the order that keeps their flows (a claim:
// the caller's hook beside its rules, both before the address and its announcement; a release: the
// address first, then its rules; the address's route is there whether it is owned or not, so that
// neither waits for routing). The agent holds only addresses it owns: stopped with
// `releaseFailover`, or removed, it takes them off the interfaces. The kernel answers ARP and
// neighbour solicitations for them only while the owner keeps extending their allowance
// (setFailoverFence, failover/fence.ts): an agent SIGKILLed or hung goes silent for them.
//
// The agent composes: the sync queue (sync-queue.ts), the uplink ids (uplink-ids.ts), the
// associations and stamps (associations.ts), conntrack events as flows, records and counters
// (flow-events.ts), the verdict of a flow (verdict.ts) and the report (agent-report.ts).
import { once } from 'node:events';
import { createReadStream, createWriteStream } from 'node:fs';
import { readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { finished } from 'node:stream/promises';
import { renderReport, type AgentReport, type UplinkHealthState } from './agent-report.ts';
import { Associations, flowKey } from './associations.ts';
import { AttributionStore, decodeRecord, encodeRecord, type AttributionRecord, type Retention } from './attribution.ts';
import type { Application } from '../proto/index.ts';
import { ProblemLog, type Logger } from '../common/index.ts';
import { canonicalAddress, type GatewayConfig, type MarkField } from '../contracts/gateway/index.ts';
import type { Conntrack, ConntrackStats, Flow, FlowEvent } from './conntrack.ts';
import { FlowTable, sameTuples } from './conntrack.ts';
import { FlowEvents, podOf, podsByAddress, type PodRef } from './flow-events.ts';
import { planChanges } from './nft/changes.ts';
import { AgentMetrics } from './metrics.ts';
import type { Nftables } from './nft/nftables.ts';
import { namesOf, planSync } from './nft/nftables.ts';
import type { Packet } from './nft/trace.ts';
import { balancerFor, type SourceOnUplink } from './balancing/index.ts';
import { desiredAddresses, planAddresses, type FailoverAddresses, type HeldAddress } from './failover/address.ts';
import { failoverUplinkIds } from './failover/egress.ts';
import type { FailoverFence } from './failover/fence.ts';
import {
  carries,
  ConfigMemo,
  localUplinks,
  maxUplinkId,
  render,
  uplinkMarks,
  type FlowAssociation,
  type Rendered,
} from './render.ts';
import { desiredRouting, planRouting, type Routing } from './routing.ts';
import { SyncQueue } from './sync-queue.ts';
import { emptyTunnelState, type TunnelKernel } from './steering/tunnel-kernel.ts';
import type { Family as TunnelFamily, Underlay } from './steering/tunnel.ts';
import { icmpTimeoutSysctls } from './sysctls.ts';
import { UplinkIds } from './uplink-ids.ts';
import { associationPacket, FlowVerdicts, type FlowVerdict } from './verdict.ts';

export type { AgentReport, UplinkHealthState, UplinkReport } from './agent-report.ts';

export interface AttributedFlow extends Flow {
  uplinkName: string | undefined;
  application?: FlowAssociation['application'];
  pod?: PodRef;
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
  /**
   * Writes a kernel setting of the node unless it holds the value already (conntrack ICMP timeouts
   * have no nftables object that nft 1.x writes); in a DaemonSet the init container wrote them.
   */
  writeSysctl?: (path: string, value: string) => Promise<void>;
  /** Reads the conntrack table's fill and drop counters (readConntrackStats); undefined where unknown. */
  conntrackStats?: () => ConntrackStats | undefined;
  log: Logger;
  /** How often balancers that follow the load (LeastLoaded) look at the flow counts again. */
  rebalanceMs?: number;
  /** How often the flow table is listed afresh from conntrack. */
  relistMs?: number;
  /** How many attribution records are kept, and for how long after their flow ended. */
  retention?: Retention;
  /** Called with each attribution record as its flow ends (telemetry exports it); per-flow work, so optional. */
  onFlowEnd?: (record: AttributionRecord) => void;
  /** Every batch of conntrack events the agent reads, after it took them (failover replication follows them). */
  onConntrackEvents?: (events: readonly FlowEvent[]) => void;
  /** The steering tunnel's devices, routes and rule (config.steering); without it steering is not set up. */
  tunnels?: TunnelKernel;
  /** The failover addresses on the uplinks' interfaces; without it setFailoverOwned moves rules and routes only. */
  failover?: FailoverAddresses;
  /** The kernel's fence on the failover addresses; without it the kernel answers for a held address until it is removed. */
  fence?: FailoverFence;
}

/** What setFailoverOwned calls while it claims an address. */
export interface FailoverHooks {
  /**
   * Before the address is on its interface, while its rules go in: the replicated conntrack entries
   * of its flows go into the kernel here, so that they continue once the address is announced. A
   * rejection stops the change: nothing of it is claimed (its rules go again), what was released
   * stays released.
   */
  beforeClaim?(address: string): Promise<void>;
}

/** The attribution log a stopped agent leaves in its state folder, for the next run to take back. */
const attributionFile = 'attribution.jsonl';

export class Agent {
  readonly #o: AgentOptions;
  readonly flows = new FlowTable();
  readonly attributions: AttributionStore;
  readonly metrics: AgentMetrics;
  readonly #ids: UplinkIds;
  readonly #associations = new Associations();
  readonly #events: FlowEvents;
  readonly #queue: SyncQueue;
  readonly #health = new Map<string, UplinkHealthState>();
  /** What fails on every sync or listing while it lasts (a link down, an unwritable sysctl) logs when it starts and ends. */
  readonly #problems: Record<
    'steering' | 'addRoutes' | 'removeRoutes' | 'sync' | 'relist' | 'sysctl' | 'reversePath' | 'renewal' | 'counters',
    ProblemLog
  >;
  #pods = new Map<string, PodRef>();
  #config: GatewayConfig | undefined;
  /** What the renders of #config made of it alone, reused by the next. */
  #memo: ConfigMemo | undefined;
  /** What the kernel holds, and what its ruleset does with new flows. */
  #applied: { rendered: Rendered; verdicts: FlowVerdicts; marks: MarkField; hash?: string } | undefined;
  #lastSync: AgentReport['lastSync'];
  #checkRoutes = true;
  /** This node's underlay towards the steering sources, read again when routes are checked. */
  #underlay: { key: string; value: ReadonlyMap<TunnelFamily, Underlay> } | undefined;
  /** The conntrack event stream, read with the uplink id bits it was started with. */
  #watching: { marks: MarkField; stop: () => void } | undefined;
  #rebalance: NodeJS.Timeout | undefined;
  #lastLoadKey = '';
  #expiry: NodeJS.Timeout | undefined;
  #relist: NodeJS.Timeout | undefined;
  /** The balancer's renewal (SourceSticky), and the sources of the flows that ended since it last ran. */
  #renewal: { intervalMs: number; timer: NodeJS.Timeout; ended: Map<string, SourceOnUplink> } | undefined;
  /** The ICMP timeout last written (or tried). */
  #icmpSeconds: number | undefined;
  /** The failover addresses this node owns whose rules and routes the kernel is to hold (canonical). */
  #owned = new Set<string>();
  /** The owned addresses claimed to the end (announced): what /steering reports. */
  #held = new Set<string>();
  /** Called when #held changed: /steering streams answer at once. */
  readonly #heldListeners = new Set<() => void>();
  /** Whether setFailoverOwned was called: until then the addresses found on the interfaces stay. */
  #ownershipKnown = false;
  /** Until when (performance.now()'s clock) the kernel may answer for the owned addresses: setFailoverFence. */
  #fenceUntil: number | undefined;
  /** The extension of the fence waiting its turn, if any. */
  #fenceExtension: Promise<void> | undefined;
  /** What the fence guards, as last applied (#guard). */
  #guarded: string | undefined;
  /** Ownership changes, one at a time. */
  #ownership: Promise<void> = Promise.resolve();

  constructor(options: AgentOptions) {
    this.#o = options;
    const problems = (failed: string, cleared: string) => new ProblemLog(options.log, failed, cleared);
    this.#problems = {
      steering: problems('Failed to set up the steering tunnel', 'Set up the steering tunnel'),
      addRoutes: problems('Failed to add uplink routes', 'Added uplink routes'),
      removeRoutes: problems('Failed to remove uplink routes', 'Removed uplink routes'),
      sync: problems('Failed to sync the kernel', 'Synced the kernel again'),
      relist: problems('Failed to list conntrack flows', 'Listed conntrack flows again'),
      sysctl: problems('Failed to set the ICMP conntrack timeout', 'Set the ICMP conntrack timeout'),
      reversePath: problems('Failed to set up the reverse-path check by mark', 'Set up the reverse-path check by mark'),
      renewal: problems('Failed to renew the sticky sources', 'Renewed the sticky sources again'),
      counters: problems('Failed to read the ruleset counters', 'Read the ruleset counters again'),
    };
    this.#ids = new UplinkIds(options.stateDir);
    this.attributions = new AttributionStore(options.retention);
    this.metrics = new AgentMetrics({ flows: this.flows, attributions: this.attributions });
    this.#queue = new SyncQueue(() => this.#sync());
    this.#events = new FlowEvents({
      flows: this.flows,
      attributions: this.attributions,
      metrics: this.metrics,
      associations: this.#associations,
      uplinkName: (id) => this.#ids.nameOf(id),
      verdict: (packet) => this.#decide(packet),
      pod: (address) => this.#pods.get(address),
      ...(options.onFlowEnd ? { onFlowEnd: options.onFlowEnd } : {}),
      onAssociationEnded: () => this.#syncSoon(),
    });
  }

  /** Takes over whatever the kernel holds and makes it match `config`; established flows keep flowing. */
  async start(config: GatewayConfig): Promise<void> {
    await this.#ids.load();
    this.#setConfig(config);
    this.flows.replace(await this.#o.conntrack.list(this.#marks()));
    await this.#takeBackAttribution();
    this.#watch();
    this.#rebalance = setInterval(() => this.#maybeRebalance(), this.#o.rebalanceMs ?? 1000);
    this.#rebalance.unref();
    // Events can be lost (a full socket buffer, a restarted watcher) and closing flows stay in
    // the table until they are destroyed: a periodic listing keeps the counts true.
    this.#relist = setInterval(() => {
      this.#o.conntrack
        .list(this.#marks())
        .then((flows) => {
          this.#noteEnded(this.flows.flows(), flows);
          this.flows.replace(flows);
          this.#problems.relist.report('relist', undefined);
        })
        .catch((error: Error) => this.#problems.relist.report('relist', error.message));
    }, this.#o.relistMs ?? 10_000);
    this.#relist.unref();
    // A former run's allowances go: this run owns nothing until told, and stays silent until then.
    await this.#guard({ reset: true });
    await this.sync();
    // Addresses a former run left where the config no longer puts them; the others stay until the
    // owner of this node's addresses says which it owns.
    await this.#releaseAddresses(undefined);
    this.#events.openUnrecorded();
    this.#setRenewal();
  }

  async configure(config: GatewayConfig): Promise<void> {
    this.#setConfig(config);
    // New uplink id bits: the event stream reads flows' uplinks from them from now on.
    if (this.#watching) this.#watch();
    // The kernel's routes are listed only when the rendered ones changed: a policy or pod change
    // cannot move them, and the listing costs more than the change itself on a large table.
    await this.#exclusive(async () => {
      // An owned address the config no longer puts on this node's uplinks goes, address first; one
      // that moved to another uplink is added there once the rules are.
      const placeable = new Set(this.#wantedAddresses(this.#owned).map((a) => a.address));
      await this.#o.fence?.revoke([...this.#owned].filter((a) => !placeable.has(a)));
      this.#owned = placeable;
      this.#setHeld(new Set([...this.#held].filter((a) => placeable.has(a))));
      await this.#guard();
      const held = await this.#releaseAddresses(this.#ownershipKnown ? placeable : undefined);
      await this.#queue.request();
      await this.#claimAddresses(held);
    });
    if (this.#watching) this.#setRenewal();
  }

  /**
   * Makes this node hold exactly the failover addresses of `owned` (canonical or not) that the
   * config puts on its uplinks; others are logged and ignored. Claims in the order of the
   * gateway's failover design: `hooks.beforeClaim` for each new address beside the rules that
   * translate its pods' tunnelled flows to it (its route is in place already), then the address on
   * its uplink's interface and its announcement (failover/address.ts). Releases the other way round: the
   * address leaves the interface (and /steering) before its rules. Resolves once all of it is in
   * the kernel; calls are applied one at a time, in order.
   */
  setFailoverOwned(owned: ReadonlySet<string>, hooks: FailoverHooks = {}): Promise<void> {
    return this.#exclusive(() => this.#applyOwned(owned, hooks));
  }

  async #applyOwned(owned: ReadonlySet<string>, hooks: FailoverHooks): Promise<void> {
    if (!this.#config) throw new Error('setFailoverOwned was called before the agent started');
    const asked = new Set([...owned].map(canonicalAddress));
    const wanted = new Set(this.#wantedAddresses(asked).map((a) => a.address));
    const foreign = [...asked].filter((a) => !wanted.has(a));
    if (foreign.length) {
      this.#o.log.warn('Ignored failover addresses that are not on an uplink of this node', { addresses: foreign });
    }
    const claimed = [...wanted].filter((a) => !this.#owned.has(a)).sort();
    const released = [...this.#owned].filter((a) => !wanted.has(a)).sort();
    this.#ownershipKnown = true;
    this.#setHeld(new Set([...this.#held].filter((a) => wanted.has(a))));
    // Silent at once for a released address, before it leaves the interface.
    await this.#o.fence?.revoke(released);
    const started = performance.now();
    // When each part had ended, counted from the start.
    const endedAfterMs: Record<string, number> = {};
    const timed = async (name: string, work: () => Promise<void>) => {
      await work();
      endedAfterMs[name] = Math.round(performance.now() - started);
    };
    let held: HeldAddress[] = [];
    // The hook (the replica's load) goes on beside the release and the rules: both are in place
    // before the address is, and no flow of the address reaches this node before /steering says
    // it holds it, so neither waits for the other.
    const [hooked, ruled] = await Promise.allSettled([
      timed('beforeClaim', async () => {
        for (const address of claimed) await hooks.beforeClaim?.(address);
      }),
      timed('rules', async () => {
        held = await this.#releaseAddresses(wanted);
        this.#owned = wanted;
        // The same set again (the owner repeats it) only checks the addresses are still there. The
        // sync checks the routes the claim changed, not the tunnels and every route as sync()
        // would: the address waits for it.
        if (claimed.length || released.length) await this.#queue.request();
        // Allowed before the announcement, which the fence would drop otherwise.
        if (claimed.length) await this.#allowOwned();
      }),
    ]);
    if (hooked.status === 'rejected') {
      // Nothing of the claimed addresses stays: the next try loads their replica first again.
      if (this.#owned === wanted) {
        this.#owned = new Set([...wanted].filter((a) => !claimed.includes(a)));
        await this.#o.fence?.revoke(claimed);
        if (ruled.status === 'fulfilled') {
          await this.#queue
            .request()
            .catch((error: Error) =>
              this.#o.log.error('Failed to take back the rules of a claim that failed', { error: error.message }),
            );
        }
      }
      throw hooked.reason;
    }
    if (ruled.status === 'rejected') throw ruled.reason;
    await timed('addresses', () => this.#claimAddresses(held));
    this.#setHeld(wanted);
    if (claimed.length || released.length) {
      this.#o.log.info('Applied failover address ownership', {
        claimed,
        released,
        owned: [...wanted].sort(),
        endedAfterMs,
      });
    }
  }

  /**
   * Until when (performance.now()'s clock) the kernel may answer for the owned addresses should this
   * process stop deciding (the ownership loop's fenceDeadline): extends their allowance in the
   * kernel's fence. Applied in turn with the ownership changes, so that it never allows again an
   * address released meanwhile; calls made while one waits its turn join it (one kernel write).
   */
  setFailoverFence(until: number): Promise<void> {
    this.#fenceUntil = until;
    this.#fenceExtension ??= this.#exclusive(async () => {
      this.#fenceExtension = undefined;
      await this.#allowOwned();
    });
    return this.#fenceExtension;
  }

  /** Allows the owned addresses until #fenceUntil; a deadline passed allows nothing (the owner's fence has fallen). */
  async #allowOwned(): Promise<void> {
    const forMs = (this.#fenceUntil ?? -Infinity) - performance.now();
    if (this.#owned.size && forMs > 0) await this.#o.fence?.allow([...this.#owned], forMs);
  }

  /**
   * The fence guards the config's failover addresses when another node may take them over; on a
   * gateway of one node it guards none (nobody else can answer for them, and silence after a crash
   * would only cut the address off until the agent is back), and without failover its tables go.
   */
  async #guard(options: { reset?: boolean } = {}): Promise<void> {
    const fence = this.#o.fence;
    const failover = this.#config?.failover;
    const shared = failover?.nodes.some((n) => n.node !== this.#o.node);
    const guarded = failover ? (shared ? failover.addresses.map((a) => a.address) : []) : undefined;
    // A config change that leaves them as they are (a pod came or went) costs no nft run.
    const key = JSON.stringify(guarded ?? null);
    if (!fence || (key === this.#guarded && !options.reset)) return;
    if (guarded) await fence.guard(guarded, options);
    else await fence.remove();
    this.#guarded = key;
    await this.#allowOwned();
  }

  /**
   * Calls `listener` each time the failover addresses held here (the report's failoverAddresses)
   * changed, so that /steering streams tell node agents at once rather than at their next answer;
   * returns what stops it.
   */
  onFailoverHeld(listener: () => void): () => void {
    this.#heldListeners.add(listener);
    return () => this.#heldListeners.delete(listener);
  }

  #setHeld(held: Set<string>): void {
    const changed = held.size !== this.#held.size || [...held].some((a) => !this.#held.has(a));
    this.#held = held;
    if (changed) for (const listener of this.#heldListeners) listener();
  }

  /** Runs `change` after the ownership changes before it. */
  #exclusive(change: () => Promise<void>): Promise<void> {
    const run = this.#ownership.then(change);
    this.#ownership = run.catch(() => {});
    return run;
  }

  /** Where the addresses of `owned` that can be held here go (failover/address.ts). */
  #wantedAddresses(owned: ReadonlySet<string>) {
    const config = this.#config!;
    return desiredAddresses(config, localUplinks(config, this.#o.node), owned, carries);
  }

  /**
   * Removes naat's failover addresses that are not to be held: those not in `keep`, or, with the
   * ownership not known yet, those the config does not put where they are.
   */
  async #releaseAddresses(keep: ReadonlySet<string> | undefined): Promise<HeldAddress[]> {
    const kernel = this.#o.failover;
    if (!kernel) return [];
    const held = await kernel.list();
    const wanted = keep?.size === 0 ? [] : this.#wantedAddresses(keep ?? new Set(held.map((a) => a.address)));
    const { remove } = planAddresses(held, wanted);
    for (const address of remove) {
      await kernel.remove(address);
      this.#o.log.info('Released a failover address', { ...address });
    }
    return held.filter((a) => !remove.includes(a));
  }

  /** Adds the owned addresses that are not on their interfaces yet (`held`: those that are), and announces each. */
  async #claimAddresses(held: readonly HeldAddress[]): Promise<void> {
    const kernel = this.#o.failover;
    if (!kernel) return;
    // Each address on its own: the second's announcement need not wait for the first's. All have
    // ended before a failure is thrown, so that no claim goes on beside the next change.
    const results = await Promise.allSettled(
      planAddresses(held, this.#wantedAddresses(this.#owned)).add.map(async (address) => {
        await kernel.add(address);
        await kernel.announce(address);
        this.#o.log.info('Claimed a failover address', { ...address });
      }),
    );
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /** Starts, restarts or ends the balancer's renewal timer as the config asks. */
  #setRenewal(): void {
    const intervalMs = balancerFor(this.#config!.balancing).renewal?.intervalMs;
    if (this.#renewal?.intervalMs === intervalMs) return;
    clearInterval(this.#renewal?.timer);
    this.#renewal = undefined;
    if (intervalMs === undefined) return;
    const timer = setInterval(() => void this.#renew(), intervalMs);
    timer.unref();
    this.#renewal = { intervalMs, timer, ended: new Map() };
  }

  /**
   * Flows that left the table at a listing (a TCP flow that is closing is no longer listed, and its
   * DESTROY event comes only once conntrack forgets it) ended for the renewal too.
   */
  #noteEnded(before: Iterable<Flow>, now: readonly Flow[]): void {
    const ended = this.#renewal?.ended;
    if (!ended) return;
    const listed = new Set(now.map((flow) => flow.id));
    for (const { id, uplink, family, source } of before) {
      if (!listed.has(id)) ended.set(`${uplink} ${source}`, { uplink, family, source });
    }
  }

  /** Renews what the balancer keeps for the sources of open flows and of flows that ended since the last time. */
  async #renew(): Promise<void> {
    const renewal = this.#renewal;
    const operations = balancerFor(this.#config!.balancing).renewal?.operations;
    if (!renewal || !operations || !this.#applied) return;
    const ended = [...renewal.ended.values()];
    renewal.ended.clear();
    const open = [...this.flows.flows()].map(({ uplink, family, source }) => ({ uplink, family, source }));
    const sets = new Set(this.#applied.rendered.table.sets.map((set) => set.name));
    const changes = operations([...open, ...ended], sets);
    if (!changes.length) return;
    await this.#o.nft.run(changes).then(
      () => this.#problems.renewal.report('renewal', undefined),
      (error: Error) => this.#problems.renewal.report('renewal', error.message),
    );
  }

  /** The uplink id bits of the config in force. */
  #marks(): MarkField {
    return uplinkMarks(this.#config!);
  }

  /** Starts the conntrack event stream, or restarts it when the uplink id bits changed. */
  #watch(): void {
    const marks = this.#marks();
    if (this.#watching?.marks.mask === marks.mask) return;
    this.#watching?.stop();
    const stop = this.#o.conntrack.watch(
      marks,
      (events) => {
        this.#events.handle(events);
        this.#o.onConntrackEvents?.(events);
        const ended = this.#renewal?.ended;
        if (!ended) return;
        for (const { type, flow } of events) {
          if (type !== 'destroy' || !flow.uplink) continue;
          const { uplink, family, source } = flow;
          ended.set(`${uplink} ${source}`, { uplink, family, source });
        }
      },
      (error) => this.#o.log.error('Conntrack event stream failed', { error: error.message }),
    );
    this.#watching = { marks, stop };
  }

  #setConfig(config: GatewayConfig): void {
    this.#config = config;
    this.#pods = podsByAddress(config);
    this.#associations.setStrictSources(config.association?.strictSources ?? []);
  }

  /** Called by the health monitor. An uplink that fails loses its flows once it is no longer chosen. */
  async setHealth(name: string, state: UplinkHealthState): Promise<void> {
    const before = this.#health.get(name)?.healthy ?? true;
    this.#health.set(name, state);
    if (before === state.healthy) return;
    this.#o.log.info(state.healthy ? 'Uplink recovered' : 'Uplink failed', { uplink: name });
    await this.sync();
    const id = this.#ids.current.get(name);
    if (!state.healthy && id !== undefined) {
      const deleted = await this.#o.conntrack.deleteUplink(id, this.#marks());
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
    this.#associations.stamp(addresses, stamp, application);
    await this.#queue.request();
  }

  /**
   * Replaces associations: `upsert` and `remove` keyed by (address, transport, port). Resolves,
   * once the kernel holds them, with what new flows of each upserted one get.
   */
  async associate(upsert: FlowAssociation[], remove: FlowAssociation[]): Promise<Array<FlowVerdict | undefined>> {
    this.#associations.replace(upsert, remove);
    await this.#queue.request();
    const applied = Date.now();
    const decided = upsert.map((a) => {
      if (a.observedAt)
        this.metrics.associationLatency.observe({}, Math.max(0, applied - a.observedAt.getTime()) / 1000);
      const verdict = this.verdictFor(a);
      this.#events.countDecision(a, verdict);
      return { association: a, verdict };
    });
    await this.#applyLate(decided);
    return decided.map((d) => d.verdict);
  }

  /**
   * A flow can start before its association arrives and be let through by the pod's rules: its
   * attribution learns the application now, and when the association shows that the application
   * is denied, the flow is ended. Flows that stay allowed keep their uplink and the rule that
   * chose it.
   */
  async #applyLate(decided: Array<{ association: FlowAssociation; verdict: FlowVerdict | undefined }>): Promise<void> {
    for (const { association: a, verdict } of decided) {
      if (!this.#events.learn(a, verdict)) continue;
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
  verdictFor(a: FlowAssociation): FlowVerdict | undefined {
    const packet = associationPacket(a);
    return packet && this.#decide(packet);
  }

  /** What the ruleset the kernel holds does with the first packet of this flow; undefined before the first sync. */
  #decide(packet: Packet): FlowVerdict | undefined {
    return this.#applied?.verdicts.of(packet);
  }

  /** The config the kernel holds now. */
  get config(): GatewayConfig | undefined {
    return this.#config;
  }

  /**
   * The flows leaving through the uplinks, with the application and pod behind each when known:
   * the pod its association names, or else the served pod of its source address (a pod without a
   * sidecar), as the attribution log names it.
   */
  attribution(): AttributedFlow[] {
    return [...this.flows.flows()].map((flow) => {
      const a = this.#associations.of(flow.source, flow.protocol, flow.sourcePort);
      const pod = (a && podOf(a)) ?? this.#pods.get(flow.source);
      return {
        ...flow,
        uplinkName: this.#ids.nameOf(flow.uplink),
        ...(a ? { application: a.application } : {}),
        ...(pod ? { pod } : {}),
      };
    });
  }

  /** Queues a sync; syncs asked for while one waits are folded into it. */
  sync(): Promise<void> {
    this.#checkRoutes = true;
    return this.#queue.request();
  }

  report(): AgentReport {
    const config = this.#config;
    const conntrack = this.#o.conntrackStats?.();
    return renderReport({
      node: this.#o.node,
      ...(config ? { gateway: config.gateway } : {}),
      ...(this.#applied?.hash ? { appliedHash: this.#applied.hash } : {}),
      ...(this.#lastSync ? { lastSync: this.#lastSync } : {}),
      uplinks: config ? localUplinks(config, this.#o.node) : [],
      ids: this.#ids.current,
      health: this.#health,
      active: this.flows.activeByUplink(),
      busiest: this.flows.busiestMapping(),
      flows: this.flows.size,
      associations: this.#associations.size,
      ...(conntrack ? { conntrack } : {}),
      ...(config?.failover ? { failoverAddresses: [...this.#held].sort() } : {}),
    });
  }

  /** /metrics: the report's gauges, the kernel's counts, and what the agent counted since it started. */
  async renderMetrics(): Promise<string> {
    const counters = await this.#o.nft.counters().then(
      (counters) => {
        this.#problems.counters.report('counters', undefined);
        return counters;
      },
      (error: Error) => {
        this.#problems.counters.report('counters', error.message);
        return undefined;
      },
    );
    return this.metrics.render(this.report(), counters);
  }

  /**
   * Stops watching; the kernel keeps the ruleset and routes so traffic goes on. With
   * `releaseFailover` the failover addresses leave the interfaces first: a stopped agent cannot
   * keep its claim on them, and another node may take them over.
   */
  /**
   * Stops following the kernel. `releaseFailover` gives the failover addresses up first;
   * `keepAttribution` leaves the attribution log in the state folder for the next run on this
   * node to take back (a restart or a rolling update loses no record of it).
   */
  async stop(options: { releaseFailover?: boolean; keepAttribution?: boolean } = {}): Promise<void> {
    if (options.releaseFailover) {
      // A failure is logged and stopping goes on; a restarted agent removes what is left once told what it owns.
      await this.#exclusive(async () => {
        this.#setHeld(new Set());
        this.#ownershipKnown = true;
        await this.#o.fence?.revoke([...this.#owned]);
        this.#owned = new Set();
        await this.#releaseAddresses(new Set());
      }).catch((error: Error) =>
        this.#o.log.error('Failed to release the failover addresses', { error: error.message }),
      );
    }
    this.#watching?.stop();
    clearInterval(this.#renewal?.timer);
    this.#watching = undefined;
    clearInterval(this.#rebalance);
    clearInterval(this.#relist);
    clearTimeout(this.#expiry);
    await this.#queue.stop();
    await Promise.all([this.#o.nft.close(), this.#o.fence?.close()]);
    if (options.keepAttribution) {
      await this.#keepAttribution().catch((error: Error) =>
        this.#o.log.error('Failed to keep the attribution log for the next run', { error: error.message }),
      );
    }
  }

  /** Writes the attribution log, a record a line, whole before it takes the file's name. */
  async #keepAttribution(): Promise<void> {
    const path = join(this.#o.stateDir, attributionFile);
    const out = createWriteStream(`${path}.partial`, { mode: 0o600 });
    const records = this.attributions.records();
    for (const record of records) {
      if (!out.write(`${encodeRecord(record)}\n`)) await once(out, 'drain');
    }
    out.end();
    await finished(out);
    await rename(`${path}.partial`, path);
    this.#o.log.info('Kept the attribution log for the next run', { records: records.length });
  }

  /**
   * Takes back the attribution log a former run on this node kept, and removes it: a record whose
   * flow is still in the kernel (same conntrack id and tuples) stays open. A line that cannot be
   * read is skipped, and said.
   */
  async #takeBackAttribution(): Promise<void> {
    const path = join(this.#o.stateDir, attributionFile);
    const records: AttributionRecord[] = [];
    const refused: string[] = [];
    try {
      let number = 0;
      for await (const line of createInterface({ input: createReadStream(path), crlfDelay: Infinity })) {
        number++;
        try {
          records.push(decodeRecord(line));
        } catch (error) {
          refused.push(`line ${number}: ${(error as Error).message}`);
        }
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      this.#o.log.error('Failed to read the attribution log a former run kept', { error: (error as Error).message });
    }
    await rm(path, { force: true });
    this.attributions.restore(
      records,
      (r) => {
        const flow = this.flows.get(r.id);
        return flow !== undefined && sameTuples(r, flow);
      },
      new Date(),
    );
    if (refused.length) {
      this.#o.log.error('Skipped lines of the attribution log a former run kept', {
        lines: refused.length,
        first: refused[0],
      });
    }
    this.#o.log.info('Took back the attribution log of the former run', { records: records.length });
  }

  /** The gateway is gone: removes naat's failover addresses, table, routes and state. */
  async remove(): Promise<void> {
    await this.stop({ releaseFailover: true });
    await this.#o.fence?.remove();
    this.#guarded = undefined;
    const existing = await this.#o.nft.list();
    if (existing) await this.#o.nft.run([{ op: 'delete', what: 'table' }]);
    const current = await this.#o.routing.list();
    await this.#o.routing.remove(current);
    await this.#o.tunnels?.prune(emptyTunnelState());
    await Promise.all([this.#o.nft.close(), this.#o.fence?.close()]);
    // What the folder holds, not the folder: in a DaemonSet it is a mounted host folder.
    const entries = await readdir(this.#o.stateDir).catch(() => [] as string[]);
    await Promise.all(entries.map((entry) => rm(join(this.#o.stateDir, entry), { recursive: true, force: true })));
    this.#applied = undefined;
  }

  /**
   * One sync. It reads the kernel's routes only when the uplinks' routes changed or a sync other
   * than an association batch asked for it: association batches come several times a second and
   * cannot move routes, and each listing costs processes.
   */
  async #sync(): Promise<void> {
    const config = this.#config;
    if (!config) return;
    const started = performance.now();
    let full = true;
    try {
      const uplinks = localUplinks(config, this.#o.node);
      const marks = uplinkMarks(config);
      const ids = await this.#ids.allocate(
        uplinks.map((u) => u.name),
        maxUplinkId(marks),
        failoverUplinkIds(config),
      );
      const interfaceAddresses = new Map<string, string[]>();
      for (const u of uplinks) {
        if (!u.snat.addresses?.length)
          interfaceAddresses.set(u.interface, await this.#o.interfaceAddresses(u.interface));
      }
      if (this.#memo?.config !== config) this.#memo = new ConfigMemo(config, this.#memo);
      const rendered = render({
        config,
        memo: this.#memo,
        node: this.#o.node,
        ids,
        health: new Map([...this.#health].map(([name, h]) => [name, h.healthy])),
        load: this.#loadByName(),
        associations: this.#associations.list(),
        stamps: this.#associations.stamps(),
        interfaceAddresses,
        owned: this.#owned,
        ...(config.steering && this.#o.tunnels ? { underlay: await this.#underlayOf(config.steering) } : {}),
      });
      const routesUnchanged = JSON.stringify(this.#applied?.rendered.routes) === JSON.stringify(rendered.routes);
      const checkRoutes = this.#checkRoutes || !routesUnchanged;
      const tunnels = rendered.steering?.tunnels ?? emptyTunnelState();
      const checkTunnels =
        this.#checkRoutes ||
        JSON.stringify(this.#applied?.rendered.steering?.tunnels) !== JSON.stringify(rendered.steering?.tunnels);
      this.#checkRoutes = false;
      this.#problems.steering.report('steering', rendered.steering?.problem);
      if (checkTunnels) await this.#o.tunnels?.add(tunnels);
      if (checkRoutes) await this.#writeSysctls(rendered.sysctls, this.#problems.reversePath);
      // Unchecked routes are left as they are, and so is what was said about them: a route that
      // could not be added (its link is down) is not reported fixed by a sync that did not try.
      const routing = checkRoutes
        ? planRouting(await this.#o.routing.list(), desiredRouting(rendered.routes))
        : undefined;
      if (routing) {
        await this.#o.routing.add(routing.add).then(
          () => this.#problems.addRoutes.report('routes', undefined),
          (error: Error) => this.#problems.addRoutes.report('routes', error.message),
        );
      }
      // After a sync of its own the agent knows what the table holds and changes only what
      // differs; a fresh or failed agent, or a change the kernel cannot make in place, refills it.
      let operations = this.#applied && planChanges(this.#applied.rendered.table, rendered.table);
      if (operations) full = false;
      else {
        // Listing the table costs more than the transaction on a large table: only a fresh or
        // failed agent asks the kernel.
        operations = planSync(
          rendered.table,
          this.#applied ? namesOf(this.#applied.rendered.table) : await this.#o.nft.list(),
        );
      }
      const applying = performance.now();
      await this.#o.nft.run(operations);
      this.metrics.applyDuration.observe({ full: String(full) }, (performance.now() - applying) / 1000);
      if (routing) {
        await this.#o.routing.remove(routing.remove).then(
          () => this.#problems.removeRoutes.report('routes', undefined),
          (error: Error) => this.#problems.removeRoutes.report('routes', error.message),
        );
      }
      if (checkTunnels) await this.#o.tunnels?.prune(tunnels);
      // Once per value. In a DaemonSet, where /proc/sys is read-only, the init container has
      // written the compiled value (operator/desired.ts) and the write finds it in place.
      if (this.#icmpSeconds !== config.timeouts.icmpSeconds) {
        this.#icmpSeconds = config.timeouts.icmpSeconds;
        await this.#writeSysctls(icmpTimeoutSysctls(config.timeouts.icmpSeconds), this.#problems.sysctl);
      }
      this.#applied = {
        rendered,
        verdicts: new FlowVerdicts(rendered.table, marks, (id) => this.#ids.nameOf(id)),
        marks,
        ...(config.hash ? { hash: config.hash } : {}),
      };
      this.#lastSync = { at: new Date().toISOString(), durationMs: performance.now() - started, full };
    } catch (error) {
      const message = (error as Error).message;
      this.#lastSync = { at: new Date().toISOString(), durationMs: performance.now() - started, full, error: message };
      this.metrics.applyFailures.inc();
      this.#problems.sync.report('sync', message);
      // The next sync starts from what the kernel holds, not from what this one meant to apply.
      this.#applied = undefined;
      this.#checkRoutes = true;
      throw error;
    }
    this.#problems.sync.report('sync', undefined);
    this.#o.log.debug('Synced the kernel', { full, durationMs: Math.round(performance.now() - started) });
  }

  /** The underlay towards the steering sources: read once, and again when routes are checked. */
  async #underlayOf(steering: NonNullable<GatewayConfig['steering']>): Promise<ReadonlyMap<TunnelFamily, Underlay>> {
    const addresses = steering.sources.flatMap((s) => s.addresses);
    const key = addresses.join(',');
    if (this.#underlay?.key !== key || this.#checkRoutes) {
      this.#underlay = { key, value: await this.#o.tunnels!.underlay(addresses) };
    }
    return this.#underlay.value;
  }

  /** Associations that ended with their flows leave the maps in one sync shortly after. */
  #syncSoon(): void {
    if (this.#expiry) return;
    this.#expiry = setTimeout(() => {
      this.#expiry = undefined;
      this.sync().catch(() => {});
    }, 200);
  }

  #loadByName(): Map<string, number> {
    const active = this.flows.activeByUplink();
    return new Map([...this.#ids.current].map(([name, id]) => [name, active.get(id) ?? 0]));
  }

  /** Syncs when the load would change the choices (LeastLoaded): the rendered table depends on it. */
  #maybeRebalance(): void {
    const config = this.#config;
    const loadKey = config && balancerFor(config.balancing).loadKey;
    if (!loadKey) return;
    const key = loadKey(localUplinks(config, this.#o.node), this.#loadByName());
    if (key === this.#lastLoadKey) return;
    this.#lastLoadKey = key;
    this.sync().catch(() => {});
  }

  /**
   * Writes kernel settings; a failure is reported to `problems` and tried again by the next sync
   * that writes them (an uplink's interface may appear later; /proc/sys may be read-only).
   */
  async #writeSysctls(settings: ReadonlyArray<readonly [string, string]>, problems: ProblemLog): Promise<void> {
    const write = this.#o.writeSysctl;
    if (!write) return;
    for (const [path, value] of settings) {
      await write(path, value).then(
        () => problems.report(path, undefined, { path }),
        (error: Error) => problems.report(path, error.message, { path }),
      );
    }
  }
}
