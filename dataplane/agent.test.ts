import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import type { Metric } from 'prom-client';
import { Agent } from './agent.ts';
import { parseGatewayConfig, type MarkField } from '../contracts/gateway/index.ts';
import type { AttributionRecord } from './attribution.ts';
import type { Conntrack, Flow, FlowEvent } from './conntrack.ts';
import { renderElement } from './nft/model.ts';
import { FakeNftables } from './nft/nftables.ts';
import { FakeRouting } from './routing.ts';
import { FakeTunnelKernel } from './steering/tunnel-kernel.ts';
import type { TunnelState } from './steering/tunnel.ts';
import { FakeFailoverAddresses } from './failover/address.ts';
import { FakeFailoverFence } from './failover/fence.ts';
import { newFlowsCounter } from './render.ts';

const config = parseGatewayConfig(
  JSON.parse(await readFile(join(import.meta.dirname, 'testdata', 'gateway.json'), 'utf8')),
);

/** The value of `metric`'s series with exactly `labels`; of a histogram, that of its sample `name_suffix`. */
async function sample(metric: Metric, labels: Record<string, string> = {}, suffix = ''): Promise<number | undefined> {
  const { name, values } = await metric.get();
  const nameOf = (v: (typeof values)[number]) => ('metricName' in v ? v.metricName : undefined) ?? name;
  return values.find((v) => nameOf(v) === name + suffix && isDeepStrictEqual({ ...v.labels }, labels))?.value;
}

/** Conntrack as a list of flows; deleting an uplink's flows removes them. */
class FakeConntrack implements Conntrack {
  flows: Flow[] = [];
  /** Sends an event to the agent's watch, as `conntrack -E` would. */
  emit: (event: FlowEvent) => void = () => {};
  async deleteUplink(id: number): Promise<number> {
    const before = this.flows.length;
    this.flows = this.flows.filter((f) => f.uplink !== id);
    return before - this.flows.length;
  }
  async deleteFlow(transport: string, sourceAddress: string, sourcePort: number): Promise<number> {
    const before = this.flows.length;
    this.flows = this.flows.filter(
      (f) => !(f.protocol === transport && f.source === sourceAddress && f.sourcePort === sourcePort),
    );
    return before - this.flows.length;
  }
  async list(): Promise<Flow[]> {
    return [...this.flows];
  }
  /** The uplink id bits of the running watch, undefined when none runs. */
  watching: MarkField | undefined;
  watch(uplinks: MarkField, onEvents: (events: readonly FlowEvent[]) => void): () => void {
    this.watching = uplinks;
    this.emit = (event) => onEvents([event]);
    return () => (this.watching = undefined);
  }
}

const flow = (id: number, uplink: number): Flow => ({
  id,
  family: 4,
  protocol: 'tcp',
  source: '10.244.1.2',
  sourcePort: 40000 + id,
  destination: '203.0.113.10',
  destinationPort: 443,
  mappedAddress: '100.64.1.2',
  mappedPort: 20000 + id,
  uplink,
  startedAt: new Date(),
});

const curlApp = {
  processName: 'curl',
  executable: '/usr/bin/curl',
  commandLine: [],
  containerName: 'app',
  containerId: '',
  uid: 0,
  pid: 7,
};

let stateDir: string;
beforeEach(async () => (stateDir = await mkdtemp(join(tmpdir(), 'naat-agent-'))));
afterEach(() => rm(stateDir, { recursive: true, force: true }));

function kernel() {
  return { nft: new FakeNftables(), routing: new FakeRouting(), conntrack: new FakeConntrack() };
}

function agentOn(k: ReturnType<typeof kernel>, onFlowEnd?: (record: AttributionRecord) => void) {
  return new Agent({
    node: 'node-1',
    ...k,
    stateDir,
    interfaceAddresses: async (name) => (name === 'up3' ? ['100.64.3.2'] : []),
    log: { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} },
    ...(onFlowEnd ? { onFlowEnd } : {}),
  });
}

describe('Agent', () => {
  it('puts uplink ids in the mark bits of the config, everywhere, and reads flows with the bits in force', async () => {
    const k = kernel();
    const agent = agentOn(k);
    await agent.start(config);
    expect(k.conntrack.watching?.mask).toBe(0x0000000f);
    const rules = k.routing.state.rules.filter((r) => r.mark !== undefined).map((r) => [r.mark, r.mask]);
    expect(rules.sort()).toEqual([1, 1, 2, 2, 3, 3].map((id) => [id, 0x0000000f]));
    await agent.configure(parseGatewayConfig({ ...structuredClone(config), marks: { uplinks: 0x00000f00 } }));
    expect(k.conntrack.watching?.mask).toBe(0x00000f00);
    const marked = k.routing.state.rules.filter((r) => r.mark !== undefined);
    expect(marked.map((r) => [r.mark, r.mask]).sort()).toEqual(
      [0x100, 0x100, 0x200, 0x200, 0x300, 0x300].map((mark) => [mark, 0x00000f00]),
    );
    expect(k.nft.dump()).toContain('meta mark & 0x00000f00 == 0x00000100');
    await agent.stop();
    expect(k.conntrack.watching).toBeUndefined();
  });

  it('programs table and routes, and keeps uplink ids across a restart without changing the kernel', async () => {
    const k = kernel();
    const agent = agentOn(k);
    await agent.start(config);
    await agent.stop();
    const dump = k.nft.dump();
    expect(dump).toMatch(/chain uplink_isp_a/);
    expect(k.routing.state.routes.filter((r) => r.unreachable).length).toBe(6);
    const tables = k.routing.state.routes
      .filter((r) => !r.unreachable)
      .map((r) => `${r.family} ${r.table} ${r.device} ${r.via ?? ''}`)
      .sort();
    expect(tables).toEqual([
      '4 7701 up3 ',
      '4 7702 up1 100.64.1.1',
      '4 7703 up2 100.64.2.1',
      '6 7701 up3 ',
      '6 7702 up1 fd00:64:1::1',
    ]);
    expect(k.routing.state.rules.filter((r) => r.from).map((r) => r.from)).toContain('100.64.3.2');

    const restarted = agentOn(k);
    const reordered = parseGatewayConfig({ ...config, uplinks: [...config.uplinks].reverse() });
    await restarted.start(reordered);
    await restarted.stop();
    expect(k.nft.dump()).toBe(dump);
    expect(agent.report().appliedHash).toBe('sha256:golden');
  });

  it('tries a failed sync again by itself, and later syncs still run', async () => {
    const k = kernel();
    const agent = agentOn(k);
    await agent.start(config);
    const run = k.nft.run.bind(k.nft);
    let failing = true;
    k.nft.run = async (operations) => {
      if (failing) throw new Error('nft was killed');
      return run(operations);
    };
    const changed = parseGatewayConfig({ ...config, hash: 'sha256:changed' });
    await expect(agent.configure(changed)).rejects.toThrow('nft was killed');
    expect(agent.report().lastSync?.error).toBe('nft was killed');
    failing = false;
    // Nothing asks for a sync: the agent's own retry applies the config.
    for (let i = 0; i < 40 && agent.report().appliedHash !== 'sha256:changed'; i++)
      await new Promise((resolve) => setTimeout(resolve, 50));
    expect(agent.report().appliedHash).toBe('sha256:changed');
    expect(agent.report().lastSync?.error).toBeUndefined();
    await agent.configure(config);
    expect(agent.report().appliedHash).toBe('sha256:golden');
    await agent.stop();
  });

  it('stops choosing a failed uplink and deletes its flows, leaving the others', async () => {
    const k = kernel();
    const agent = agentOn(k);
    await agent.start(config);
    const ids = Object.fromEntries(agent.report().uplinks.map((u) => [u.name, u.id]));
    k.conntrack.flows = [flow(1, ids['isp-a']!), flow(2, ids['isp-b']!)];
    await agent.setHealth('isp-a', { healthy: false, since: new Date() });
    expect(k.conntrack.flows.map((f) => f.id)).toEqual([2]);
    const choose = /chain choose_any \{\n([^}]*)\}/.exec(k.nft.dump())![1]!;
    expect(choose).not.toMatch(/isp_a/);
    expect(agent.report().uplinks.find((u) => u.name === 'isp-a')!.healthy).toBe(false);
    await agent.setHealth('isp-a', { healthy: true, since: new Date() });
    expect(/chain choose_any \{\n([^}]*)\}/.exec(k.nft.dump())![1]).toMatch(/isp_a/);
    await agent.stop();
  });

  it('applies associations as map elements only, once the class chain exists', async () => {
    const k = kernel();
    const agent = agentOn(k);
    await agent.start(config);
    const first = { transport: 'tcp' as const, sourceAddress: '10.244.1.2', sourcePort: 40000, application: curlApp };
    await agent.associate([first], []);
    const afterFirst = k.nft.transactions;
    const second = { ...first, sourcePort: 40001 };
    await agent.associate([second], [first]);
    expect(k.nft.transactions).toBe(afterFirst + 1);
    expect(agent.report().lastSync!.full).toBe(false);
    const elements = k.nft.table()!.sets.find((s) => s.name === 'flows4')!.elements;
    expect(elements.map(renderElement)).toEqual(['10.244.1.2 . tcp . 40001 : goto class0']);
    await agent.stop();
  });

  it('ends a flow that its late association denies, keeps one it allows, and attributes both', async () => {
    const k = kernel();
    const agent = agentOn(k);
    const denied = { ...flow(1, 2), sourcePort: 40000, destination: '198.51.100.5', destinationPort: 8080 };
    const allowed = { ...flow(2, 2), sourcePort: 40001, destination: '203.0.113.10', destinationPort: 443 };
    k.conntrack.flows = [denied, allowed];
    await agent.start(config);
    const curl = {
      transport: 'tcp' as const,
      sourceAddress: '10.244.1.2',
      application: curlApp,
      pod: { namespace: 'shop', name: 'web-1' },
    };
    const observedAt = new Date(Date.now() - 300);
    await agent.associate(
      [
        { ...curl, sourcePort: 40000, destinationAddress: '198.51.100.5', destinationPort: 8080, observedAt },
        { ...curl, sourcePort: 40001, destinationAddress: '203.0.113.10', destinationPort: 443, observedAt },
      ],
      [],
    );
    expect(k.conntrack.flows.map((f) => f.id)).toEqual([2]);
    const { metrics } = agent;
    expect(await sample(metrics.applicationFlows, { application: 'curl', verdict: 'Deny' })).toBe(1);
    expect(await sample(metrics.applicationFlows, { application: 'curl', verdict: 'Allow' })).toBe(1);
    expect(await sample(metrics.applicationDenials, { application: 'curl' })).toBe(1);
    expect(await sample(metrics.associationLatency, {}, '_count')).toBe(2);
    expect((await sample(metrics.associationLatency, {}, '_sum'))! / 2).toBeGreaterThanOrEqual(0.3);
    expect(
      agent.verdictFor({ ...curl, sourcePort: 40000, destinationAddress: '198.51.100.5', destinationPort: 8080 }),
    ).toEqual({ allowed: false, rule: 'shop/curl#no-curl-to-docs' });
    const verdict = agent.verdictFor({
      ...curl,
      sourcePort: 50000,
      destinationAddress: '203.0.113.10',
      destinationPort: 443,
    });
    // Balanced over isp-a and isp-b: the verdict names no uplink, as the protocol says.
    expect(verdict).toEqual({ allowed: true, balanced: true });
    // An unconnected socket sends anywhere: there is no single verdict for it.
    expect(agent.verdictFor({ ...curl, sourcePort: 50001 })).toBeUndefined();
    const attributed = agent.attribution().find((f) => f.id === 2)!;
    expect(attributed).toMatchObject({
      uplinkName: 'isp-a',
      pod: { name: 'web-1' },
      application: { processName: 'curl' },
    });
    // The attribution log learnt the application late, and which rule ended the denied flow.
    const at = { address: '100.64.1.2', at: new Date() };
    expect(agent.attributions.query({ ...at, port: 20001 })).toMatchObject([
      { verdict: 'Deny', policy: 'shop/curl', rule: 'no-curl-to-docs', application: { processName: 'curl' } },
    ]);
    expect(agent.attributions.query({ ...at, port: 20002 })).toMatchObject([
      { verdict: 'Allow', uplink: 'isp-a', container: 'app', application: { processName: 'curl' } },
    ]);
    await agent.stop();
  });

  it('names the uplink of a verdict only when new flows have one uplink to take, not when they are balanced', async () => {
    const k = kernel();
    const agent = agentOn(k);
    await agent.start(config);
    const to = (sourceAddress: string, destinationAddress: string) => ({
      transport: 'tcp' as const,
      sourceAddress,
      sourcePort: 40000,
      destinationAddress,
      destinationPort: 443,
      application: curlApp,
    });
    // Weighted over isp-a and isp-b: each new flow may take either.
    expect(agent.verdictFor(to('10.244.1.2', '203.0.113.10'))).toEqual({ allowed: true, balanced: true });
    // The backups rule prefers isp-b, which is healthy.
    expect(agent.verdictFor(to('10.244.2.2', '192.0.2.9'))).toEqual({
      allowed: true,
      uplink: 'isp-b',
      rule: 'shop/backups#via-b',
    });
    // With isp-a down, isp-b is the one uplink left in the first tier.
    await agent.setHealth('isp-a', { healthy: false, since: new Date() });
    expect(agent.verdictFor(to('10.244.1.2', '203.0.113.10'))).toEqual({ allowed: true, uplink: 'isp-b' });
    await agent.stop();
  });

  it('attributes flows from conntrack events to the pod of their source and hands each ended one on', async () => {
    const k = kernel();
    const ended: AttributionRecord[] = [];
    const agent = agentOn(k, (record) => ended.push(record));
    await agent.start(config);
    const ids = Object.fromEntries(agent.report().uplinks.map((u) => [u.name, u.id]));
    // A pod without a sidecar: the config names it by address; its rule keeps it on isp-b.
    const backup = {
      ...flow(7, ids['isp-b']!),
      source: '10.244.2.2',
      destination: '192.0.2.9',
      mappedAddress: '100.64.2.2',
      startedAt: new Date(Date.now() - 60_000),
    };
    k.conntrack.emit({ type: 'new', flow: backup });
    const counters = { packetsSent: 3, bytesSent: 180, packetsReceived: 2, bytesReceived: 120 };
    k.conntrack.emit({
      type: 'destroy',
      flow: { ...backup, startedAt: new Date(backup.startedAt.getTime() + 5000), counters },
    });
    const expected = {
      pod: { namespace: 'backup', name: 'backup-1' },
      uplink: 'isp-b',
      policy: 'shop/backups',
      rule: 'via-b',
      verdict: 'Allow',
      start: backup.startedAt,
      end: new Date(backup.startedAt.getTime() + 5000),
      counters,
    };
    expect(ended).toMatchObject([expected]);
    // Counted by uplink as the kernel placed the flow (the ruleset's counter), its bytes as it ended.
    k.nft.count(newFlowsCounter('isp-b'));
    const metrics = await agent.renderMetrics();
    expect(metrics).toContain('naat_uplink_new_flows_total{uplink="isp-a"} 0\n');
    expect(metrics).toContain('naat_uplink_new_flows_total{uplink="isp-b"} 1\n');
    expect(metrics).toContain('naat_uplink_bytes_total{uplink="isp-b",direction="sent"} 180\n');
    expect(metrics).toContain('naat_uplink_bytes_total{uplink="isp-b",direction="received"} 120\n');
    expect(metrics).toContain('naat_attribution_records 1\n');
    const query = { address: '100.64.2.2', port: 20007 };
    const after = (ms: number) => new Date(backup.startedAt.getTime() + ms);
    expect(agent.attributions.query({ ...query, at: after(2000) })).toMatchObject([expected]);
    expect(agent.attributions.query({ ...query, at: after(-1000) })).toEqual([]);
    await agent.stop();
  });

  it("names the pod of a live flow by its source address when no sidecar reported the flow's socket", async () => {
    const k = kernel();
    const agent = agentOn(k);
    k.conntrack.flows = [flow(1, 2), { ...flow(2, 2), source: '10.244.1.99' }];
    await agent.start(config);
    expect(agent.attribution().map((f) => [f.id, f.pod])).toEqual([
      [1, { namespace: 'shop', name: 'web-1' }],
      [2, undefined],
    ]);
    await agent.stop();
  });

  it('reports flows and SNAT port use per uplink', async () => {
    const k = kernel();
    const agent = agentOn(k);
    k.conntrack.flows = [flow(1, 2), flow(2, 2)];
    await agent.start(config);
    const a = agent.report().uplinks.find((u) => u.name === 'isp-a')!;
    expect(a.id).toBe(2);
    expect(a.activeFlows).toBe(2);
    // Two flows to one destination from one address, out of a 10,000-port range.
    expect(a.portUtilisationPercent).toBeCloseTo(0.02);
    const metrics = await agent.renderMetrics();
    expect(metrics).toContain('naat_uplink_active_flows{uplink="isp-a"} 2\n');
    expect(metrics).toContain('naat_uplink_snat_port_utilisation_ratio{uplink="isp-a"} 0.0002\n');
    expect(metrics).toMatch(/^naat_ruleset_apply_duration_seconds_count\{full="true"\} 1$/m);
    expect(metrics).toContain('naat_ruleset_apply_failed 0\n');
    await agent.stop();
  });

  it('removes everything it made when the gateway is gone, and empties its state folder but keeps it (a mount in a DaemonSet)', async () => {
    const k = kernel();
    const agent = agentOn(k);
    await agent.start(config);
    expect(await readdir(stateDir)).not.toEqual([]);
    await agent.remove();
    expect(await k.nft.list()).toBeUndefined();
    expect(k.routing.state).toEqual({ rules: [], routes: [] });
    expect(await readdir(stateDir)).toEqual([]);
  });
});

describe('Agent failover addresses', () => {
  const failoverConfig = parseGatewayConfig({
    ...structuredClone(config),
    steering: { tunnel: { vni: 7700, port: 4790 }, markMask: 0x10, sources: [] },
    failover: {
      addresses: [
        { address: '100.64.1.100', uplink: 'isp-a' },
        { address: 'fd00:64:1::100', uplink: 'isp-a' },
      ],
      leaseDurationMs: 600,
      failback: false,
      failbackDelaySeconds: 30,
      nodes: [],
      draining: [],
    },
    pods: [
      {
        namespace: 'shop',
        name: 'web',
        addresses: ['10.244.1.2', 'fd00:244:1::2'],
        node: 'w1',
        egress: ['100.64.1.100', 'fd00:64:1::100'],
      },
    ],
  });

  /** The steering tunnel's kernel, counting the calls that list or rewrite it. */
  class CountingTunnels extends FakeTunnelKernel {
    calls = 0;
    override async add(desired: TunnelState) {
      this.calls++;
      return super.add(desired);
    }
    override async prune(desired: TunnelState) {
      this.calls++;
      return super.prune(desired);
    }
    override async underlay() {
      this.calls++;
      return super.underlay();
    }
  }

  const agentWith = (
    k: ReturnType<typeof kernel>,
    addresses: FakeFailoverAddresses,
    { tunnels = new CountingTunnels(), fence }: { tunnels?: CountingTunnels; fence?: FakeFailoverFence } = {},
  ) =>
    new Agent({
      node: 'node-1',
      ...k,
      stateDir,
      interfaceAddresses: async () => [],
      log: { debug: () => {}, info: () => {}, warn: () => {}, error: () => {} },
      failover: addresses,
      tunnels,
      ...(fence ? { fence } : {}),
    });

  /** What the kernel holds of an address now: its SNAT map element, its route rule, the address itself. */
  const holds = (k: ReturnType<typeof kernel>, addresses: FakeFailoverAddresses, address: string) => ({
    rules: k.nft.dump().includes(`goto snat_failover${address.includes(':') ? 6 : 4}_${address.replace(/[.:]/g, '_')}`),
    route: k.routing.state.rules.some((r) => r.from === address),
    address: addresses.held.some((a) => a.address === address),
  });

  it('claims with the hook and the rules and routes before the address and announcement, and releases the address before its rules', async () => {
    const k = kernel();
    const addresses = new FakeFailoverAddresses();
    const tunnels = new CountingTunnels();
    const agent = agentWith(k, addresses, { tunnels });
    await agent.start(failoverConfig);
    const tunnelCalls = tunnels.calls;
    // What /steering streams would send at once: the addresses held at each change, with the kernel's state of the first.
    const told: Array<{ held: string[] | undefined; kernel: ReturnType<typeof holds> }> = [];
    agent.onFailoverHeld(() =>
      told.push({ held: agent.report().failoverAddresses, kernel: holds(k, addresses, '100.64.1.100') }),
    );
    const seen: Array<ReturnType<typeof holds>> = [];
    await agent.setFailoverOwned(new Set(['100.64.1.100', 'FD00:64:1::100']), {
      beforeClaim: async (address) => {
        await new Promise((resolve) => setTimeout(resolve, 20));
        seen.push(holds(k, addresses, address));
      },
    });
    // The address waits for the hook; its route is there whether it is owned or not: a claim waits for no route.
    expect(seen).toEqual([
      expect.objectContaining({ route: true, address: false }),
      expect.objectContaining({ route: true, address: false }),
    ]);
    expect(holds(k, addresses, '100.64.1.100')).toEqual({ rules: true, route: true, address: true });
    expect(holds(k, addresses, 'fd00:64:1::100')).toEqual({ rules: true, route: true, address: true });
    expect(addresses.held).toEqual([
      { address: '100.64.1.100', interface: 'up1' },
      { address: 'fd00:64:1::100', interface: 'up1' },
    ]);
    expect(addresses.announced).toEqual(['100.64.1.100', 'fd00:64:1::100']);
    expect(agent.report().failoverAddresses).toEqual(['100.64.1.100', 'fd00:64:1::100']);
    // The claim waited for its own rules and routes, not for a check of the steering tunnel.
    expect(tunnels.calls).toBe(tunnelCalls);

    const remove = addresses.remove.bind(addresses);
    const atRemoval: Array<ReturnType<typeof holds>> = [];
    addresses.remove = async (a) => {
      atRemoval.push(holds(k, addresses, a.address));
      await remove(a);
    };
    await agent.setFailoverOwned(new Set(['fd00:64:1::100', '198.51.100.1']));
    expect(atRemoval).toEqual([{ rules: true, route: true, address: true }]);
    expect(holds(k, addresses, '100.64.1.100')).toEqual({ rules: false, route: true, address: false });
    expect(agent.report().failoverAddresses).toEqual(['fd00:64:1::100']);
    // Told once per change: when claimed addresses are in place, and before a released one leaves; a repeat tells nothing.
    await agent.setFailoverOwned(new Set(['fd00:64:1::100']));
    expect(told).toEqual([
      { held: ['100.64.1.100', 'fd00:64:1::100'], kernel: { rules: true, route: true, address: true } },
      { held: ['fd00:64:1::100'], kernel: { rules: true, route: true, address: true } },
    ]);

    await agent.stop({ releaseFailover: true });
    expect(addresses.held).toEqual([]);
    expect(agent.report().failoverAddresses).toEqual([]);
  });

  it('claims nothing of an address whose hook failed, takes its rules back, and runs the hook again at the next try', async () => {
    const k = kernel();
    const addresses = new FakeFailoverAddresses();
    const agent = agentWith(k, addresses);
    await agent.start(failoverConfig);
    const failing = agent.setFailoverOwned(new Set(['100.64.1.100']), {
      beforeClaim: async () => {
        await new Promise((resolve) => setTimeout(resolve, 20));
        throw new Error('conntrack -R failed');
      },
    });
    await expect(failing).rejects.toThrow('conntrack -R failed');
    expect(holds(k, addresses, '100.64.1.100')).toEqual({ rules: false, route: true, address: false });
    expect(agent.report().failoverAddresses).toEqual([]);
    const hooked: string[] = [];
    await agent.setFailoverOwned(new Set(['100.64.1.100']), {
      beforeClaim: async (address) => void hooked.push(address),
    });
    expect(hooked).toEqual(['100.64.1.100']);
    expect(holds(k, addresses, '100.64.1.100')).toEqual({ rules: true, route: true, address: true });
  });

  it('removes at start the addresses a former run left where the config puts none, and keeps the others until told', async () => {
    const k = kernel();
    const addresses = new FakeFailoverAddresses();
    addresses.held = [
      { address: '100.64.1.100', interface: 'up1' },
      { address: '100.64.1.100', interface: 'up2' },
      { address: '192.0.2.1', interface: 'up1' },
    ];
    const agent = agentWith(k, addresses);
    await agent.start(failoverConfig);
    expect(addresses.held).toEqual([{ address: '100.64.1.100', interface: 'up1' }]);
    await agent.setFailoverOwned(new Set());
    expect(addresses.held).toEqual([]);
    await agent.stop();
  });

  it('lets the kernel answer for an address only while its owner extends the fence: allowed before the announcement, silent before the release', async () => {
    const shared = parseGatewayConfig({
      ...structuredClone(failoverConfig),
      failover: {
        ...failoverConfig.failover!,
        nodes: ['node-1', 'node-2'].map((node) => ({ node, addresses: ['192.0.2.1'] })),
      },
    });
    const k = kernel();
    const addresses = new FakeFailoverAddresses();
    const fence = new FakeFailoverFence();
    // A former run's allowance goes at start.
    await fence.guard(['100.64.1.100']);
    await fence.allow(['100.64.1.100'], 60_000);
    const agent = agentWith(k, addresses, { fence });
    await agent.start(shared);
    expect(fence.guarded).toEqual(['100.64.1.100', 'fd00:64:1::100']);
    expect(fence.answers('100.64.1.100')).toBe(false);

    await agent.setFailoverFence(performance.now() + 600);
    const announce = addresses.announce.bind(addresses);
    const atAnnouncement: boolean[] = [];
    addresses.announce = async (a) => {
      atAnnouncement.push(fence.answers(a.address));
      await announce(a);
    };
    await agent.setFailoverOwned(new Set(['100.64.1.100', 'fd00:64:1::100']));
    expect(atAnnouncement).toEqual([true, true]);
    const until = fence.allowed.get('100.64.1.100')!;
    expect(until - performance.now()).toBeGreaterThan(500);

    // Extended by the owner; a deadline that passed extends nothing.
    await agent.setFailoverFence(performance.now() + 60_000);
    expect(fence.allowed.get('fd00:64:1::100')! - performance.now()).toBeGreaterThan(59_000);
    await agent.setFailoverFence(performance.now() - 1);
    expect(fence.allowed.get('fd00:64:1::100')! - performance.now()).toBeGreaterThan(59_000);

    const remove = addresses.remove.bind(addresses);
    const atRemoval: boolean[] = [];
    addresses.remove = async (a) => {
      atRemoval.push(fence.answers(a.address));
      await remove(a);
    };
    await agent.setFailoverOwned(new Set(['fd00:64:1::100']));
    expect(atRemoval).toEqual([false]);
    expect(fence.answers('fd00:64:1::100')).toBe(true);

    // A gateway of one node guards nothing: nobody else answers for its addresses.
    await agent.configure(failoverConfig);
    expect(fence.guarded).toEqual([]);
    await agent.remove();
    expect(fence.guarded).toBeUndefined();
    expect(fence.allowed.size).toBe(0);
  });
});
