// The ordered policy rules as the kernel decides them once compiled into lookups
// (dataplane/classify.ts): with 1,000 rules loaded by the real Agent into a gateway node of a
// network-namespace topology, real flows of two pods, over IPv4 and IPv6, TCP, UDP and ICMP, with
// and without an application, are decided by the first rule in order that matches them, among
// rules that overlap them before and after, and by the default action when none does. Which rule
// decided is read off the kernel's counters (each rule's chain counts the flows it decides), the
// uplink off the uplinks' new-flow counters, and the agent's attribution of each answered flow
// must name the same rule.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from '../../dataplane/agent.ts';
import { ExecConntrack } from '../../dataplane/conntrack.ts';
import { ExecNftables } from '../../dataplane/nft/nftables.ts';
import type { FlowAssociation } from '../../dataplane/render.ts';
import { ExecRouting } from '../../dataplane/routing.ts';
import { parseGatewayConfig } from '../../contracts/gateway/index.ts';
import { createTopology, podAddress, server, until, uplinkAddress, uplinkNextHop, type Topology } from './topology.ts';
import { connectMany, ping, startWhoami, type Server } from './traffic.ts';

const ports = [9000, 9001, 9002];
const ruleCount = 1000;
const uplinks = ['isp1', 'isp2', 'isp3'];
const pod1 = podAddress(1);
const pod2 = podAddress(2);

/**
 * The rules that decide the probes' flows, at their index in the config; every other index holds
 * a rule that overlaps them in source, protocol or ports but not in destination.
 */
const deciding: Record<number, Record<string, unknown>> = {
  10: {
    rule: 'deny-9001',
    sources: [pod1.v4, pod1.v6],
    destinations: [
      { cidr: '203.0.113.0/24', protocol: 'TCP', ports: [{ port: 9001 }] },
      { cidr: '2001:db8:113::/48', protocol: 'TCP', ports: [{ port: 9001 }] },
    ],
    action: 'Deny',
  },
  20: {
    rule: 'isp2-9001-9002',
    sources: ['10.244.0.0/16'],
    destinations: [{ cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port: 9001, endPort: 9002 }] }],
    action: 'Allow',
    uplinks: { allowed: ['isp2'] },
  },
  50: {
    rule: 'curl-no-9002',
    applications: [{ processName: 'curl' }],
    sources: [pod1.v4],
    destinations: [{ cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port: 9002 }] }],
    action: 'Deny',
  },
  300: {
    rule: 'curl-isp3',
    applications: [{ processName: 'curl' }],
    sources: [pod1.v4],
    destinations: [{ cidr: '203.0.113.0/25', protocol: 'TCP', ports: [{ port: 9000 }] }],
    action: 'Allow',
    uplinks: { allowed: ['isp3'] },
  },
  400: {
    rule: 'pod2-isp3',
    sources: [pod2.v4],
    destinations: [{ cidr: '128.0.0.0/1', protocol: 'Any' }],
    action: 'Allow',
    uplinks: { allowed: ['isp1', 'isp3'], preferred: ['isp3'] },
  },
  600: {
    rule: 'udp-next-door',
    sources: [pod1.v4, pod2.v4],
    destinations: [{ cidr: '203.0.113.128/25', protocol: 'UDP', ports: [{ port: 9000, endPort: 9002 }] }],
    action: 'Deny',
  },
  700: {
    rule: 'udp-9000',
    sources: ['10.244.0.0/16'],
    destinations: [{ cidr: '203.0.113.0/25', protocol: 'UDP', ports: [{ port: 9000 }] }],
    action: 'Deny',
  },
  750: {
    rule: 'wget-nothing',
    applications: [{ processName: 'wget' }],
    sources: [pod1.v4],
    destinations: [{ protocol: 'TCP' }],
    action: 'Deny',
  },
  800: {
    rule: 'v6-isp1',
    sources: ['fd00:244::/32'],
    destinations: [{ cidr: '2001:db8:113::/48', protocol: 'TCP', ports: [{ port: 9000 }] }],
    action: 'Allow',
    uplinks: { allowed: ['isp1'] },
  },
  999: {
    rule: 'no-ping',
    sources: [pod1.v4, pod1.v6, pod2.v6],
    destinations: [{ protocol: 'ICMP' }],
    action: 'Deny',
  },
};

/** Rule `i` that decides none of the probes: the server is never in its destinations. */
function other(i: number): Record<string, unknown> {
  const sources = [
    [pod1.v4, pod1.v6],
    [pod2.v4, pod2.v6],
    ['10.244.0.0/16', 'fd00:244::/32'],
    [`10.244.${100 + (i % 100)}.0/24`],
  ][i % 4]!;
  const cidr = [
    `172.${16 + (i % 16)}.${i % 256}.0/24`,
    '203.0.113.128/25',
    '0.0.0.0/1',
    `2001:db8:${(0x200 + i).toString(16)}::/48`,
    `198.51.${i % 256}.0/24`,
  ][i % 5]!;
  const protocol = ['TCP', 'UDP', 'ICMP', 'Any'][(i % 7) % 4]!;
  const withPorts = protocol === 'TCP' || protocol === 'UDP';
  return {
    rule: `other-${i}`,
    sources,
    destinations: [
      {
        cidr,
        protocol,
        ...(withPorts ? { ports: [{ port: 9000, endPort: 9002 }, { port: 443 }, { port: 1000 + i }] } : {}),
      },
    ],
    ...(i % 3 ? { action: 'Allow', ...(i % 5 === 1 ? { uplinks: { allowed: ['isp1'] } } : {}) } : { action: 'Deny' }),
  };
}

const config = parseGatewayConfig({
  version: 1,
  gateway: 'rules',
  hash: 'rules-1',
  sources: ['10.244.0.0/16', 'fd00:244::/32'],
  bypass: [],
  uplinks: [1, 2, 3].map((n) => ({
    name: `isp${n}`,
    interface: `up${n}`,
    nextHop: { ipv4: uplinkNextHop(n).v4, ipv6: uplinkNextHop(n).v6 },
    snat: { addresses: [uplinkAddress(n).v4, uplinkAddress(n).v6] },
    weight: 1,
  })),
  balancing: { mode: 'Weighted' },
  timeouts: {},
  defaultAction: 'Allow',
  rules: Array.from({ length: ruleCount }, (_, i) => ({
    policy: 'e2e/rules',
    priority: i,
    ...(deciding[i] ?? other(i)),
  })),
});

/** Source ports of pod1 whose flows are curl's. */
const curlPorts = [40000, 40001];
const curl = (sourcePort: number): FlowAssociation => ({
  transport: 'tcp',
  sourceAddress: pod1.v4,
  sourcePort,
  application: {
    processName: 'curl',
    executable: '/usr/bin/curl',
    commandLine: ['curl'],
    containerName: 'app',
    containerId: 'c'.repeat(64),
    uid: 1000,
    pid: 1000,
  },
});

let t: Topology;
let dir: string;
let agent: Agent;
const servers: Server[] = [];
const errors: string[] = [];

beforeAll(async () => {
  t = await createTopology({ pods: 2, uplinks: 3 });
  dir = await mkdtemp(join(tmpdir(), 'naat-e2e-rules-'));
  for (const port of ports) servers.push(await startWhoami(t, port));
  const inGateway = (tool: string) => ['ip', 'netns', 'exec', t.ns.gw, tool];
  agent = new Agent({
    node: 'gw',
    nft: new ExecNftables(inGateway('nft'), dir),
    routing: new ExecRouting(inGateway('ip')),
    conntrack: new ExecConntrack(inGateway('conntrack')),
    stateDir: join(dir, 'state'),
    interfaceAddresses: async () => [],
    writeSysctl: async (path, value) => void (await t.exec(t.ns.gw, ['sysctl', '-q', '-w', `${path}=${value}`])),
    log: {
      debug: () => {},
      info: () => {},
      warn: (message, fields) => errors.push(`${message} ${JSON.stringify(fields)}`),
      error: (message, fields) => errors.push(`${message} ${JSON.stringify(fields)}`),
    },
  });
  await agent.start(config);
  await agent.associate(curlPorts.map(curl), []);
}, 120_000);

afterAll(async () => {
  await agent?.remove();
  for (const s of servers) await s.stop();
  await t?.destroy();
  await rm(dir, { recursive: true, force: true });
  if (errors.length) console.log(`the agent logged:\n${errors.join('\n')}`);
});

/** The kernel's counts of new flows: per rule chain (by the rule's name) and per uplink. */
async function counts(): Promise<Map<string, number>> {
  const { stdout } = await t.exec(t.ns.gw, ['nft', '-j', '-t', 'list', 'table', 'inet', 'naat']);
  const listing = JSON.parse(stdout) as {
    nftables: Array<{
      rule?: { chain: string; comment?: string; expr: Array<{ counter?: { packets: number } }> };
      counter?: { name: string; packets: number };
    }>;
  };
  const found = new Map<string, number>();
  for (const item of listing.nftables) {
    if (item.rule && /^rule\d+$/.test(item.rule.chain) && item.rule.comment) {
      found.set(item.rule.comment, item.rule.expr.find((e) => e.counter)?.counter?.packets ?? 0);
    }
    if (item.counter?.name.startsWith('new_flows_'))
      found.set(item.counter.name.slice('new_flows_'.length), item.counter.packets);
  }
  return found;
}

/** What moved between two readings of the counts. */
function moved(before: Map<string, number>, after: Map<string, number>) {
  const names = [...after].filter(([name, n]) => n > (before.get(name) ?? 0)).map(([name]) => name);
  return {
    rules: names.filter((n) => n.startsWith('e2e/rules#')).map((n) => n.slice('e2e/rules#'.length)),
    uplinks: names.filter((n) => uplinks.includes(n)),
  };
}

interface Probe {
  from: 1 | 2;
  family: 'v4' | 'v6';
  transport: 'tcp' | 'udp' | 'icmp';
  port?: number;
  sourcePort?: number;
  /** The rule that decides the flow; undefined for the default action (Allow). */
  rule?: string;
  /** The uplinks an allowed flow may take; none for a denied one. */
  via: string[];
}

const probes: Array<[string, Probe]> = [
  [
    'an early Deny before a later Allow',
    { from: 1, family: 'v4', transport: 'tcp', port: 9001, rule: 'deny-9001', via: [] },
  ],
  ['the same Deny over IPv6', { from: 1, family: 'v6', transport: 'tcp', port: 9001, rule: 'deny-9001', via: [] }],
  [
    'the later Allow for a source the Deny leaves out',
    { from: 2, family: 'v4', transport: 'tcp', port: 9001, rule: 'isp2-9001-9002', via: ['isp2'] },
  ],
  [
    'a port of the Allow past the Deny',
    { from: 1, family: 'v4', transport: 'tcp', port: 9002, rule: 'isp2-9001-9002', via: ['isp2'] },
  ],
  ['no rule: the default action', { from: 1, family: 'v4', transport: 'tcp', port: 9000, via: uplinks }],
  [
    "an application's rule, for its flow only",
    { from: 1, family: 'v4', transport: 'tcp', port: 9000, sourcePort: curlPorts[0], rule: 'curl-isp3', via: ['isp3'] },
  ],
  [
    "a pod rule before the application's Deny",
    {
      from: 1,
      family: 'v4',
      transport: 'tcp',
      port: 9002,
      sourcePort: curlPorts[1],
      rule: 'isp2-9001-9002',
      via: ['isp2'],
    },
  ],
  [
    'a rule for any protocol, TCP',
    { from: 2, family: 'v4', transport: 'tcp', port: 9000, rule: 'pod2-isp3', via: ['isp3'] },
  ],
  [
    'a rule for any protocol before a UDP Deny',
    { from: 2, family: 'v4', transport: 'udp', port: 9000, rule: 'pod2-isp3', via: ['isp3'] },
  ],
  [
    'a UDP Deny after a neighbour network',
    { from: 1, family: 'v4', transport: 'udp', port: 9000, rule: 'udp-9000', via: [] },
  ],
  [
    'a UDP port that only a neighbour network denies',
    { from: 1, family: 'v4', transport: 'udp', port: 9001, via: uplinks },
  ],
  ['an IPv6 Allow', { from: 1, family: 'v6', transport: 'tcp', port: 9000, rule: 'v6-isp1', via: ['isp1'] }],
  ['no rule over IPv6', { from: 2, family: 'v6', transport: 'tcp', port: 9002, via: uplinks }],
  ['the last rule, ICMP', { from: 1, family: 'v4', transport: 'icmp', rule: 'no-ping', via: [] }],
  [
    'an earlier rule for any protocol, ICMP',
    { from: 2, family: 'v4', transport: 'icmp', rule: 'pod2-isp3', via: ['isp3'] },
  ],
  ['the last rule, ICMPv6', { from: 2, family: 'v6', transport: 'icmp', rule: 'no-ping', via: [] }],
];

describe(`${ruleCount} ordered rules compiled into lookups, in the kernel`, () => {
  it.each(probes)('decide a flow by the first rule that matches it: %s', async (_, probe) => {
    const pod = t.ns.pods[probe.from - 1]!;
    const address = server[probe.family];
    const before = await counts();
    let answered: string[] = [];
    if (probe.transport === 'icmp') {
      const answers = await ping(t, pod, address, { identifier: 4000 + probes.findIndex(([, p]) => p === probe) });
      answered = answers ? ['ping'] : [];
    } else {
      const result = await connectMany(t, pod, address, probe.port!, 1, {
        transport: probe.transport,
        timeoutMs: 1000,
        ...(probe.sourcePort ? { sourcePort: probe.sourcePort } : {}),
      });
      answered = result.answers;
    }
    const after = moved(before, await counts());
    expect({ answered: answered.length, rules: after.rules }).toEqual({
      answered: probe.via.length ? 1 : 0,
      rules: probe.rule ? [probe.rule] : [],
    });
    expect(after.uplinks.length).toBe(probe.via.length ? 1 : 0);
    expect(probe.via).toEqual(expect.arrayContaining(after.uplinks));
    if (probe.transport === 'icmp' || !answered.length) return;
    // The agent attributes the flow, by tracing the ruleset it applied, to the same rule.
    const [mapped, mappedPort] = answered[0]!.split(' ');
    const record = await until('the flow attributed', async () =>
      agent.attributions
        .records()
        .find(
          (r) => r.mappedAddress === mapped && r.mappedPort === Number(mappedPort) && r.destinationPort === probe.port,
        ),
    );
    expect({ rule: record.rule, uplink: record.uplink }).toEqual({ rule: probe.rule, uplink: after.uplinks[0] });
  });
});
