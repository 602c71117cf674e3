import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Application } from '../proto/index.ts';
import { parseGatewayConfig, type GatewayConfig } from '../contracts/gateway/index.ts';
import { renderTable } from './nft/model.ts';
import { trace, type Packet, type TraceOptions } from './nft/trace.ts';
import { ConfigMemo, maxUplinkId, render, uplinkMarks, type FlowAssociation, type RenderInput } from './render.ts';
import { markOf, valueOf } from '../contracts/gateway/index.ts';
import { allocateUplinkIds } from './uplink-ids.ts';
import { leastLoadedCounts } from './balancing/least-loaded.ts';
import { planChanges } from './nft/changes.ts';

const testdata = join(import.meta.dirname, 'testdata');
const base = parseGatewayConfig(JSON.parse(await readFile(join(testdata, 'gateway.json'), 'utf8')));

function app(processName: string): Application {
  return {
    processName,
    executable: `/usr/bin/${processName}`,
    commandLine: [processName],
    containerName: 'app',
    containerId: '',
    uid: 1000,
    pid: 42,
  };
}

const curl: FlowAssociation = {
  transport: 'tcp',
  sourceAddress: '10.244.1.2',
  sourcePort: 40000,
  application: app('curl'),
};

function input(config: GatewayConfig = base, extra: Partial<RenderInput> = {}): RenderInput {
  return {
    config,
    node: 'node-1',
    ids: allocateUplinkIds(
      new Map(),
      config.uplinks.map((u) => u.name),
      maxUplinkId(uplinkMarks(config)),
    ),
    health: new Map(),
    associations: [curl],
    ...extra,
  };
}

function withConfig(change: (config: GatewayConfig) => void): GatewayConfig {
  const copy = structuredClone(base);
  change(copy);
  return parseGatewayConfig(copy);
}

const idOf = (i: RenderInput, name: string) => i.ids.get(name)!;
const uplinkOf = (i: RenderInput, ctMark: number) =>
  [...i.ids].find(([, id]) => id === valueOf(uplinkMarks(i.config), ctMark))?.[0];
const markFor = (i: RenderInput, name: string) => markOf(uplinkMarks(i.config), idOf(i, name));

const tcp = (saddr: string, daddr: string, dport: number, sport = 50000): Packet => ({
  family: saddr.includes(':') ? 6 : 4,
  saddr,
  daddr,
  protocol: 'tcp',
  sport,
  dport,
});

/** The uplink of every slot of the random pick, i.e. the exact shares Weighted mode gives. */
function shares(i: RenderInput, packet: Packet): Record<string, number> {
  const table = render(i).table;
  let total = 1;
  trace(table, 'prerouting', packet, { random: (slots) => ((total = slots), 0) });
  const counts: Record<string, number> = {};
  for (let n = 0; n < total; n++) {
    const result = trace(table, 'prerouting', packet, { random: () => n });
    const name = result.verdict === 'drop' ? 'drop' : (uplinkOf(i, result.ctMark) ?? 'none');
    counts[name] = (counts[name] ?? 0) + 1;
  }
  return counts;
}

describe('render', () => {
  it('renders the golden table for the sample config (UPDATE_GOLDEN=1 rewrites it)', async () => {
    const text = renderTable(render(input()).table);
    const file = join(testdata, 'gateway.nft');
    if (process.env.UPDATE_GOLDEN) await writeFile(file, text);
    expect(text).toBe(await readFile(file, 'utf8'));
  });

  it('routes each uplink by its own table and mark', () => {
    const i = input();
    const routes = render(i).routes;
    expect(routes.map((r) => [r.uplink, r.table, r.mark, r.interface])).toEqual([
      ['backup', 7700 + idOf(i, 'backup'), markFor(i, 'backup'), 'up3'],
      ['isp-a', 7700 + idOf(i, 'isp-a'), markFor(i, 'isp-a'), 'up1'],
      ['isp-b', 7700 + idOf(i, 'isp-b'), markFor(i, 'isp-b'), 'up2'],
    ]);
    expect(routes.find((r) => r.uplink === 'isp-b')!.sources).toEqual(['100.64.2.2', '100.64.2.3']);
  });

  it('has the reverse-path check of every device, the uplinks among them, use the packet mark', () => {
    expect(render(input()).sysctls).toEqual([['net/ipv4/conf/all/src_valid_mark', '1']]);
  });

  it('leaves out uplinks that another node has', () => {
    const config = withConfig((c) => (c.uplinks[1]!.nodes = ['node-2']));
    expect(render(input(config)).routes.map((r) => r.uplink)).toEqual(['backup', 'isp-a']);
  });
});

describe('the parts of a config made once (ConfigMemo)', () => {
  const config = withConfig((c) =>
    c.rules.push({
      ...structuredClone(c.rules[1]!),
      rule: 'node-via-b',
      applications: [{ processName: 'node' }],
      action: 'Allow',
      uplinks: { allowed: ['isp-b'] },
    }),
  );
  const node = { ...curl, sourcePort: 40002, application: app('node') };

  it('leave every table as a render without them makes it, and planChanges sees what they kept unchanged', () => {
    const memo = new ConfigMemo(config);
    // Classes made in another order, a class gone, an uplink down: whatever an earlier render made.
    const inputs: Array<Partial<RenderInput>> = [
      { associations: [curl] },
      { associations: [curl, node] },
      { associations: [node, curl] },
      { associations: [node], health: new Map([['isp-b', false]]) },
      { associations: [] },
      { associations: [curl, node], health: new Map([['isp-a', false]]) },
    ];
    let before = render(input(config, { memo })).table;
    for (const extra of inputs) {
      const reused = render(input(config, { ...extra, memo })).table;
      expect(reused).toEqual(render(input(config, extra)).table);
      expect(planChanges(before, reused)).toEqual(planChanges(before, render(input(config, extra)).table));
      before = reused;
    }
    expect([...memo.classes.keys()].sort()).toEqual(['class0', 'class1', 'pod_rules']);
  });

  it('are made afresh for another config, with what it shares with the last one taken from its memo', () => {
    const memo = new ConfigMemo(base);
    const table = render(input(config, { associations: [node], memo })).table;
    expect(table).toEqual(render(input(config, { associations: [node] })).table);
    expect(memo.classes.size).toBe(0);

    const last = new ConfigMemo(config);
    render(input(config, { associations: [curl, node], memo: last }));
    // A rule edited keeps the addresses; a pod added changes them.
    const edited = withConfig((c) => {
      c.rules.push(structuredClone(config.rules.at(-1)!));
      c.rules[0]!.destinations = [{ protocol: 'TCP', ports: [{ port: 24 }] }];
    });
    const added = withConfig((c) => {
      c.rules.push(structuredClone(config.rules.at(-1)!));
      c.sources.push('10.244.2.3');
      c.rules[2]!.sources.push('10.244.2.3');
    });
    for (const next of [edited, added]) {
      const memo = new ConfigMemo(next, last);
      const extra = { associations: [curl, node], memo };
      expect(render(input(next, extra)).table).toEqual(render(input(next, { associations: [curl, node] })).table);
      expect(memo.addressSets === last.addressSets).toBe(next === edited);
    }
  });
});

describe('a new flow traced through the rendered rules', () => {
  it('is spread over the lowest tier by weight (isp-a 1 : isp-b 2), never to the backup', () => {
    expect(shares(input(), tcp('10.244.1.7', '203.0.113.10', 443))).toEqual({ 'isp-a': 1, 'isp-b': 2 });
  });

  it('uses only uplinks that carry its family (isp-b has no IPv6 next hop)', () => {
    const result = trace(render(input()).table, 'prerouting', tcp('fd00:244:1::7', '2001:db8::10', 443));
    expect(uplinkOf(input(), result.ctMark)).toBe('isp-a');
  });

  it('moves to the higher tier only when the whole lower tier is down, and is dropped when nothing is up', () => {
    const packet = tcp('10.244.1.7', '203.0.113.10', 443);
    const down = (...names: string[]) => input(base, { health: new Map(names.map((n) => [n, false])) });
    expect(shares(down('isp-a'), packet)).toEqual({ 'isp-b': 1 });
    expect(shares(down('isp-a', 'isp-b'), packet)).toEqual({ backup: 1 });
    expect(trace(render(down('isp-a', 'isp-b', 'backup')).table, 'prerouting', packet).verdict).toBe('drop');
  });

  it('is dropped by a Deny rule of its pod and not by one of another pod', () => {
    const table = render(input()).table;
    expect(trace(table, 'prerouting', tcp('10.244.1.7', '203.0.113.10', 23)).verdict).toBe('drop');
    expect(trace(table, 'prerouting', tcp('10.244.2.2', '203.0.113.10', 23)).verdict).toBe('accept');
  });

  it('follows the rule of its application: curl is denied, the same pod on another port is not', () => {
    const table = render(input()).table;
    expect(trace(table, 'prerouting', tcp('10.244.1.2', '198.51.100.5', 8080, 40000)).verdict).toBe('drop');
    expect(trace(table, 'prerouting', tcp('10.244.1.2', '198.51.100.5', 8080, 40001)).verdict).toBe('accept');
    const withoutCurl = render(input(base, { associations: [] })).table;
    expect(trace(withoutCurl, 'prerouting', tcp('10.244.1.2', '198.51.100.5', 8080, 40000)).verdict).toBe('accept');
  });

  it('is decided by a pod rule before the application rules of its class, whatever their protocol', () => {
    // curl may go anywhere by any protocol, after the pod's telnet rule: curl's telnet is still denied.
    const config = withConfig((c) =>
      c.rules.push({
        ...structuredClone(c.rules[1]!),
        rule: 'curl-anywhere',
        destinations: undefined,
        action: 'Allow',
      }),
    );
    const table = render(input(config)).table;
    const telnet = trace(table, 'prerouting', tcp('10.244.1.2', '203.0.113.10', 23, 40000));
    expect({ verdict: telnet.verdict, rule: telnet.rule }).toEqual({
      verdict: 'drop',
      rule: 'shop/no-telnet#deny-telnet',
    });
    const web = trace(table, 'prerouting', tcp('10.244.1.2', '203.0.113.10', 80, 40000));
    expect({ verdict: web.verdict, rule: web.rule }).toEqual({ verdict: 'accept', rule: 'shop/curl#curl-anywhere' });
  });

  it('holds the flows of a pod with the sidecar until their association arrives, in Hold mode', () => {
    const config = withConfig(
      (c) =>
        (c.association = { port: 7740, unassociatedFlows: 'Hold', sidecarSources: ['10.244.1.2'], strictSources: [] }),
    );
    const node = { ...curl, sourcePort: 40002, application: app('node') };
    const table = render(input(config, { associations: [curl, node] })).table;
    expect(trace(table, 'prerouting', tcp('10.244.1.2', '203.0.113.10', 443, 40001)).verdict).toBe('drop');
    // Known, though no rule names it: the pod's rules decide.
    expect(trace(table, 'prerouting', tcp('10.244.1.2', '203.0.113.10', 443, 40002)).verdict).toBe('accept');
    expect(trace(table, 'prerouting', tcp('10.244.1.2', '203.0.113.10', 443, 40000)).verdict).toBe('accept');
    expect(trace(table, 'prerouting', tcp('10.244.1.7', '203.0.113.10', 443, 40001)).verdict).toBe('accept');
  });

  it("classifies a strict pod's stamped flow from its first packet and clears the stamp before it leaves", () => {
    const config = withConfig(
      (c) =>
        (c.association = {
          port: 7740,
          unassociatedFlows: 'Hold',
          sidecarSources: ['10.244.1.2', '10.244.1.128/25'],
          strictSources: ['10.244.1.2', '10.244.1.128/25'],
        }),
    );
    const stamps = [
      { address: '10.244.1.2', stamp: 5, application: app('curl') },
      { address: '10.244.1.2', stamp: 6, application: app('node') },
      { address: '10.244.1.130', stamp: 6, application: app('node') },
    ];
    const table = render(input(config, { associations: [], stamps })).table;
    const stamped = (dscp: number) => ({ ...tcp('10.244.1.2', '198.51.100.5', 8080, 40010), dscp });
    // curl's rule denies its very first packet; a known application no rule names is not held.
    expect(trace(table, 'prerouting', stamped(5)).verdict).toBe('drop');
    expect(trace(table, 'prerouting', stamped(6)).verdict).toBe('accept');
    // Unstamped, or stamped with a number never announced: held until an association arrives.
    expect(trace(table, 'prerouting', stamped(0)).verdict).toBe('drop');
    expect(trace(table, 'prerouting', stamped(7)).verdict).toBe('drop');
    // The same for a pod of a strict network.
    expect(trace(table, 'prerouting', { ...stamped(6), saddr: '10.244.1.130' }).verdict).toBe('accept');
    expect(trace(table, 'prerouting', { ...stamped(0), saddr: '10.244.1.130' }).verdict).toBe('drop');
    // A stamp means nothing from a pod that is not in strict mode.
    expect(trace(table, 'prerouting', { ...stamped(5), saddr: '10.244.1.7' }).verdict).toBe('accept');
    const text = renderTable(table);
    expect(text).toContain('stamps4 10.244.1.2 . 0x05 : goto class0');
    expect(text).toContain(
      'ip saddr @strict4 ip dscp != cs0 counter name "strict_stamped_flows" ip saddr . ip dscp vmap @stamps4',
    );
    // Single addresses and wider prefixes are in two sets, and a rule per set looks them up.
    const clear = (f: 4 | 6, set: string) => ({
      match: [
        { kind: 'family', family: f },
        { kind: 'saddr', family: f, set },
        { kind: 'dscpStamped', family: f },
      ],
      then: [{ kind: 'clearDscp', family: f }],
    });
    expect(table.chains.find((c) => c.name === 'strict_clear')).toEqual({
      name: 'strict_clear',
      base: { type: 'filter', hook: 'forward', priority: -150 },
      rules: [clear(4, 'strict4'), clear(4, 'strict_nets4'), clear(6, 'strict6'), clear(6, 'strict_nets6')],
    });
    expect(render(input()).table.chains.some((c) => c.name === 'strict_clear')).toBe(false);
  });

  it('keeps to the allowed uplinks, preferring isp-b regardless of tier and falling back to the backup', () => {
    const packet = tcp('10.244.2.2', '192.0.2.1', 80);
    expect(shares(input(), packet)).toEqual({ 'isp-b': 1 });
    expect(shares(input(base, { health: new Map([['isp-b', false]]) }), packet)).toEqual({ backup: 1 });
    const none = input(base, {
      health: new Map([
        ['isp-b', false],
        ['backup', false],
      ]),
    });
    expect(trace(render(none).table, 'prerouting', packet).verdict).toBe('drop');
  });

  it('is untouched when it is a reply, comes from an unserved address, or goes to a bypassed or local address', () => {
    const table = render(input()).table;
    const untouched = (packet: Packet) => {
      const result = trace(table, 'prerouting', packet);
      return result.verdict === 'accept' && result.ctMark === 0 && result.mark === 0;
    };
    expect(untouched({ ...tcp('10.244.1.7', '203.0.113.10', 443), direction: 'reply' })).toBe(true);
    expect(untouched(tcp('10.1.1.1', '203.0.113.10', 443))).toBe(true);
    expect(untouched(tcp('10.244.1.7', '10.96.0.10', 443))).toBe(true);
    expect(untouched({ ...tcp('10.244.1.7', '100.64.1.2', 443), local: true })).toBe(true);
  });

  it('keeps the uplink of an established flow, and FTP control flows get the FTP helper', () => {
    const i = input();
    const table = render(i).table;
    const mark = markFor(i, 'isp-b');
    const later = trace(table, 'prerouting', { ...tcp('10.244.1.7', '203.0.113.10', 443), isNew: false, ctMark: mark });
    expect(later.mark).toBe(mark);
    // Active FTP: the server's data connection comes in through the uplink and inherits the
    // control flow's mark, which its packets from the uplink carry (for the reverse-path check;
    // the main-table rule of the uplink's interface takes them to the pod); the pod's answers
    // leave by the uplink.
    const inbound = {
      ...tcp('203.0.113.10', '100.64.1.2', 40000, 20),
      ctMark: mark,
      ctStatus: ['dnat' as const],
      iifname: 'up2',
    };
    expect(trace(table, 'prerouting', inbound).mark).toBe(mark);
    const answer = {
      ...tcp('10.244.1.7', '203.0.113.10', 20, 40000),
      direction: 'reply' as const,
      ctMark: mark,
      ctStatus: ['dnat' as const],
    };
    expect(trace(table, 'prerouting', answer).mark).toBe(mark);
    expect(trace(table, 'prerouting', tcp('10.244.1.7', '203.0.113.10', 21)).helper).toBe('ftp4');
    expect(trace(table, 'prerouting', tcp('10.244.1.7', '203.0.113.10', 443)).timeout).toBe('tcp4_7440_240');
  });

  it("gives a reply that arrives on an uplink its flow's uplink mark, and one that arrives elsewhere none", () => {
    const i = input();
    const table = render(i).table;
    for (const [name, iifname] of [
      ['isp-a', 'up1'],
      ['isp-b', 'up2'],
      ['backup', 'up3'],
    ] as const) {
      for (const [saddr, daddr] of [
        ['203.0.113.10', '10.244.1.7'],
        ['2001:db8::10', 'fd00:244:1::7'],
      ] as const) {
        const reply = { ...tcp(saddr, daddr, 50000, 443), direction: 'reply' as const, isNew: false };
        const mark = markFor(i, name);
        const arrived = trace(table, 'prerouting', { ...reply, ctMark: mark, iifname });
        expect([arrived.verdict, arrived.mark, arrived.ctMark]).toEqual(['accept', mark, mark]);
        expect(trace(table, 'prerouting', { ...reply, ctMark: mark, iifname: 'eth0' }).mark).toBe(0);
        // A flow that has no uplink (bypassed, local) keeps its replies unmarked.
        expect(trace(table, 'prerouting', { ...reply, iifname }).mark).toBe(0);
      }
    }
  });

  it('is translated to its uplink address and port range, with ICMP keeping its identifier space', () => {
    const i = input();
    const table = render(i).table;
    const mark = markFor(i, 'isp-a');
    const out = (packet: Packet) => trace(table, 'postrouting', { ...packet, mark, oifname: 'up1' });
    expect(out(tcp('10.244.1.7', '203.0.113.10', 443)).nat).toEqual({
      kind: 'snat',
      address: '100.64.1.2',
      ports: [20000, 29999],
    });
    expect(out({ family: 4, saddr: '10.244.1.7', daddr: '203.0.113.10', protocol: 'icmp' }).nat).toEqual({
      kind: 'snat',
      address: '100.64.1.2',
    });
    const backup = trace(table, 'postrouting', {
      ...tcp('10.244.1.7', '203.0.113.10', 443),
      mark: markFor(i, 'backup'),
      oifname: 'up3',
    });
    expect(backup.nat).toEqual({ kind: 'masquerade', ports: [1024, 65535] });
  });

  it('gives one source always the same address of an uplink with several', () => {
    const i = input();
    const table = render(i).table;
    const mark = markFor(i, 'isp-b');
    const addressOf = (saddr: string, sport: number) =>
      trace(table, 'postrouting', { ...tcp(saddr, '203.0.113.10', 443, sport), mark, oifname: 'up2' }).nat;
    expect(addressOf('10.244.1.7', 1000)).toEqual(addressOf('10.244.1.7', 2000));
    const seen = new Set(Array.from({ length: 20 }, (_, n) => JSON.stringify(addressOf(`10.244.1.${n + 10}`, 1000))));
    expect(seen.size).toBe(2);
  });

  it('drops a pod address that would leave an uplink untranslated', () => {
    const table = render(input()).table;
    const leak = trace(table, 'postrouting', { ...tcp('10.244.1.7', '203.0.113.10', 443), oifname: 'up1' });
    expect(leak.verdict).toBe('drop');
  });

  it('keeps a source on its uplink in SourceSticky mode, and spreads sources by weight', () => {
    const config = withConfig((c) => (c.balancing = { mode: 'SourceSticky', stickySeconds: 60 }));
    const i = input(config);
    const table = render(i).table;
    const dynamic = new Map<string, Set<string>>();
    const options = (n: number): TraceOptions => ({ dynamic, hash: () => n });
    const first = trace(table, 'prerouting', tcp('10.244.1.7', '203.0.113.10', 443), options(0));
    const again = trace(table, 'prerouting', tcp('10.244.1.7', '203.0.113.10', 443, 50001), options(2));
    expect(uplinkOf(i, again.ctMark)).toBe(uplinkOf(i, first.ctMark));
    const byHash = [0, 1, 2].map((n) =>
      uplinkOf(i, trace(table, 'prerouting', tcp(`10.244.1.${n + 20}`, '203.0.113.10', 443), { hash: () => n }).ctMark),
    );
    expect(byHash.sort()).toEqual(['isp-a', 'isp-b', 'isp-b']);
  });
});

describe('LeastLoaded', () => {
  it('shifts new flows away from the uplink with the most flows per weight', () => {
    const uplinks = base.uplinks.filter((u) => u.tier === 0);
    expect(leastLoadedCounts(uplinks, new Map())).toEqual([500, 1000]);
    const [a, b] = leastLoadedCounts(uplinks, new Map([['isp-b', 200]]));
    expect(a! > b!).toBe(true);
  });
});

describe('render with steering', () => {
  const steered = withConfig((c) => {
    c.steering = {
      tunnel: { vni: 7700, port: 4790 },
      markMask: 0x10,
      sources: [{ node: 'worker-1', addresses: ['192.168.0.21', 'fd00:192::21'] }],
    };
    c.pods = [{ namespace: 'shop', name: 'web', addresses: ['10.244.1.2', 'fd00:244:1::2'], node: 'worker-1' }];
  });
  const underlay = new Map([[4 as const, { address: '192.168.0.11', mtu: 1500 }]]);
  const fromTunnel = { ...tcp('10.244.1.2', '203.0.113.10', 443), iifname: 'naatg7700' };

  it('classifies a tunnelled flow like a local one and adds the tunnel bit to its marks', () => {
    const i = input(steered, { underlay });
    const local = trace(render(i).table, 'prerouting', tcp('10.244.1.2', '203.0.113.10', 443));
    const tunnelled = trace(render(i).table, 'prerouting', fromTunnel);
    expect(tunnelled.verdict).toBe('accept');
    expect(tunnelled.ctMark).toBe(local.ctMark | 0x10);
    expect(tunnelled.mark).toBe(local.mark | 0x10);
    expect(local.ctMark & 0x10).toBe(0);
  });

  it('marks every later packet of a tunnelled flow with its uplink and the tunnel bits, both ways', () => {
    const i = input(steered, { underlay });
    const { table } = render(i);
    const uplink = markOf(uplinkMarks(i.config), 1);
    const reply = trace(table, 'prerouting', {
      ...tcp('203.0.113.10', '100.64.1.2', 40000, 443),
      direction: 'reply',
      isNew: false,
      ctMark: uplink | 0x10,
    });
    expect(reply.mark).toBe(uplink | 0x10);
    const later = trace(table, 'prerouting', { ...fromTunnel, isNew: false, ctMark: uplink | 0x10 });
    expect(later.mark).toBe(uplink | 0x10);
    const ftpData = trace(table, 'prerouting', {
      ...tcp('203.0.113.10', '100.64.1.2', 40000, 20),
      isNew: false,
      ctStatus: ['dnat'],
      ctMark: uplink | 0x10,
    });
    expect(ftpData.mark).toBe(uplink | 0x10);
  });

  it('plans the tunnel device, the return routes of the pods on source nodes and the reply rule', () => {
    const { steering } = render(input(steered, { underlay }));
    expect(steering?.tunnels.devices.map((d) => [d.name, d.mtu, d.local, d.peers.map((p) => p.remote)])).toEqual([
      ['naatg7700', 1450, '192.168.0.11', ['192.168.0.21']],
    ]);
    expect(steering?.tunnels.routes.map((r) => [r.family, r.table, r.destination])).toEqual([
      [4, 7690, '10.244.1.2'],
      [6, 7690, 'fd00:244:1::2'],
    ]);
    expect(steering?.tunnels.rules).toContainEqual({
      family: 4,
      preference: 7690,
      table: 7690,
      fwmark: { value: 0x10, mask: 0x10 },
    });
    // The tunnel's own packets carry the flow's mark: the main table routes them, not an uplink's.
    expect(steering?.tunnels.rules).toContainEqual({
      family: 4,
      preference: 7689,
      table: 'main',
      from: '192.168.0.11',
    });
    expect(render(input(steered, { underlay })).table.chains.map((c) => c.name)).toContain('tunnel_mss');
  });

  it('renders the table without steering as before', () => {
    expect(renderTable(render(input(base, { underlay })).table)).toBe(renderTable(render(input()).table));
  });
});

describe('render with failover addresses', () => {
  const failover = withConfig((c) => {
    c.steering = {
      tunnel: { vni: 7700, port: 4790 },
      markMask: 0x10,
      sources: [{ node: 'worker-1', addresses: ['192.168.0.21'] }],
    };
    c.failover = {
      addresses: [
        { address: '100.64.1.100', uplink: 'isp-a' },
        { address: 'FD00:64:1:0::100', uplink: 'isp-a' },
        { address: '100.64.2.100', uplink: 'isp-b' },
      ],
      leaseDurationMs: 600,
      failback: false,
      failbackDelaySeconds: 30,
      nodes: [],
      draining: [],
    };
    c.pods = [
      {
        namespace: 'shop',
        name: 'web',
        addresses: ['10.244.1.2', 'fd00:244:1::2'],
        node: 'worker-1',
        egress: ['100.64.1.100', 'fd00:64:1::100'],
      },
      // The source of the rule that keeps flows to 192.0.2.0/24 on isp-b and backup.
      { namespace: 'shop', name: 'backup', addresses: ['10.244.2.2'], node: 'worker-1', egress: ['100.64.1.100'] },
    ];
  });
  const owned = new Set(['100.64.1.100', 'fd00:64:1::100']);
  const tunnelled = (packet: Packet): Packet => ({ ...packet, iifname: 'naatg7700' });
  /** Where the first packet of a flow goes, and how postrouting translates it there. */
  const leave = (i: RenderInput, packet: Packet, random = 0) => {
    const { table } = render(i);
    const decided = trace(table, 'prerouting', packet, { random: () => random });
    const uplink = uplinkOf(i, decided.ctMark);
    const device = i.config.uplinks.find((u) => u.name === uplink)?.interface;
    const nat = trace(table, 'postrouting', { ...packet, mark: decided.mark, oifname: device }).nat;
    return { verdict: decided.verdict, uplink, nat };
  };

  it("sends a tunnelled flow of a pod whose egress address is owned here out of the address's uplink, translated to it", () => {
    const i = input(failover, { owned });
    // Whatever the balancer would pick (isp-b has twice isp-a's weight).
    for (const random of [0, 1, 2]) {
      expect(leave(i, tunnelled(tcp('10.244.1.2', '203.0.113.10', 443)), random)).toEqual({
        verdict: 'accept',
        uplink: 'isp-a',
        nat: { kind: 'snat', address: '100.64.1.100', ports: [20000, 29999] },
      });
    }
    expect(leave(i, tunnelled({ ...tcp('fd00:244:1::2', '2001:db8::10', 443), protocol: 'udp' }))).toEqual({
      verdict: 'accept',
      uplink: 'isp-a',
      nat: { kind: 'snat', address: 'fd00:64:1::100', ports: [20000, 29999] },
    });
    const icmp = leave(i, tunnelled({ family: 4, saddr: '10.244.1.2', daddr: '203.0.113.10', protocol: 'icmp' }));
    expect(icmp.nat).toEqual({ kind: 'snat', address: '100.64.1.100' });
  });

  it('never lets a tunnelled flow leave with another address: one whose address another node owns waits (dropped)', () => {
    const notOwned = input(failover, { owned: new Set(['100.64.2.100']) });
    for (const random of [0, 1, 2]) {
      expect(leave(notOwned, tunnelled(tcp('10.244.1.2', '203.0.113.10', 443)), random).verdict).toBe('drop');
    }
    // Owned, but its uplink down here (the node gives the address up): dropped too, not balanced.
    const down = input(failover, { owned, health: new Map([['isp-a', false]]) });
    expect(leave(down, tunnelled(tcp('10.244.1.2', '203.0.113.10', 443))).verdict).toBe('drop');
  });

  it('keeps the balanced path and the uplink addresses for flows that do not come through the tunnel', () => {
    // The pod address, arriving elsewhere than from the tunnel.
    const local = leave(input(failover, { owned }), tcp('10.244.1.2', '203.0.113.10', 443), 2);
    expect(local.uplink).toBe('isp-b');
    expect(local.nat).toMatchObject({ kind: 'snat' });
    expect(local.nat).not.toMatchObject({ address: '100.64.1.100' });
  });

  it("lets policies decide first: a deny drops, and a rule's allowed uplinks without the address's uplink keep the node's own SNAT", () => {
    const i = input(failover, { owned });
    expect(leave(i, tunnelled(tcp('10.244.1.2', '203.0.113.10', 23))).verdict).toBe('drop');
    const restricted = leave(i, tunnelled(tcp('10.244.2.2', '192.0.2.1', 443)));
    expect(restricted.uplink).toBe('isp-b');
    expect(['100.64.2.2', '100.64.2.3']).toContain((restricted.nat as { address: string }).address);
  });

  it('routes a failover address by its uplink table, owned or not, and moves only set elements when ownership moves', () => {
    const held = render(input(failover, { owned }));
    expect(held.routes.find((r) => r.uplink === 'isp-a')?.sources).toEqual([
      '100.64.1.2',
      'fd00:64:1::2',
      '100.64.1.100',
      'fd00:64:1::100',
    ]);
    const none = render(input(failover, { owned: new Set() }));
    // A claim or a release moves no route, so the address waits for none.
    expect(none.routes).toEqual(held.routes);
    const operations = planChanges(none.table, held.table)!;
    // The pods move from the waiting set into the owned set and map.
    expect(new Set(operations.map((o) => `${o.op} ${o.what}`))).toEqual(new Set(['add element', 'delete element']));
    expect(planChanges(held.table, none.table)!.every((o) => o.what === 'element')).toBe(true);
  });

  it('adds nothing to the table of a gateway without failover addresses', () => {
    const plain = withConfig((c) => {
      c.steering = structuredClone(failover.steering);
    });
    expect(renderTable(render(input(plain, { owned })).table)).not.toContain('failover');
  });
});
