import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseNodeConfig, type NodeConfig } from '../../contracts/gateway/index.ts';
import { FakeNftables } from '../nft/nftables.ts';
import { NodeAgent, type GatewayRelay, type PeerStates, type RelayFactory } from './node-agent.ts';
import { FakeTunnelKernel } from './tunnel-kernel.ts';
import { tunnelLinkLocal } from './tunnel.ts';

const testdata = (name: string) => readFile(join(import.meta.dirname, 'testdata', name), 'utf8');
const config = parseNodeConfig(JSON.parse(await testdata('node.json'))) as NodeConfig;
const failover = parseNodeConfig(JSON.parse(await testdata('node-failover.json'))) as NodeConfig;

/** Peer states a test sets by hand. */
class ManualPeers implements PeerStates {
  nodes: Set<string>;
  owned = new Map<string, string>();
  #listeners: Array<() => void> = [];
  constructor(nodes: string[]) {
    this.nodes = new Set(nodes);
  }
  up = () => this.nodes;
  owners = () => this.owned;
  onChange(listener: () => void) {
    this.#listeners.push(listener);
  }
  set(nodes: string[], owned: Record<string, string> = Object.fromEntries(this.owned)) {
    this.nodes = new Set(nodes);
    this.owned = new Map(Object.entries(owned));
    for (const l of this.#listeners) l();
  }
}

/** A kernel that records which calls the agent made: listings and full rewrites, or routes alone. */
class RecordingTunnels extends FakeTunnelKernel {
  calls: string[] = [];
  override async add(desired: Parameters<FakeTunnelKernel['add']>[0]) {
    this.calls.push('add');
    return super.add(desired);
  }
  override async prune(desired: Parameters<FakeTunnelKernel['prune']>[0]) {
    this.calls.push('prune');
    return super.prune(desired);
  }
  override async underlay() {
    this.calls.push('underlay');
    return super.underlay();
  }
  override async replaceRoutes(routes: Parameters<FakeTunnelKernel['replaceRoutes']>[0]) {
    this.calls.push(`replace ${routes.length}`);
    return super.replaceRoutes(routes);
  }
  override async removeRoutes(routes: Parameters<FakeTunnelKernel['removeRoutes']>[0]) {
    this.calls.push(`remove ${routes.length}`);
    return super.removeRoutes(routes);
  }
}

class RecordingNftables extends FakeNftables {
  lists = 0;
  override async list() {
    this.lists++;
    return super.list();
  }
}

let dir: string;
beforeEach(async () => (dir = await mkdtemp(join(tmpdir(), 'naat-node-'))));
afterEach(() => rm(dir, { recursive: true, force: true }));

function agent(peers?: Map<string, ManualPeers>, relays?: RelayFactory, stateDir = dir) {
  const nft = new RecordingNftables();
  const tunnels = new RecordingTunnels();
  const deleted: number[] = [];
  const node = new NodeAgent({
    nft,
    tunnels,
    deleteFlows: async (value) => {
      deleted.push(value);
      return 1;
    },
    stateDir,
    log: { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} },
    ...(peers ? { peerStates: (g) => peers.get(g.gateway)! } : {}),
    ...(relays ? { relays } : {}),
  });
  return { node, nft, tunnels, deleted };
}

describe('NodeAgent', () => {
  it('applies the config, keeps peer ids across a restart, and removes every trace', async () => {
    const first = agent();
    await first.node.start(config);
    expect(first.nft.dump()).toContain('chain gateway_7700');
    expect(first.tunnels.state.devices.map((d) => d.name)).toEqual(['naatn7700', 'naatn7701']);
    const ids = first.node.report().peers.map((p) => [p.gateway, p.node, p.id]);
    await first.node.stop();

    const reordered = { ...config, gateways: [...config.gateways].reverse() };
    const second = agent();
    await second.node.start(reordered);
    expect(
      second.node
        .report()
        .peers.map((p) => [p.gateway, p.node, p.id])
        .sort(),
    ).toEqual(ids.sort());
    expect(second.node.report().appliedHash).toBe('h1');

    await second.node.configure({ ...config, gateways: [config.gateways[0]!] });
    expect(second.tunnels.state.devices.map((d) => d.name)).toEqual(['naatn7700']);
    expect(second.tunnels.state.routes.every((r) => r.device === 'naatn7700')).toBe(true);
    const deletedBefore = second.deleted.length;
    await second.node.configure({ ...config, gateways: [] });
    expect(second.nft.dump()).toBe('');
    expect(second.tunnels.state).toEqual({ devices: [], routes: [], rules: [] });
    // The flows pinned to any peer id the mask 0xe0 can hold.
    expect(second.deleted.slice(deletedBefore)).toEqual([0x20, 0x40, 0x60, 0x80, 0xa0, 0xc0, 0xe0]);
  });

  it('moves new flows off a peer that goes down at once, then deletes the flows pinned to it', async () => {
    const egress = new ManualPeers(['gateway-a', 'gateway-b']);
    const batch = new ManualPeers(['gateway-a', 'gateway-c']);
    const { node, nft, deleted } = agent(
      new Map([
        ['egress', egress],
        ['batch', batch],
      ]),
    );
    await node.start(config);
    const idOf = (gateway: string, peer: string) =>
      node.report().peers.find((p) => p.gateway === gateway && p.node === peer)!.id;
    egress.set(['gateway-b']);
    await node.sync();
    expect(nft.dump()).not.toMatch(/pick_7700_4 .* : goto peer_1\b/);
    expect(deleted).toEqual([idOf('egress', 'gateway-a') << 5]);
    expect(node.report().peers.find((p) => p.node === 'gateway-a' && p.gateway === 'egress')!.up).toBe(false);
    egress.set([]);
    await node.sync();
    expect(nft.dump()).toContain('counter drop comment "egress: no gateway node up"');
    expect(nft.dump()).not.toContain('pick_7700_4 10.244');
  });

  it('steers new flows to a peer that came up only once the relay says it holds the pods’ associations', async () => {
    const egress = new ManualPeers(['gateway-b']);
    const batch = new ManualPeers(['gateway-a', 'gateway-c']);
    /** The egress relay's synced peers, set by hand; the batch relay's are all up peers. */
    let synced = new Set(['gateway-b']);
    let notify = () => {};
    const made: Array<{ gateway: string; updates: number; closed: boolean }> = [];
    const { node, nft } = agent(
      new Map([
        ['egress', egress],
        ['batch', batch],
      ]),
      (gateway, peers, onSynced) => {
        const relay = { gateway: gateway.gateway, updates: 0, closed: false };
        made.push(relay);
        if (gateway.gateway === 'egress') notify = onSynced;
        return {
          synced: () => (gateway.gateway === 'egress' ? synced : peers.up()),
          update: () => void relay.updates++,
          close: async () => void (relay.closed = true),
        } satisfies GatewayRelay;
      },
    );
    await node.start(config);
    const upOf = (peer: string) => node.report().peers.find((p) => p.gateway === 'egress' && p.node === peer)!.up;
    egress.set(['gateway-a', 'gateway-b']);
    await node.sync();
    expect(upOf('gateway-a')).toBe(false);
    synced = new Set(['gateway-a', 'gateway-b']);
    notify();
    await node.sync();
    expect(upOf('gateway-a')).toBe(true);
    expect(nft.dump()).toContain('chain peer_');

    await node.configure({ ...config, gateways: [config.gateways[0]!] });
    expect(made).toEqual([
      { gateway: 'egress', updates: 1, closed: false },
      { gateway: 'batch', updates: 0, closed: true },
    ]);
    await node.stop();
    expect(made[0]!.closed).toBe(true);
  });

  it('refuses a config with more peers than the mark bits can number, and keeps the kernel as it was', async () => {
    const { node, nft } = agent();
    await expect(node.start({ ...config, markMask: 0x60 })).rejects.toThrow(
      /markMask 0x60 has room for 3 ids, fewer than the 4 peers listed/,
    );
    expect(nft.dump()).toBe('');
    await node.stop();
  });

  it('takes everything away on remove, the flows pinned to any peer too', async () => {
    const { node, nft, tunnels, deleted } = agent();
    await node.start(config);
    await node.remove();
    expect(nft.dump()).toBe('');
    expect(tunnels.state.devices).toEqual([]);
    expect(deleted).toEqual([0x20, 0x40, 0x60, 0x80, 0xa0, 0xc0, 0xe0]);
  });

  describe('with failover addresses', () => {
    // web-1 leaves by one address per family, etl by one IPv4 address; the gateways' nodes say who owns them.
    const slotOf = (node: NodeAgent, address: string) => node.report().slots!.find((s) => s.address === address)!;
    const viaOf = (tunnels: FakeTunnelKernel, id: number) =>
      new Set(tunnels.state.routes.filter((r) => r.table === 7800 + id).map((r) => r.via));

    it("routes each address's slot to its owner and follows the owner without touching the flows", async () => {
      const egress = new ManualPeers(['gateway-a', 'gateway-b']);
      egress.owned = new Map([
        ['198.51.100.10', 'gateway-a'],
        ['2001:db8:100::10', 'gateway-a'],
      ]);
      const batch = new ManualPeers(['gateway-a', 'gateway-c']);
      const { node, nft, tunnels, deleted } = agent(
        new Map([
          ['egress', egress],
          ['batch', batch],
        ]),
      );
      await node.start(failover);
      const v4 = slotOf(node, '198.51.100.10');
      expect(v4.owner).toBe('gateway-a');
      expect(viaOf(tunnels, v4.id)).toEqual(new Set([tunnelLinkLocal('gateway-a')]));
      const table = nft.dump();

      // The address moves: its slot's route follows, nothing else changes and no flow is deleted.
      egress.set(['gateway-a', 'gateway-b'], { '198.51.100.10': 'gateway-b', '2001:db8:100::10': 'gateway-a' });
      await node.sync();
      expect(slotOf(node, '198.51.100.10').owner).toBe('gateway-b');
      expect(viaOf(tunnels, v4.id)).toEqual(new Set([tunnelLinkLocal('gateway-b')]));
      expect(nft.dump()).toBe(table);
      expect(deleted).toEqual([]);

      // Its owner down: no route, its flows dropped and counted; the flows of gateway-b's other
      // pods are deleted as before, the address's are kept for when an owner comes.
      egress.set(['gateway-a']);
      await node.sync();
      expect(slotOf(node, '198.51.100.10').owner).toBeUndefined();
      expect(viaOf(tunnels, v4.id)).toEqual(new Set());
      expect(nft.dump()).toContain('counter drop comment "egress: no gateway node owns 198.51.100.10"');
      const peerB = node.report().peers.find((p) => p.gateway === 'egress' && p.node === 'gateway-b')!.id;
      expect(deleted).toEqual([peerB << 5]);
      await node.stop();
    });

    it("applies an owner change alone as the moved slot's routes and chains, to the same kernel a full sync makes", async () => {
      const owners = (v4: string, v6: string) => ({ '198.51.100.10': v4, '2001:db8:100::10': v6 });
      const egress = new ManualPeers(['gateway-a', 'gateway-b']);
      egress.owned = new Map(Object.entries(owners('gateway-a', 'gateway-a')));
      const batch = new ManualPeers(['gateway-a', 'gateway-c']);
      const states = new Map([
        ['egress', egress],
        ['batch', batch],
      ]);
      const { node, nft, tunnels, deleted } = agent(states);
      await node.start(failover);
      const v4 = slotOf(node, '198.51.100.10');
      /** The kernel a fresh agent makes with one full sync from the same peer states. */
      const fresh = async () => {
        const other = agent(states, undefined, await mkdtemp(join(dir, 'fresh-')));
        await other.node.start(failover);
        await other.node.stop();
        return { table: other.nft.dump(), routes: other.tunnels.state.routes, rules: other.tunnels.state.rules };
      };
      const kernel = () => ({ table: nft.dump(), routes: tunnels.state.routes, rules: tunnels.state.rules });
      const sortRoutes = (k: Awaited<ReturnType<typeof fresh>>) => ({
        ...k,
        routes: [...k.routes].sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b))),
      });

      // Moved to another owner: two routes replaced, nothing listed, no table or tunnel rewritten.
      tunnels.calls = [];
      const lists = nft.lists;
      const transactions = nft.transactions;
      egress.set(['gateway-a', 'gateway-b'], owners('gateway-b', 'gateway-a'));
      await node.sync();
      expect(tunnels.calls).toEqual(['replace 2', 'remove 0']);
      expect([nft.lists, nft.transactions]).toEqual([lists, transactions]);
      expect(node.report().lastOwnerChange).toMatchObject({ durationMs: expect.any(Number) });
      expect(viaOf(tunnels, v4.id)).toEqual(new Set([tunnelLinkLocal('gateway-b')]));
      expect(slotOf(node, '198.51.100.10').owner).toBe('gateway-b');
      expect(sortRoutes(kernel())).toEqual(sortRoutes(await fresh()));

      // No owner, then an owner again: the slot's chains change in one small transaction, its routes go and come.
      tunnels.calls = [];
      egress.set(['gateway-a', 'gateway-b'], { '2001:db8:100::10': 'gateway-a' });
      await node.sync();
      expect(tunnels.calls).toEqual(['replace 0', 'remove 2']);
      expect(nft.dump()).toContain('counter drop comment "egress: no gateway node owns 198.51.100.10"');
      expect(sortRoutes(kernel())).toEqual(sortRoutes(await fresh()));
      tunnels.calls = [];
      egress.set(['gateway-a', 'gateway-b'], owners('gateway-a', 'gateway-a'));
      await node.sync();
      expect(tunnels.calls).toEqual(['replace 2', 'remove 0']);
      expect([nft.lists, nft.transactions]).toEqual([lists, transactions + 2]);
      expect(sortRoutes(kernel())).toEqual(sortRoutes(await fresh()));
      expect(deleted).toEqual([]);

      // The owner goes down as its address moves: the slot moves first, then a full sync deletes the
      // flows of the peer that went down; the address's own flows stay.
      tunnels.calls = [];
      egress.set(['gateway-b'], owners('gateway-b', 'gateway-b'));
      await node.sync();
      expect(tunnels.calls.slice(0, 3)).toEqual(['replace 4', 'remove 0', 'underlay']);
      expect(tunnels.calls).toContain('prune');
      const peerA = node.report().peers.find((p) => p.gateway === 'egress' && p.node === 'gateway-a')!.id;
      expect(deleted).toEqual([peerA << 5]);
      expect(sortRoutes(kernel())).toEqual(sortRoutes(await fresh()));
      await node.stop();
    });

    it('keeps the ids of peers and addresses across a restart and a changed config', async () => {
      const first = agent();
      await first.node.start(failover);
      const slotIds = (node: NodeAgent) =>
        node
          .report()
          .slots!.map((s) => `${s.address} ${s.id}`)
          .sort();
      const ids = slotIds(first.node);
      const peerIds = first.node.report().peers.map((p) => p.id);
      const all = [...peerIds, ...first.node.report().slots!.map((s) => s.id)];
      expect(new Set(all).size).toBe(7);
      await first.node.stop();
      // Without an owner source every address is ownerless: dropped, never untunnelled.
      expect(first.nft.dump()).toContain('no gateway node owns 2001:db8:100::10');

      const second = agent();
      const batchFirst = { ...failover, gateways: [...failover.gateways].reverse() };
      await second.node.start(batchFirst);
      expect(slotIds(second.node)).toEqual(ids);
      await second.node.stop();
    });

    it('refuses a config whose peers and addresses the mark bits cannot number', async () => {
      const { node, nft } = agent();
      await expect(node.start({ ...failover, markMask: 0xc0 })).rejects.toThrow(
        /markMask 0xc0 has room for 3 ids, fewer than the 4 peers and 3 failover addresses listed/,
      );
      expect(nft.dump()).toBe('');
      await node.stop();
    });
  });
});
