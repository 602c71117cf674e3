// The node agent: keeps the node's kernel (table `inet naat_node`, one VXLAN device per gateway,
// the steering routes and rules) equal to what its NodeConfig and its peers' health call for.
// Every change goes through one queue, so syncs never interleave. A sync adds tunnels, routes and
// rules first, then swaps the table atomically, then deletes the conntrack entries of peers that
// went down (their flows are re-placed on their next packet), then takes away what is no longer
// wanted: new flows move to another peer before the old one is torn down. The flows pinned to a
// failover address's slot are never deleted while the address is in use: when its owner changes
// only the slot's route does, and they follow it. A change of owners alone is applied as such,
// against what the last sync applied: the routes of the slots that moved (and their chains, when
// a slot gains or loses its owner), without listing the kernel or refilling the table, so that
// an address's flows reach its new owner within a few milliseconds of its /steering answer; a
// peer's health changed at the same time is applied by a full sync right after. Stopping leaves the
// kernel as it is; `remove` (or a config without gateways) takes every trace away, down to the
// conntrack marks that pin flows to peers.
import { rm } from 'node:fs/promises';
import { ProblemLog, type Logger } from '../../common/index.ts';
import type { NodeConfig, NodeGateway } from '../../contracts/gateway/index.ts';
import type { Nftables } from '../nft/nftables.ts';
import { planSync } from '../nft/nftables.ts';
import { planChanges } from '../nft/changes.ts';
import { SyncQueue } from '../sync-queue.ts';
import { UplinkIds } from '../uplink-ids.ts';
import {
  markShift,
  maxPeerId,
  peerKey,
  peerKeys,
  planNode,
  slotAddresses,
  slotKey,
  slotKeys,
  type NodePlan,
} from './node-plan.ts';
import { emptyTunnelState, type TunnelKernel } from './tunnel-kernel.ts';
import { routeChanges, type Family, type Underlay } from './tunnel.ts';

/**
 * The health of one gateway's peers, as the node agent takes it: the names of its gateway nodes
 * that can take flows now, and a call after each change. A monitor that probes each peer's
 * `/steering` endpoint fits it.
 */
export interface PeerStates {
  up(): ReadonlySet<string>;
  /**
   * The gateway's failover addresses (canonical) that an up peer owns, and that peer's name, as the
   * peers' /steering answers say. Without it no address has an owner.
   */
  owners?(): ReadonlyMap<string, string>;
  onChange(listener: () => void): void;
  /** Follows a changed list of peers or health port. */
  update?(peers: NodeGateway['peers'], healthPort: number): void;
  stop?(): Promise<void>;
}

/** Makes the peer states of a gateway that appeared in the config. */
export type PeerStatesFactory = (gateway: NodeGateway) => PeerStates;

/**
 * A gateway's NAA relay (dataplane/naa/relay.ts): carries the associations and stamps of the
 * node's pods to each of the gateway's up nodes.
 */
export interface GatewayRelay {
  /** The up peers that hold the state of every relayed pod: new flows are steered only to these. */
  synced(): ReadonlySet<string>;
  update(gateway: NodeGateway): void;
  close(): Promise<void>;
}

/** Makes the relay of a gateway that appeared in the config; `onSynced` is called when `synced()` grew. */
export type RelayFactory = (gateway: NodeGateway, peers: PeerStates, onSynced: () => void) => GatewayRelay;

/** Without a monitor every peer counts as up. */
export const everyPeerUp: PeerStatesFactory = (gateway) => {
  let nodes = new Set(gateway.peers.map((p) => p.node));
  return {
    up: () => nodes,
    onChange: () => {},
    update: (peers) => (nodes = new Set(peers.map((p) => p.node))),
  };
};

export interface NodeAgentOptions {
  /** naat_node's table. */
  nft: Nftables;
  tunnels: TunnelKernel;
  /** Deletes the conntrack entries whose mark has `value` under `mask`; resolves with how many. */
  deleteFlows(value: number, mask: number): Promise<number>;
  /** Where peer ids are kept across restarts (they are in the marks of pinned flows). */
  stateDir: string;
  peerStates?: PeerStatesFactory;
  /** Without it, no association reaches the gateways from this node, and every up peer takes flows. */
  relays?: RelayFactory;
  log: Logger;
}

export interface NodeAgentReport {
  node?: string;
  appliedHash?: string;
  lastSync?: { at: string; durationMs: number; error?: string };
  /** The last change of slot owners applied on its own (routes and chains of the slots that moved). */
  lastOwnerChange?: { at: string; durationMs: number };
  peers: Array<{ gateway: string; node: string; id: number; up: boolean }>;
  /** The slot of each failover address this node's pods leave by, and the node that owns it now (after a sync). */
  slots?: Array<{ gateway: string; address: string; id: number; owner?: string }>;
  /** Gateways that could not be set up, and why. */
  problems: Record<string, string>;
}

/** What the kernel holds after a sync: the plan and what it was made from. */
interface Applied {
  config: NodeConfig;
  ids: ReadonlyMap<string, number>;
  up: ReadonlySet<string>;
  owners: ReadonlyMap<string, string>;
  underlay: ReadonlyMap<Family, Underlay>;
  plan: NodePlan;
}

export class NodeAgent {
  readonly #o: NodeAgentOptions;
  readonly #ids: UplinkIds;
  readonly #queue: SyncQueue;
  readonly #states = new Map<string, PeerStates>();
  readonly #relays = new Map<string, GatewayRelay>();
  #config: NodeConfig | undefined;
  /** Marks of the peers that were up at the last sync: their flows are deleted once they are not. */
  #pinned = new Set<number>();
  /** What the last sync applied; undefined before one, after a failed one and once removed. */
  #applied: Applied | undefined;
  #lastOwnerChange: NodeAgentReport['lastOwnerChange'];
  #report: NodeAgentReport = { peers: [], problems: {} };
  readonly #syncProblems: ProblemLog;
  readonly #gatewayProblems: ProblemLog;

  constructor(options: NodeAgentOptions) {
    this.#o = options;
    this.#syncProblems = new ProblemLog(options.log, 'Failed to sync the node', 'Synced the node again');
    this.#gatewayProblems = new ProblemLog(
      options.log,
      'Failed to set up steering for a gateway',
      'Set up steering for a gateway',
    );
    this.#ids = new UplinkIds(options.stateDir, 'peers.json');
    this.#queue = new SyncQueue(() => this.#sync());
  }

  async start(config: NodeConfig): Promise<void> {
    await this.#ids.load();
    await this.configure(config);
  }

  async configure(config: NodeConfig): Promise<void> {
    this.#config = config;
    const factory = this.#o.peerStates ?? everyPeerUp;
    const present = new Set(config.gateways.map((g) => g.gateway));
    for (const [name, states] of this.#states) {
      if (present.has(name)) continue;
      this.#states.delete(name);
      await this.#relays.get(name)?.close();
      this.#relays.delete(name);
      await states.stop?.();
    }
    for (const g of config.gateways) {
      const states = this.#states.get(g.gateway);
      if (states) {
        states.update?.(g.peers, g.healthPort);
        this.#relays.get(g.gateway)?.update(g);
      } else {
        const made = factory(g);
        this.#states.set(g.gateway, made);
        // The relay hears of a change first, so that a sync sees a peer that came up as not synced.
        const relay = this.#o.relays?.(g, made, () => void this.sync().catch(() => {}));
        if (relay) this.#relays.set(g.gateway, relay);
        made.onChange(() => void this.sync().catch(() => {}));
      }
    }
    await this.sync();
  }

  sync(): Promise<void> {
    return this.#queue.request();
  }

  report(): NodeAgentReport {
    return this.#report;
  }

  async stop(): Promise<void> {
    await this.#queue.stop();
    await this.#o.nft.close();
    await Promise.all([...this.#relays.values()].map((r) => r.close()));
    this.#relays.clear();
    await Promise.all([...this.#states.values()].map((s) => s.stop?.()));
    this.#states.clear();
  }

  /**
   * Takes away naat_node's table, tunnels, routes, rules and saved peer ids, and, once a config gave
   * the mark bits, the flows pinned to a peer (without a config they are not known).
   */
  async remove(): Promise<void> {
    await this.stop();
    await this.#removeSteering(this.#config?.markMask);
    await this.#o.nft.close();
    await rm(this.#o.stateDir, { recursive: true, force: true });
  }

  async #removeSteering(markMask: number | undefined): Promise<void> {
    this.#applied = undefined;
    if (await this.#o.nft.list()) await this.#o.nft.run([{ op: 'delete', what: 'table' }]);
    await this.#o.tunnels.prune(emptyTunnelState());
    this.#pinned.clear();
    if (markMask === undefined) return;
    // Every id the mask can hold, not only those of peers up now: a flow pinned before a restart
    // may carry any of them.
    let deleted = 0;
    for (let id = 1; id <= maxPeerId(markMask); id++) {
      deleted += await this.#o.deleteFlows((id << markShift(markMask)) >>> 0, markMask);
    }
    if (deleted) this.#o.log.info('Deleted the flows pinned to gateway nodes', { deleted });
  }

  async #sync(): Promise<void> {
    const config = this.#config;
    if (!config) return;
    const started = performance.now();
    try {
      if (!config.gateways.length) {
        await this.#removeSteering(config.markMask);
        this.#done(config, started, [], [], {}, 'full');
        return;
      }
      // Peers and slots share the mark bits and one file of ids, so neither renumbers the other.
      const peerNames = peerKeys(config);
      const slotNames = slotKeys(config);
      const ids = await this.#ids.allocate([...peerNames, ...slotNames], 0xff);
      const max = maxPeerId(config.markMask);
      if ([...ids.values()].some((id) => id > max)) {
        const listed = slotNames.length
          ? `the ${peerNames.length} peers and ${slotNames.length} failover addresses listed`
          : `the ${peerNames.length} peers listed`;
        throw new Error(`markMask 0x${config.markMask.toString(16)} has room for ${max} ids, fewer than ${listed}`);
      }
      const up = new Set<string>();
      const owners = new Map<string, string>();
      for (const g of config.gateways) {
        const states = this.#states.get(g.gateway);
        const nodes = states?.up() ?? new Set(g.peers.map((p) => p.node));
        // A peer that came up takes new flows once the pods' associations and stamps reached it.
        const synced = this.#relays.get(g.gateway)?.synced() ?? nodes;
        for (const p of g.peers) if (nodes.has(p.node) && synced.has(p.node)) up.add(peerKey(g.gateway, p.node));
        // An address's flows go to its owner once it is up, synced or not: the address is nowhere
        // else, so waiting would only drop them (a node takes over addresses long after it came up).
        const owned = states?.owners?.() ?? new Map<string, string>();
        for (const address of slotAddresses(g)) {
          const owner = owned.get(address);
          if (owner !== undefined && nodes.has(owner)) owners.set(slotKey(g.gateway, address), owner);
        }
      }
      // The owners first, on their own: a peer that went down is applied right after.
      if (await this.#moveSlots(config, ids, owners)) {
        if (sameSet(up, this.#applied!.up)) return this.#record(started, 'owners');
      }
      const addresses = config.gateways.flatMap((g) => g.peers.flatMap((p) => p.addresses));
      const underlay = await this.#o.tunnels.underlay(addresses);
      const plan = planNode({ config, ids, up, owners, underlay });
      this.#applied = undefined;
      await this.#o.tunnels.add(plan.tunnels);
      await this.#o.nft.run(planSync(plan.table, await this.#o.nft.list()));
      const shift = markShift(config.markMask);
      const pinned = new Set([...up, ...slotNames].map((key) => (ids.get(key)! << shift) >>> 0));
      for (const mark of this.#pinned) {
        if (pinned.has(mark)) continue;
        const deleted = await this.#o.deleteFlows(mark, config.markMask);
        this.#o.log.info('Deleted the flows of a peer that went down or an address no longer used', {
          mark: `0x${mark.toString(16)}`,
          deleted,
        });
      }
      this.#pinned = pinned;
      await this.#o.tunnels.prune(plan.tunnels);
      for (const { gateway } of config.gateways) {
        this.#gatewayProblems.report(gateway, plan.problems.get(gateway), { gateway });
      }
      this.#applied = { config, ids, up, owners, underlay, plan };
      this.#record(started, 'full');
    } catch (error) {
      this.#applied = undefined;
      const message = (error as Error).message;
      this.#report = {
        ...this.#report,
        lastSync: { at: new Date().toISOString(), durationMs: performance.now() - started, error: message },
      };
      this.#syncProblems.report('sync', message);
      throw error;
    }
  }

  /**
   * Applies a change of the slots' owners alone, when the config and the ids are those of the last
   * sync: the routes of the slots that moved, and the chains of those that gained or lost their
   * owner, planned with the peers that sync saw up. False when there is no such change or it
   * cannot be made so (nothing is changed then).
   */
  async #moveSlots(
    config: NodeConfig,
    ids: ReadonlyMap<string, number>,
    owners: ReadonlyMap<string, string>,
  ): Promise<boolean> {
    const last = this.#applied;
    if (!last || last.config !== config || !sameMap(last.ids, ids) || sameMap(last.owners, owners)) return false;
    const started = performance.now();
    const plan = planNode({ config, ids, up: last.up, owners, underlay: last.underlay });
    const routes = routeChanges(last.plan.tunnels, plan.tunnels);
    const table = planChanges(last.plan.table, plan.table);
    if (!routes || !table) return false;
    // Make before break: a flow is never pinned to a slot whose route is not there yet.
    this.#applied = undefined;
    await this.#o.tunnels.replaceRoutes(routes.replace);
    if (table.length) await this.#o.nft.run(table);
    await this.#o.tunnels.removeRoutes(routes.remove);
    this.#applied = { ...last, owners, plan };
    this.#lastOwnerChange = { at: new Date().toISOString(), durationMs: performance.now() - started };
    return true;
  }

  /** The report of what the kernel holds now (this.#applied), after a sync of `kind`. */
  #record(started: number, kind: 'full' | 'owners'): void {
    const { config, ids, up, owners, plan } = this.#applied!;
    this.#done(
      config,
      started,
      config.gateways.flatMap((g) =>
        g.peers.map((p) => {
          const key = peerKey(g.gateway, p.node);
          return { gateway: g.gateway, node: p.node, id: ids.get(key)!, up: up.has(key) };
        }),
      ),
      config.gateways.flatMap((g) =>
        slotAddresses(g).map((address) => {
          const key = slotKey(g.gateway, address);
          const owner = owners.get(key);
          return { gateway: g.gateway, address, id: ids.get(key)!, ...(owner ? { owner } : {}) };
        }),
      ),
      Object.fromEntries(plan.problems),
      kind,
    );
  }

  #done(
    config: NodeConfig,
    started: number,
    peers: NodeAgentReport['peers'],
    slots: NonNullable<NodeAgentReport['slots']>,
    problems: Record<string, string>,
    kind: 'full' | 'owners',
  ): void {
    const durationMs = performance.now() - started;
    this.#report = {
      node: config.node,
      ...(config.hash ? { appliedHash: config.hash } : {}),
      lastSync: { at: new Date().toISOString(), durationMs },
      ...(this.#lastOwnerChange ? { lastOwnerChange: this.#lastOwnerChange } : {}),
      peers,
      slots,
      problems,
    };
    this.#syncProblems.report('sync', undefined);
    this.#o.log.debug('Synced the node', {
      kind,
      durationMs: Math.round(durationMs),
      peers: peers.length,
      slots: slots.length,
    });
  }
}

const sameSet = (a: ReadonlySet<string>, b: ReadonlySet<string>) => a.size === b.size && [...a].every((x) => b.has(x));
const sameMap = <T>(a: ReadonlyMap<string, T>, b: ReadonlyMap<string, T>) =>
  a.size === b.size && [...a].every(([k, v]) => b.get(k) === v);
