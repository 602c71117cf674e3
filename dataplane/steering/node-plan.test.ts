import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseNodeConfig } from '../../contracts/gateway/index.ts';
import { renderTable } from '../nft/model.ts';
import { trace, type Packet } from '../nft/trace.ts';
import {
  nodeTableName,
  peerKey,
  peerKeys,
  planNode,
  slotKey,
  slotKeys,
  type NodePlan,
  type NodePlanInput,
} from './node-plan.ts';
import { rendezvous } from '../../common/index.ts';
import { routeChanges, tunnelLinkLocal, tunnelMac } from './tunnel.ts';

const testdata = join(import.meta.dirname, 'testdata');
const config = parseNodeConfig(JSON.parse(await readFile(join(testdata, 'node.json'), 'utf8')));
// The sample config with failover addresses: web-1 leaves by one address per family (its IPv6 one
// written otherwise than the gateway's), web-2 by none; batch (Flow selection) by one IPv4 address
// for its pod etl.
const failover = parseNodeConfig(JSON.parse(await readFile(join(testdata, 'node-failover.json'), 'utf8')));
const ids = new Map(peerKeys(config).map((key, i) => [key, i + 1]));
const underlay = new Map([[4 as const, { address: '192.168.0.1', mtu: 1500 }]]);
const input = (change: Partial<NodePlanInput> = {}): NodePlanInput => ({
  config,
  ids,
  up: new Set(ids.keys()),
  underlay,
  ...change,
});
const mark = (gateway: string, node: string) => ids.get(peerKey(gateway, node))! << 5;
const newFlow = (saddr: string, daddr: string, extra: Partial<Packet> = {}): Packet => ({
  family: saddr.includes(':') ? 6 : 4,
  saddr,
  daddr,
  protocol: 'tcp',
  dport: 443,
  iifname: 'veth-web',
  ...extra,
});

describe('planNode', () => {
  it('renders the golden table for the sample config (UPDATE_GOLDEN=1 rewrites it)', async () => {
    const text = renderTable(planNode(input()).table, nodeTableName);
    const file = join(testdata, 'node.nft');
    if (process.env.UPDATE_GOLDEN) await writeFile(file, text);
    expect(text).toBe(await readFile(file, 'utf8'));
  });

  it("pins a pod's new flows of both families to its rendezvous peer, the same on every node", () => {
    const { table } = planNode(input());
    const chosen = rendezvous('shop/web-1', ['gateway-a', 'gateway-b'])!;
    for (const [saddr, daddr] of [
      ['10.244.1.2', '203.0.113.10'],
      ['fd00:244:1::2', '2001:db8:113::10'],
    ] as const) {
      const result = trace(table, 'prerouting', newFlow(saddr, daddr));
      expect(result.verdict).toBe('accept');
      expect(result.ctMark).toBe(mark('egress', chosen));
      expect(result.mark).toBe(mark('egress', chosen));
    }
  });

  it('moves the pods of a peer that is down, and drops new flows when no peer is up', () => {
    const chosen = rendezvous('shop/web-1', ['gateway-a', 'gateway-b'])!;
    const other = chosen === 'gateway-a' ? 'gateway-b' : 'gateway-a';
    const down = planNode(input({ up: new Set([peerKey('egress', other)]) }));
    expect(trace(down.table, 'prerouting', newFlow('10.244.1.2', '203.0.113.10')).ctMark).toBe(mark('egress', other));
    const none = planNode(input({ up: new Set() }));
    expect(trace(none.table, 'prerouting', newFlow('10.244.1.2', '203.0.113.10')).verdict).toBe('drop');
    expect(trace(none.table, 'prerouting', newFlow('10.244.1.4', '203.0.113.10')).verdict).toBe('drop');
  });

  it('leaves bypassed and local destinations, other sources and known flows alone', () => {
    const { table } = planNode(input());
    for (const packet of [
      newFlow('10.244.1.2', '10.96.0.1'),
      newFlow('10.244.1.2', '192.168.0.1', { local: true }),
      newFlow('10.244.9.9', '203.0.113.10'),
      newFlow('10.244.1.2', '203.0.113.10', { isNew: false }),
    ]) {
      const result = trace(table, 'prerouting', packet);
      expect(result.verdict).toBe('accept');
      expect(result.ctMark).toBe(0);
    }
  });

  it('restores a pinned flow into the packet mark, keeping the bits of others', () => {
    const { table } = planNode(input());
    const pinned = mark('egress', 'gateway-b');
    const result = trace(table, 'prerouting', {
      ...newFlow('203.0.113.10', '10.244.1.2', { direction: 'reply', isNew: false }),
      ctMark: pinned | 0x4000,
      mark: 0x4000,
    });
    expect(result.mark).toBe(pinned | 0x4000);
  });

  it('places each new flow of a Flow-selection gateway on its own among the up peers', () => {
    const { table } = planNode(input());
    const first = trace(table, 'prerouting', newFlow('10.244.1.4', '203.0.113.10'), { random: () => 0 });
    const second = trace(table, 'prerouting', newFlow('10.244.1.4', '203.0.113.10'), { random: () => 1 });
    expect(new Set([first.ctMark, second.ctMark])).toEqual(
      new Set([mark('batch', 'gateway-a'), mark('batch', 'gateway-c')]),
    );
  });

  it('pins a new flow from the tunnel to the peer that sent it, so that its replies go back there', () => {
    const { table } = planNode(input());
    const result = trace(
      table,
      'prerouting',
      newFlow('203.0.113.10', '10.244.1.2', { iifname: 'naatn7700', etherSaddr: tunnelMac('gateway-b') }),
    );
    expect(result.ctMark).toBe(mark('egress', 'gateway-b'));
  });

  it("binds a steered flow's source to the pod's own address before the CNI's masquerade", () => {
    const { table } = planNode(input());
    const postrouting = table.chains.find((c) => c.name === 'postrouting')!;
    expect(postrouting.base).toEqual({ type: 'nat', hook: 'postrouting', priority: 99 });
    const result = trace(table, 'postrouting', {
      ...newFlow('10.244.1.2', '203.0.113.10', { oifname: 'naatn7700' }),
      ctMark: mark('egress', 'gateway-a'),
    });
    expect(result.nat).toEqual({ kind: 'snat', address: '10.244.1.2' });
  });

  it('plans one device per gateway with its peers, a table per peer and the rules that lead to them', () => {
    const { tunnels } = planNode(input());
    expect(tunnels.devices.map((d) => [d.name, d.vni, d.mtu, d.local, d.peers.map((p) => p.remote)])).toEqual([
      ['naatn7700', 7700, 1450, '192.168.0.1', ['192.168.0.11', '192.168.0.12']],
      ['naatn7701', 7701, 1450, '192.168.0.1', ['192.168.0.11', '192.168.0.13']],
    ]);
    // Replies from the tunnels pass strict reverse-path filtering by their mark.
    expect(tunnels.sysctls).toEqual([['net/ipv4/conf/all/src_valid_mark', '1']]);
    const id = ids.get(peerKey('egress', 'gateway-a'))!;
    expect(tunnels.routes).toContainEqual({
      family: 4,
      table: 7800 + id,
      destination: 'default',
      device: 'naatn7700',
      via: tunnelLinkLocal('gateway-a'),
    });
    expect(tunnels.rules).toEqual(
      expect.arrayContaining([
        { family: 4, preference: 7800, table: 7800 + id, fwmark: { value: id << 5, mask: 0xe0 } },
        { family: 6, preference: 7798, table: 'main', iif: 'naatn7700' },
        { family: 4, preference: 7797, table: 'main', from: '192.168.0.1' },
      ]),
    );
  });

  it('says which gateway it cannot set up without an underlay of its family', () => {
    const plan = planNode(input({ underlay: new Map([[6, { address: 'fd00:192::1', mtu: 1500 }]]) }));
    expect([...plan.problems.keys()]).toEqual(['egress', 'batch']);
    expect(plan.tunnels.devices).toEqual([]);
    expect(plan.tunnels.sysctls).toBeUndefined();
  });
});

describe('planNode with failover addresses', () => {
  const failoverIds = new Map([...peerKeys(failover), ...slotKeys(failover)].map((key, i) => [key, i + 1]));
  const slot = (gateway: string, address: string) => failoverIds.get(slotKey(gateway, address))!;
  const owned = (owners: Record<string, string>): NodePlan =>
    planNode({
      ...input({ config: failover, ids: failoverIds }),
      up: new Set(peerKeys(failover)),
      owners: new Map(
        Object.entries(owners).map(([address, node]) => [
          slotKey(address === '198.51.100.20' ? 'batch' : 'egress', address),
          node,
        ]),
      ),
    });
  const all = { '198.51.100.10': 'gateway-a', '2001:db8:100::10': 'gateway-a', '198.51.100.20': 'gateway-c' };
  const v4 = slot('egress', '198.51.100.10');
  const v6 = slot('egress', '2001:db8:100::10');
  const slotRoutes = (plan: NodePlan, id: number) => plan.tunnels.routes.filter((r) => r.table === 7800 + id);

  it('takes one slot per egress address in use, canonical, beside the peers in the mark bits', () => {
    expect(slotKeys(failover)).toEqual([
      'egress/address/198.51.100.10',
      'egress/address/2001:db8:100::10',
      'batch/address/198.51.100.20',
    ]);
  });

  it("pins a pod's flows of each family to its address's slot, routed into the tunnel at the owner", () => {
    const plan = owned(all);
    for (const [saddr, daddr, id] of [
      ['10.244.1.2', '203.0.113.10', v4],
      ['fd00:244:1::2', '2001:db8:113::10', v6],
    ] as const) {
      const result = trace(plan.table, 'prerouting', newFlow(saddr, daddr));
      expect({ verdict: result.verdict, ctMark: result.ctMark, mark: result.mark }).toEqual({
        verdict: 'accept',
        ctMark: id << 5,
        mark: id << 5,
      });
      expect(slotRoutes(plan, id).map((r) => [r.family, r.destination, r.device, r.via])).toEqual([
        [4, 'default', 'naatn7700', tunnelLinkLocal('gateway-a')],
        [6, 'default', 'naatn7700', tunnelLinkLocal('gateway-a')],
      ]);
      expect(plan.tunnels.rules).toContainEqual({
        family: 4,
        preference: 7800,
        table: 7800 + id,
        fwmark: { value: id << 5, mask: 0xe0 },
      });
    }
  });

  it('moves only the slot routes when the owner changes: the table and the marks of established flows stay', () => {
    const before = owned(all);
    const after = owned({ ...all, '198.51.100.10': 'gateway-b' });
    expect(renderTable(after.table, nodeTableName)).toBe(renderTable(before.table, nodeTableName));
    expect(after.tunnels.rules).toEqual(before.tunnels.rules);
    const changed = after.tunnels.routes.filter(
      (r) => !before.tunnels.routes.some((b) => JSON.stringify(b) === JSON.stringify(r)),
    );
    expect(changed.map((r) => [r.table, r.via])).toEqual([
      [7800 + v4, tunnelLinkLocal('gateway-b')],
      [7800 + v4, tunnelLinkLocal('gateway-b')],
    ]);
    expect(routeChanges(before.tunnels, after.tunnels)).toEqual({ replace: changed, remove: [] });
    const established = { ...newFlow('10.244.1.2', '203.0.113.10', { isNew: false }), ctMark: v4 << 5 };
    expect(trace(after.table, 'prerouting', established).mark).toBe(v4 << 5);
  });

  it('drops and counts the flows of an address without an owner, new and established, and routes none of them', () => {
    const plan = owned({ '2001:db8:100::10': 'gateway-b', '198.51.100.20': 'gateway-c' });
    const fresh = trace(plan.table, 'prerouting', newFlow('10.244.1.2', '203.0.113.10'));
    expect({ verdict: fresh.verdict, rule: fresh.rule }).toEqual({
      verdict: 'drop',
      rule: 'egress: no gateway node owns 198.51.100.10',
    });
    const established = trace(plan.table, 'prerouting', {
      ...newFlow('10.244.1.2', '203.0.113.10', { isNew: false }),
      ctMark: v4 << 5,
    });
    expect(established.verdict).toBe('drop');
    expect(renderTable(plan.table, nodeTableName)).toMatch(
      /counter drop comment "egress: no gateway node owns 198.51.100.10"/,
    );
    expect(slotRoutes(plan, v4)).toEqual([]);
    // Its rule stays, so that an owner coming back is a change of routes and chains alone.
    const withOwner = owned({
      '198.51.100.10': 'gateway-a',
      '2001:db8:100::10': 'gateway-b',
      '198.51.100.20': 'gateway-c',
    });
    expect(plan.tunnels.rules).toEqual(withOwner.tunnels.rules);
    expect(routeChanges(withOwner.tunnels, plan.tunnels)).toEqual({ replace: [], remove: slotRoutes(withOwner, v4) });
    // Its other family still leaves by its owner; the pod never falls back to a peer of its own choosing.
    expect(trace(plan.table, 'prerouting', newFlow('fd00:244:1::2', '2001:db8:113::10')).ctMark).toBe(v6 << 5);
    // Even with no peer up at all, an owned address's flows go to its owner.
    const none = planNode({
      ...input({ config: failover, ids: failoverIds }),
      up: new Set(),
      owners: new Map([[slotKey('egress', '2001:db8:100::10'), 'gateway-b']]),
    });
    expect(trace(none.table, 'prerouting', newFlow('fd00:244:1::2', '2001:db8:113::10')).ctMark).toBe(v6 << 5);
    expect(trace(none.table, 'prerouting', newFlow('10.244.1.3', '203.0.113.10')).verdict).toBe('drop');
  });

  it('leaves pods without egress addresses as they were', () => {
    const plan = owned(all);
    const chosen = rendezvous('shop/web-2', ['gateway-a', 'gateway-b'])!;
    const peerId = failoverIds.get(peerKey('egress', chosen))!;
    for (const [saddr, daddr] of [
      ['10.244.1.3', '203.0.113.10'],
      ['fd00:244:1::3', '2001:db8:113::10'],
    ] as const) {
      expect(trace(plan.table, 'prerouting', newFlow(saddr, daddr)).ctMark).toBe(peerId << 5);
    }
    // Bypassed destinations stay with the CNI.
    expect(trace(plan.table, 'prerouting', newFlow('10.244.1.2', '10.96.0.1')).ctMark).toBe(0);
  });

  it('puts a Flow-selection pod with an egress address on its slot, not on a random peer', () => {
    const plan = owned(all);
    for (const random of [() => 0, () => 1]) {
      expect(trace(plan.table, 'prerouting', newFlow('10.244.1.4', '203.0.113.10'), { random }).ctMark).toBe(
        slot('batch', '198.51.100.20') << 5,
      );
    }
  });

  it("refuses a node config whose pod leaves by an address that is not one of its gateway's", () => {
    const bad = structuredClone(failover) as unknown as { gateways: Array<{ pods: Array<{ egress?: string[] }> }> };
    bad.gateways[0]!.pods[0]!.egress = ['198.51.100.99', '198.51.100.10'];
    expect(() => parseNodeConfig(bad)).toThrow(
      /gateways\[0\]\.pods\[0\]\.egress\[0\]: "198\.51\.100\.99" is not one of the gateway's failover\.addresses/,
    );
    bad.gateways[0]!.pods[0]!.egress = ['198.51.100.10', '198.51.100.10'];
    expect(() => parseNodeConfig(bad)).toThrow(/gateways\[0\]\.pods\[0\]\.egress\[1\]: a second IPv4 egress address/);
  });
});
