// Cluster-wide egress in a cluster of network namespaces (cluster-topology.ts): the gateway agents
// (`dataplane/main.ts run`) on two gateway nodes and the node agents (`dataplane/main.ts node`) on
// three worker nodes, as users run them, each from its config file; real traffic from the pods on
// every worker through the tunnel, the gateway nodes' uplinks and the ISPs to a server. Each node
// holds its --tls-dir from the test's CA: the node agents ask /steering over mutual TLS.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExecConntrack } from '../../dataplane/conntrack.ts';
import { ExecNftables } from '../../dataplane/nft/nftables.ts';
import { NodeAgent, type PeerStates } from '../../dataplane/steering/node-agent.ts';
import { nodeTableName, nodeTunnelOwnership } from '../../dataplane/steering/node-plan.ts';
import { rendezvous } from '../../common/index.ts';
import { ExecTunnelKernel } from '../../dataplane/steering/tunnel-kernel.ts';
import {
  createCluster,
  gatewayAddress,
  gatewayUplinks,
  gateways,
  isps,
  masqueradeOf,
  nodeNetwork,
  podAddress,
  podNetwork,
  printAgentErrors,
  uplinkAddress,
  workerAddress,
  workers,
  writeClusterTls,
  type Cluster,
} from './cluster-topology.ts';
import { makeTestCa } from '../tls.ts';
import { renderedListenArgs } from './rendered-agent.ts';
import { server, stopProcess, until } from './topology.ts';
import { connectMany, fetchFtp, ping, startFtpServer, startWhoami, type FtpServer, type Server } from './traffic.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const whoamiPort = 9000;
const tunnel = { vni: 7700, port: 4790 };

let c: Cluster;
let dir: string;
let ftp: FtpServer;
const servers: Server[] = [];
const agents = new Map<string, ChildProcess>();
let generation = 0;

type Family = 'v4' | 'v6';
/** The underlay families the tunnels may use: both (IPv4 outer), or IPv6 only (IPv6 outer). */
let underlayFamilies: Family[] = ['v4', 'v6'];
const underlay = (address: { v4: string; v6: string }) => underlayFamilies.map((f) => address[f]);

function gatewayConfig(): Record<string, unknown> {
  return {
    version: 1,
    gateway: 'egress',
    hash: `gw-${++generation}`,
    sources: [podNetwork.v4, podNetwork.v6],
    pods: workers.map((w) => ({
      namespace: 'shop',
      name: `web-${w}`,
      addresses: [podAddress(w).v4, podAddress(w).v6],
      node: `w${w}`,
    })),
    uplinks: gateways.flatMap((g) => gatewayUplinks(g, whoamiPort)),
    balancing: { mode: 'Weighted' },
    timeouts: {},
    steering: {
      tunnel,
      markMask: 0x10,
      sources: workers.map((w) => ({ node: `w${w}`, addresses: underlay(workerAddress(w)) })),
    },
  };
}

function nodeConfig(w: number): Record<string, unknown> {
  return {
    version: 1,
    node: `w${w}`,
    hash: `node-${w}-${++generation}`,
    markMask: 0xe0,
    gateways: [
      {
        gateway: 'egress',
        tunnel,
        selection: 'Pod',
        associationPort: 7740,
        healthPort: 7741,
        bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
        pods: [{ namespace: 'shop', name: `web-${w}`, addresses: [podAddress(w).v4, podAddress(w).v6] }],
        peers: gateways.map((g) => ({ node: `g${g}`, addresses: underlay(gatewayAddress(g)) })),
      },
    ],
  };
}

/** The gateway node the pod on worker w is steered to while both are up. */
const chosenFor = (w: number) => Number(rendezvous(`shop/web-${w}`, ['g1', 'g2'])!.slice(1));

async function statusOf(ns: string, port: number): Promise<Record<string, unknown>> {
  const { stdout } = await c.exec(ns, ['curl', '-sf', `http://127.0.0.1:${port}/status`]);
  return JSON.parse(stdout) as Record<string, unknown>;
}

/** Writes every config and waits until every agent applied its own. */
async function applyAll(): Promise<void> {
  const gw = gatewayConfig();
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(gw));
  const nodes = workers.map((w) => nodeConfig(w));
  for (const w of workers) await writeFile(join(dir, `w${w}.json`), JSON.stringify(nodes[w - 1]));
  for (const g of gateways) {
    await until(`g${g} applied ${String(gw.hash)}`, async () =>
      (await statusOf(c.gateway(g), 7741)).appliedHash === gw.hash ? true : undefined,
    );
  }
  for (const w of workers) {
    if (!agents.has(`w${w}`)) continue;
    // Applied, and every gateway node seen up by its /steering.
    await until(`w${w} applied`, async () => {
      const status = await statusOf(c.worker(w), 7742);
      const peers = (status.peers ?? []) as Array<{ up: boolean }>;
      return status.appliedHash === nodes[w - 1]!.hash && peers.length && peers.every((p) => p.up) ? true : undefined;
    });
  }
}

function start(name: string, ns: string, argv: string[]): void {
  const log = openSync(join(dir, `${name}.log`), 'a');
  agents.set(name, c.spawn(ns, [process.execPath, main, ...argv], { stdio: ['ignore', log, log] }));
  closeSync(log);
}

const uplinkAddresses = (g: number) => new Set(isps.flatMap((i) => [uplinkAddress(g, i).v4, uplinkAddress(g, i).v6]));
const seenAs = (answers: string[]) => new Set(answers.map((a) => a.split(' ')[0]!));

beforeAll(async () => {
  c = await createCluster();
  dir = await mkdtemp(join(tmpdir(), 'naat-steering-e2e-'));
  const tlsDir = writeClusterTls(dir, makeTestCa());
  servers.push(await startWhoami(c, whoamiPort));
  ftp = await startFtpServer(c);
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(gatewayConfig()));
  for (const w of workers) await writeFile(join(dir, `w${w}.json`), JSON.stringify(nodeConfig(w)));
  for (const g of gateways) {
    const config = ['--config', join(dir, 'gateway.json'), '--node', `g${g}`, '--reload-ms', '100'];
    // Where the operator's DaemonSet has it listen: the node agents ask every gateway node's
    // /steering, over whichever family the underlay has, whether it takes flows.
    const listen = renderedListenArgs({ health: 7741, metrics: 7749 });
    const state = ['--state-dir', join(dir, `g${g}-state`), '--tls-dir', tlsDir(`g${g}`)];
    start(`g${g}`, c.gateway(g), ['run', ...config, ...listen, ...state]);
  }
  for (const w of workers) {
    const config = ['--config', join(dir, `w${w}.json`), '--node', `w${w}`, '--reload-ms', '100'];
    const state = ['--state-dir', join(dir, `w${w}-state`), '--tls-dir', tlsDir(`w${w}`)];
    start(`w${w}`, c.worker(w), ['node', ...config, ...state]);
  }
  await applyAll();
  for (const g of gateways) {
    await until(`g${g} healthy`, async () => {
      const uplinks = (await statusOf(c.gateway(g), 7741)).uplinks as Array<{ healthy: boolean }>;
      return uplinks.length && uplinks.every((u) => u.healthy) ? true : undefined;
    });
  }
}, 120_000);

afterAll(async () => {
  for (const agent of agents.values()) await stopProcess(agent);
  for (const s of servers) await s.stop();
  await ftp?.stop();
  await c?.destroy();
  await printAgentErrors(dir, [...workers.map((w) => `w${w}`), ...gateways.map((g) => `g${g}`)]);
  await rm(dir, { recursive: true, force: true });
});

describe('cluster-wide egress', () => {
  it("takes every worker's pod out through its gateway node's uplinks, past the CNI's masquerade", async () => {
    for (const w of workers) {
      const g = chosenFor(w);
      for (const [address, transport] of [
        [server.v4, 'tcp'],
        [server.v6, 'tcp'],
        [server.v4, 'udp'],
        [server.v6, 'udp'],
      ] as const) {
        const result = await connectMany(c, c.pod(w), address, whoamiPort, 20, { transport, concurrency: 10 });
        expect({ worker: w, address, transport, failures: result.failures, error: result.error }).toEqual({
          worker: w,
          address,
          transport,
          failures: 0,
          error: undefined,
        });
        for (const seen of seenAs(result.answers)) expect(uplinkAddresses(g)).toContain(seen);
        // Balanced over the gateway node's two uplinks.
        if (transport === 'tcp') expect(seenAs(result.answers).size).toBe(2);
      }
      // The gateway saw the pod itself, whatever form the worker's masquerade has.
      const { stdout } = await c.exec(c.gateway(g), ['conntrack', '-L', '-s', podAddress(w).v4]);
      expect({ masquerade: masqueradeOf[w], seenByGateway: stdout.includes(`src=${podAddress(w).v4}`) }).toEqual({
        masquerade: masqueradeOf[w],
        seenByGateway: true,
      });
    }
    expect(await c.serverPacketsFromInside()).toBe(0);
  });

  it('carries ICMP of both families and FTP in active and passive mode', async () => {
    for (const w of workers) {
      expect(await ping(c, c.pod(w), server.v4, { identifier: 100 + w, count: 2 })).toBe(true);
      expect(await ping(c, c.pod(w), server.v6, { identifier: 200 + w, count: 2 })).toBe(true);
    }
    expect(await fetchFtp(c, c.pod(1), server.v4)).toEqual(ftp.content);
    expect(await fetchFtp(c, c.pod(2), server.v4, { active: true })).toEqual(ftp.content);
    expect(await fetchFtp(c, c.pod(3), server.v6, { active: true })).toEqual(ftp.content);
    expect(await fetchFtp(c, c.pod(1), server.v6)).toEqual(ftp.content);
    expect(await c.serverPacketsFromInside()).toBe(0);
  });

  it('holds with strict reverse-path filtering and with conntrack-INVALID packets dropped on every node', async () => {
    for (const ns of [...c.ns.workers, ...c.ns.gateways]) {
      const { stdout } = await c.exec(ns, ['sysctl', '-n', 'net.ipv4.conf.all.rp_filter']);
      expect(stdout.trim()).toBe('1');
      const { stdout: rules } = await c.exec(ns, ['nft', 'list', 'table', 'inet', 'kube-proxy-like']);
      expect({ ns, dropped: /packets (\d+)/.exec(rules)?.[1] }).toEqual({ ns, dropped: '0' });
    }
  });

  it('answers a packet one byte too large for the tunnel with an ICMP error, and passes the largest', async () => {
    await mtuBoundary(1450);
  });

  it('clamps the MSS of TCP SYNs both ways', async () => {
    // Counted where the SYNs leave the tunnel; the server would also count the gateway agents'
    // own health probes, which never pass it.
    const mssRules = (chain: string) => `table inet mss {
  counter over {}
  ${chain}
}
`;
    // The pods' SYNs as they come out of the tunnel on the gateway nodes.
    const fromTunnel = `chain forward {
    type filter hook forward priority filter;
    iifname "naatg7700" meta nfproto ipv4 tcp flags syn tcp option maxseg size > 1410 counter name over
    iifname "naatg7700" meta nfproto ipv6 tcp flags syn tcp option maxseg size > 1390 counter name over
  }`;
    // The servers' answers as the pods get them.
    const toPod = `chain input {
    type filter hook input priority raw;
    meta nfproto ipv4 tcp flags & (syn | ack) == syn | ack tcp option maxseg size > 1410 counter name over
    meta nfproto ipv6 tcp flags & (syn | ack) == syn | ack tcp option maxseg size > 1390 counter name over
  }`;
    const counted = [...c.ns.gateways, ...c.ns.pods];
    for (const g of gateways) await c.exec(c.gateway(g), ['nft', '-f', '-'], { input: mssRules(fromTunnel) });
    for (const w of workers) {
      await c.exec(c.pod(w), ['nft', '-f', '-'], { input: mssRules(toPod) });
      for (const address of [server.v4, server.v6]) {
        expect((await connectMany(c, c.pod(w), address, whoamiPort, 5)).failures).toBe(0);
      }
    }
    for (const ns of counted) {
      const { stdout } = await c.exec(ns, ['nft', 'list', 'counter', 'inet', 'mss', 'over']);
      expect({ ns, over: /packets (\d+)/.exec(stdout)?.[1] }).toEqual({ ns, over: '0' });
    }
  });

  it('tunnels over an IPv6-only underlay too, its MTU 20 bytes smaller', async () => {
    underlayFamilies = ['v6'];
    try {
      // Every node agent knows the gateway nodes by their IPv6 addresses alone. A peer whose
      // address changed keeps its state until its probes fail twice (0.4-0.6 s), so the gateway
      // nodes must still be up well after that: the gateway agents, started with the listen flags
      // the operator's DaemonSet gives them, answer /steering over IPv6.
      await applyAll();
      await new Promise((resolve) => setTimeout(resolve, 1500));
      for (const w of workers) {
        await until(`w${w} sees every gateway node up over IPv6`, async () => {
          const { peers } = (await statusOf(c.worker(w), 7742)) as { peers: Array<{ up: boolean }> };
          return peers.length === gateways.length && peers.every((p) => p.up) ? true : undefined;
        });
      }
      expect(renderedListenArgs({ health: 7741, metrics: 7749 })).toEqual([
        '--listen',
        ':7741',
        '--metrics-listen',
        ':7749',
      ]);
      const { stdout } = await c.exec(c.worker(1), ['ip', '-d', '-j', 'link', 'show', 'naatn7700']);
      expect(stdout).toContain(`"local6":"${workerAddress(1).v6}"`);
      for (const w of workers) {
        for (const address of [server.v4, server.v6]) {
          const result = await connectMany(c, c.pod(w), address, whoamiPort, 10);
          expect({ w, address, failures: result.failures }).toEqual({ w, address, failures: 0 });
        }
      }
      await mtuBoundary(1430);
    } finally {
      underlayFamilies = ['v4', 'v6'];
      await applyAll();
    }
    expect(await c.serverPacketsFromInside()).toBe(0);
  });

  it('moves new flows to the other gateway node within a second of one going down', async () => {
    // The worker's agent is taken over by one in this process, whose peer states the test sets
    // (a peer monitor's place); it finds the kernel as the program left it.
    const w = 3;
    const first = chosenFor(w);
    const other = first === 1 ? 2 : 1;
    await stopProcess(agents.get(`w${w}`));
    agents.delete(`w${w}`);
    const peers = new SettablePeers([`g${first}`, `g${other}`]);
    const ns = c.worker(w);
    const inNs = (tool: string) => ['ip', 'netns', 'exec', ns, tool];
    const agent = new NodeAgent({
      nft: new ExecNftables(inNs('nft'), undefined, nodeTableName),
      tunnels: new ExecTunnelKernel(
        nodeTunnelOwnership,
        async (path, value) => void (await c.exec(ns, ['sysctl', '-q', '-w', `${path}=${value}`])),
        inNs('ip'),
        inNs('bridge'),
      ),
      deleteFlows: (value, mask) => new ExecConntrack(inNs('conntrack')).deleteMarked(value, mask),
      stateDir: join(dir, `w${w}-state`),
      peerStates: () => peers,
      log: { debug: () => {}, info: () => {}, warn: () => {}, error: (msg, fields) => console.log(msg, fields) },
    });
    try {
      await agent.start(JSON.parse(await readFile(join(dir, `w${w}.json`), 'utf8')));
      const before = await connectMany(c, c.pod(w), server.v4, whoamiPort, 5);
      expect(before.failures).toBe(0);
      for (const seen of seenAs(before.answers)) expect(uplinkAddresses(first)).toContain(seen);

      await c.setGatewayLink(first, false);
      const down = performance.now();
      peers.set([`g${other}`]);
      let movedAfterMs: number | undefined;
      while (performance.now() - down < 5000) {
        const attempt = await connectMany(c, c.pod(w), server.v4, whoamiPort, 1, { timeoutMs: 200 });
        if (attempt.failures === 0 && uplinkAddresses(other).has(attempt.answers[0]!.split(' ')[0]!)) {
          movedAfterMs = performance.now() - down;
          break;
        }
      }
      console.log(`new flows moved to the other gateway node after ${movedAfterMs?.toFixed(0)} ms`);
      expect(movedAfterMs).toBeLessThanOrEqual(1000);
      const after = await connectMany(c, c.pod(w), server.v6, whoamiPort, 10);
      expect(after.failures).toBe(0);
      for (const seen of seenAs(after.answers)) expect(uplinkAddresses(other)).toContain(seen);
    } finally {
      await c.setGatewayLink(first, true);
      await agent.stop();
    }
    expect(await c.serverPacketsFromInside()).toBe(0);
  });

  it('leaves nothing of naat in any node after removal', async () => {
    for (const [name, agent] of agents) {
      await stopProcess(agent);
      agents.delete(name);
    }
    for (const w of workers) {
      await c.exec(c.worker(w), [process.execPath, main, 'node', '--remove', '--state-dir', join(dir, `w${w}-state`)]);
    }
    for (const g of gateways) {
      await c.exec(c.gateway(g), [process.execPath, main, 'remove', '--state-dir', join(dir, `g${g}-state`)]);
    }
    for (const ns of [...c.ns.workers, ...c.ns.gateways]) {
      const tables = (await c.exec(ns, ['nft', 'list', 'tables'])).stdout;
      expect({ ns, tables: tables.includes('naat') }).toEqual({ ns, tables: false });
      const links = (await c.exec(ns, ['ip', '-o', 'link', 'show'])).stdout;
      expect({ ns, devices: /naat[ng]\d/.test(links) }).toEqual({ ns, devices: false });
      for (const family of ['-4', '-6']) {
        const rules = (await c.exec(ns, ['ip', family, 'rule', 'show'])).stdout;
        expect({ ns, rules: /^(7689|7690|7699|7700|779\d|7800):/m.test(rules) }).toEqual({ ns, rules: false });
        const routes = (await c.exec(ns, ['ip', family, 'route', 'show', 'table', 'all'])).stdout;
        expect({ ns, routes: /table (7690|77\d\d|78\d\d)\b/.test(routes) }).toEqual({ ns, routes: false });
      }
    }
  });
});

/**
 * From the pod on worker 1, to the server: the largest ICMP echo and UDP datagram with DF that
 * fit the tunnel's MTU pass, and one byte more brings an ICMP error back to the pod (fragmentation
 * needed, packet too big), for both families.
 */
async function mtuBoundary(mtu: number): Promise<void> {
  const pod = c.pod(1);
  for (const [address, headers] of [
    [server.v4, 28],
    [server.v6, 48],
  ] as const) {
    const largest = mtu - headers;
    const fits = await c.exec(pod, ['ping', '-n', '-c', '1', '-W', '2', '-M', 'do', '-s', String(largest), address]);
    expect(fits.stdout).toContain('1 received');
    const over = await c
      .exec(pod, ['ping', '-n', '-c', '1', '-W', '2', '-M', 'do', '-s', String(largest + 1), address])
      .then(
        (r) => r.stdout,
        (e: { stdout: string }) => e.stdout,
      );
    expect(over).toMatch(new RegExp(`mtu ?[=:] ?${mtu}`, 'i'));
    // Routes cache the path MTU the error told; flushing them makes the UDP test start afresh.
    await c.exec(pod, ['ip', address.includes(':') ? '-6' : '-4', 'route', 'flush', 'cache']);
    expect(await udpWithDf(pod, address, largest)).toBe('answered');
    expect(await udpWithDf(pod, address, largest + 1)).toBe(`too big: ${mtu}`);
  }
}

/** Sends one UDP datagram of `size` bytes with DF set to the whoami server; what came back. */
async function udpWithDf(ns: string, address: string, size: number): Promise<string> {
  const program = `
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
v6 = ':' in host
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, 23, 2)  # IPV6_MTU_DISCOVER = IPV6_PMTUDISC_DO
    s.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR
else:
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
    s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR
s.connect((host, port))
s.settimeout(2)
s.send(b'x' * size)
try:
    s.recv(100)
    print('answered')
except socket.timeout:
    print('no answer')
except OSError as e:
    print('too big: %d' % (s.getsockopt(socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP, 24 if v6 else 14)))
`;
  const { stdout } = await c.exec(ns, ['python3', '-c', program, address, String(whoamiPort), String(size)]);
  return stdout.trim();
}

/** Peer states the test sets, standing in for a monitor of the gateway nodes. */
class SettablePeers implements PeerStates {
  #up: Set<string>;
  #listeners: Array<() => void> = [];
  constructor(up: string[]) {
    this.#up = new Set(up);
  }
  up(): ReadonlySet<string> {
    return this.#up;
  }
  onChange(listener: () => void): void {
    this.#listeners.push(listener);
  }
  set(up: string[]): void {
    this.#up = new Set(up);
    for (const listener of this.#listeners) listener();
  }
}
