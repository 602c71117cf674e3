// A gateway node's share of failover, put together for the agent (main.ts): its failover Lease and
// the decision of which addresses it owns (lease.ts, ownership.ts); the gateway's other nodes,
// followed directly at their /steering, whose answers say whether each reaches the API server (the
// fence's exception) and when one is heard again after a cut (its flow stream is then opened
// anew); the flows of its own addresses streamed to those nodes, and theirs followed
// (flow-source.ts, flow-follower.ts); and the kernel side (Agent.setFailoverOwned), where a claim
// loads the replica of the address's flows before anything else of the address is in place, and
// the kernel's fence, extended as the Lease is renewed (Agent.setFailoverFence).
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from '../../common/index.ts';
import { canonicalAddress, type GatewayConfig } from '../../contracts/gateway/index.ts';
import type { Agent } from '../agent.ts';
import { ExecConntrack, type FlowEvent } from '../conntrack.ts';
import type { TlsMaterial } from '../link-tls.ts';
import { uplinkMarks } from '../render.ts';
import { createPeerMonitor, steeringWatch, type PeerMonitor } from '../steering/peer-monitor.ts';
import { FlowFollower } from './flow-follower.ts';
import { FlowSource } from './flow-source.ts';
import { OwnershipLoop } from './lease.ts';

export interface GatewayFailoverOptions {
  agent: Agent;
  kubeConfig: KubeConfig;
  /** Where the failover Leases live: the agent's own namespace. */
  namespace: string;
  node: string;
  config: GatewayConfig & { failover: NonNullable<GatewayConfig['failover']> };
  /** The port of the agents' /steering (and /failover/flows): the same on every gateway node. */
  port: number;
  tls: () => TlsMaterial | undefined;
  /** The uplinks healthy now, by name. */
  healthyUplinks: Iterable<string>;
  /** Called when apiserverReachable() changes: the /steering streams answer at once. */
  onApiserverChange?: () => void;
  log: Logger;
}

/** How long after its start a node waits for its peers' flows before it says it is ready anyway. */
export const replicaCatchUpMs = 10_000;

/**
 * Why this node is not ready yet, or undefined when it is: it could take over the addresses of
 * its peers with their flows only once each of them has sent it every flow of theirs (a round).
 * A peer that is down or cannot stream never sends one: `catchUpMs` after its start the node is
 * ready without it. The agent's readiness waits for it, so that a rolling update restarts the
 * next gateway node only once this one holds the flows it would take over.
 */
export function replicaReadiness(
  peers: readonly string[],
  synced: ReadonlySet<string>,
  sinceStartMs: number,
  catchUpMs = replicaCatchUpMs,
): string | undefined {
  const waiting = peers.filter((node) => !synced.has(node));
  if (!waiting.length || sinceStartMs >= catchUpMs) return undefined;
  return `waiting for the flows of gateway node${waiting.length > 1 ? 's' : ''} ${waiting.join(', ')} (at most ${Math.ceil((catchUpMs - sinceStartMs) / 1000)} s more)`;
}

export class GatewayFailover {
  readonly #o: GatewayFailoverOptions;
  readonly #loop: OwnershipLoop;
  readonly #peers: PeerMonitor;
  readonly #source: FlowSource;
  readonly #follower: FlowFollower;
  /** The peers heard up at the last change, and those heard before that are not now. */
  #up: ReadonlySet<string> = new Set();
  readonly #lost = new Set<string>();
  #config: GatewayFailoverOptions['config'];
  readonly #startedAt = performance.now();
  readonly #conntrack = new ExecConntrack();
  /**
   * The addresses whose conntrack entries were deleted here since this node last owned them,
   * because another node holds them (#tidy): a claim need not delete them first.
   */
  readonly #tidied = new Set<string>();
  #tidying: Promise<void> = Promise.resolve();
  #tidyTimer: NodeJS.Timeout | undefined;
  /** An ownership change is being applied: no tidying starts meanwhile. */
  #applying = false;

  constructor(options: GatewayFailoverOptions) {
    this.#o = options;
    this.#config = options.config;
    const { agent, node, log } = options;
    const logTo = (level: 'info' | 'error', message: string, fields: Record<string, unknown>) =>
      log[level](message, fields);
    const conntrack = this.#conntrack;
    this.#source = new FlowSource({
      list: (address) => conntrack.list(uplinkMarks(this.#config), address),
      log: logTo,
    });
    this.#follower = new FlowFollower({
      peers: this.#others(),
      port: options.port,
      addresses: this.#addresses(),
      tls: options.tls,
      log: logTo,
    });
    this.#loop = new OwnershipLoop({
      kubeConfig: options.kubeConfig,
      namespace: options.namespace,
      gateway: options.config.gateway,
      node,
      failover: options.config.failover,
      healthyUplinks: options.healthyUplinks,
      replicaReady: () => this.notReady() === undefined,
      ...(options.onApiserverChange ? { onApiserverChange: options.onApiserverChange } : {}),
      metrics: agent.metrics,
      log,
      fence: (until) => {
        agent
          .setFailoverFence(until)
          .catch((error: Error) => log.error('Failed to extend the failover fence', { error: error.message }));
      },
      apply: async (owned, claims) => {
        // Entries this node kept from when it owned an address before another node did are stale:
        // their flows went on elsewhere, past the TCP windows these entries last saw, so that
        // their packets would be invalid here and leave untranslated. The replica replaces them.
        // Usually #tidy deleted them while the other node held the address, out of the claim's
        // way. An address nobody else held since (an agent restarted on a gateway of one node)
        // keeps its entries: its flows are live in this kernel.
        this.#applying = true;
        try {
          await this.#tidying;
          const movedHere = new Set(
            claims
              .filter((c) => c.from !== undefined && c.from !== node)
              .map((c) => canonicalAddress(c.address))
              .filter((address) => !this.#tidied.has(address)),
          );
          await agent.setFailoverOwned(owned, {
            beforeClaim: async (address) => {
              const stale = movedHere.has(address) ? await conntrack.deleteTranslatedTo(address) : 0;
              const loaded = await this.#follower.inject(address);
              log.info('Loaded the replicated flows of a failover address', { address, stale, ...loaded });
            },
          });
        } finally {
          this.#applying = false;
          for (const address of owned) this.#tidied.delete(canonicalAddress(address));
        }
        this.#source.setOwned([...owned]);
      },
    });
    // The other gateway nodes, heard directly: which are up and whether each reaches the API server.
    this.#peers = createPeerMonitor({
      peers: this.#others(),
      healthPort: options.port,
      watch: steeringWatch(options.tls),
    });
    this.#peers.onChange(() => {
      this.#loop.setPeersHeard(this.#peers.apiservers());
      this.#followAgain(this.#peers.up());
    });
  }

  async start(): Promise<void> {
    this.#source.setPeers(this.#others().map((p) => p.node));
    this.#source.start();
    this.#follower.start();
    this.#peers.start();
    this.#scheduleTidy();
    await this.#loop.start();
  }

  /** A new config with failover addresses. */
  update(config: GatewayFailoverOptions['config']): void {
    this.#config = config;
    this.#loop.setFailover(config.failover);
    this.#peers.update(this.#others());
    this.#source.setPeers(this.#others().map((p) => p.node));
    this.#follower.update(this.#others(), this.#addresses());
  }

  /**
   * Called before the agent hears of a change of health: an address whose uplink failed stops being
   * streamed at once, so that the agent's deletion of that uplink's flows does not reach the replicas
   * the node taking the address over will load.
   */
  setHealthyUplinks(names: Iterable<string>): void {
    const healthy = new Set(names);
    this.#loop.setHealthyUplinks(healthy);
    const uplinkOf = new Map(this.#config.failover.addresses.map((a) => [a.address, a.uplink]));
    this.#source.setOwned([...this.#loop.owned()].filter((a) => healthy.has(uplinkOf.get(a)!)));
  }

  onConntrackEvents(events: readonly FlowEvent[]): void {
    this.#source.onEvents(events);
  }

  /** Why this node is not ready to take over its peers' addresses yet (replicaReadiness), or undefined. */
  notReady(): string | undefined {
    return replicaReadiness(
      this.#others().map((p) => p.node),
      this.#follower.synced(),
      performance.now() - this.#startedAt,
    );
  }

  /** Whether this node reaches the API server, for its /steering answers. */
  apiserverReachable(): boolean {
    return this.#loop.apiserverReachable();
  }

  /** Serves /failover/flows to the gateway's other nodes (`agentNode`: the caller's certificate). */
  handleFlows(req: IncomingMessage, res: ServerResponse, agentNode: string | undefined): void {
    this.#source.handle(req, res, agentNode);
  }

  /** Stops; `release` gives the addresses up first, for another node to take them with their flows. */
  async stop({ release }: { release: boolean }): Promise<void> {
    clearTimeout(this.#tidyTimer);
    this.#tidyTimer = undefined;
    await this.#loop.stop({ release });
    await this.#peers.stop();
    this.#follower.stop();
    this.#source.stop();
  }

  #scheduleTidy(): void {
    this.#tidyTimer = setTimeout(() => {
      this.#tidy();
      if (this.#tidyTimer) this.#scheduleTidy();
    }, this.#config.failover.leaseDurationMs);
    this.#tidyTimer.unref();
  }

  /**
   * Deletes the conntrack entries translated to the addresses another node holds and this one does
   * not, once after this node last owned each: they are stale (see apply), and deleting them at
   * the next claim would hold that claim up by a listing of the whole table. This node makes no
   * new ones meanwhile: it drops the flows of addresses it does not own.
   */
  #tidy(): void {
    const stale = () => {
      const owned = new Set([...this.#loop.owned()].map(canonicalAddress));
      return this.#loop
        .heldElsewhere()
        .map(canonicalAddress)
        .filter((a) => !owned.has(a) && !this.#tidied.has(a));
    };
    if (this.#applying || !stale().length) return;
    this.#tidying = this.#tidying
      .then(async () => {
        for (const address of stale()) {
          if (this.#applying) return;
          const deleted = await this.#conntrack.deleteTranslatedTo(address);
          this.#tidied.add(address);
          if (deleted)
            this.#o.log.info('Deleted the stale flows of a failover address held elsewhere', { address, deleted });
        }
      })
      .catch((error: Error) =>
        this.#o.log.error('Failed to delete the stale flows of a failover address', { error: error.message }),
      );
  }

  /** A peer heard again after it went silent: its flow stream, silent since, is opened anew. */
  #followAgain(up: ReadonlySet<string>): void {
    for (const node of this.#up) if (!up.has(node)) this.#lost.add(node);
    for (const node of up) {
      if (this.#lost.delete(node)) this.#follower.reconnect(node);
    }
    this.#up = new Set(up);
  }

  #others() {
    return this.#config.failover.nodes.filter((n) => n.node !== this.#o.node);
  }

  #addresses() {
    return this.#config.failover.addresses.map((a) => a.address);
  }
}
