// Established flows survive the loss of the gateway node that carried them: the flows translated
// to a failover address on node A are replicated to node B over mutual TLS (dataplane/failover),
// A is powered off (its links down, its replication SIGKILLed), and B injects the replica, takes
// the address and announces it, and the client's route moves to B. Every TCP stream goes on with
// the same server-side 4-tuple and every byte intact; the UDP gap is reported.
//
//   client ── in ──┬── a (out: 192.0.2.2, failover 192.0.2.100) ──┬── out ── server
//                  └── b (out: 192.0.2.3)                        ──┘
//
// The test writes the gateway nodes' SNAT rules and claims the address itself (ip addr add, a
// gratuitous ARP, an unsolicited NA): the product's claim is another part of the gateway.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseConntrackLine } from '../../dataplane/conntrack.ts';
import { injectFlows, type InjectResult } from '../../dataplane/failover/flow-inject.ts';
import type { ReplicaFlow } from '../../dataplane/failover/flow-replica.ts';
import { writeTlsDir, makeTestCa } from '../tls.ts';
import {
  baseSettings,
  deleteNamespace,
  inNamespace,
  ipBatch,
  linksUp,
  run,
  stopProcess,
  unusedPrefix,
  until,
} from './topology.ts';

const programs = join(import.meta.dirname, 'programs');
const flowStreams = join(programs, 'flow-streams.ts');
const healthPort = 9091;
const inside = { client: ['10.9.0.1', 'fd00:9::1'], a: ['10.9.0.2', 'fd00:9::2'], b: ['10.9.0.3', 'fd00:9::3'] };
const outside = {
  server: ['192.0.2.1', '2001:db8:2::1'],
  a: ['192.0.2.2', '2001:db8:2::2'],
  b: ['192.0.2.3', '2001:db8:2::3'],
};
const failover = { v4: '192.0.2.100', v6: '2001:db8:2::100' };
const tcpPort = 7000;
const udpPort = 7001;
const streams = { v4: 20, v6: 5 };

/** What both gateway nodes SNAT the client's flows with: to the failover address, ports 20000-29999, uplink 1's mark. */
const gatewayRules = `table inet failover-test {
  chain post {
    type nat hook postrouting priority srcnat
    oifname "out" ct mark set 1
    oifname "out" ip saddr 10.9.0.0/24 meta l4proto { tcp, udp } snat ip to ${failover.v4}:20000-29999
    oifname "out" ip6 saddr fd00:9::/64 meta l4proto { tcp, udp } snat ip6 to [${failover.v6}]:20000-29999
  }
}
`;

/**
 * An unsolicited neighbour advertisement of `address` (override set) from `device`, to all nodes:
 * the IPv6 counterpart of `arping -U`. The kernel fills in the ICMPv6 checksum of a raw socket.
 */
const unsolicitedNa = (device: string, address: string) => `python3 - <<'EOF'
import socket
mac = bytes.fromhex(open('/sys/class/net/${device}/address').read().strip().replace(':', ''))
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'${device}')
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.bind(('${address}', 0))
na = bytes([136, 0, 0, 0, 0x20, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, '${address}') + bytes([2, 1]) + mac
s.sendto(na, ('ff02::1', 0, 0, socket.if_nametoindex('${device}')))
EOF`;

/** A program in a namespace that answers a line of stdin with a line of stdout. */
class Console {
  readonly child: ChildProcess;
  readonly #lines: string[] = [];
  readonly #waiting: ((line: string) => void)[] = [];
  stderr = '';

  constructor(ns: string, argv: string[]) {
    this.child = spawn('ip', ['netns', 'exec', ns, process.execPath, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (this.stderr += chunk));
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const waiter = this.#waiting.shift();
      if (waiter) waiter(line);
      else this.#lines.push(line);
    });
  }

  next(timeoutMs = 20_000): Promise<string> {
    const line = this.#lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no answer; stderr: ${this.stderr.slice(-2000)}`)), timeoutMs);
      this.#waiting.push((l) => {
        clearTimeout(timer);
        resolve(l);
      });
    });
  }

  /** The lines printed so far and not read. */
  drain(): string[] {
    return this.#lines.splice(0);
  }

  async ask<T>(line: string): Promise<T> {
    this.child.stdin!.write(`${line}\n`);
    return JSON.parse(await this.next()) as T;
  }
}

interface StreamsReport {
  tcp: { port: number; received: number; error?: string }[];
  udp: { sent: number; received: number; maxGapMs: number; gapEndedAt: number };
}
interface ReplicationState {
  connected: string[];
  replica: Record<string, number>;
  owned: Record<string, number>;
  refused: number;
}

let prefix: string;
let dir: string;
const ns = (name: string) => `${prefix}${name}`;
const consoles: Console[] = [];

async function topology(): Promise<void> {
  for (const name of ['sw', 'client', 'a', 'b', 'server']) {
    await run(['ip', 'netns', 'add', ns(name)]);
    await baseSettings(ns(name), name === 'a' || name === 'b');
  }
  await ipBatch(ns('sw'), ['link add in type bridge', 'link add out type bridge', 'link set in up', 'link set out up']);
  const wire = async (name: string, device: string, bridge: string, addresses: string[]) => {
    const port = `${name}-${device}`;
    await run(['ip', 'link', 'add', device, 'netns', ns(name), 'type', 'veth', 'peer', port, 'netns', ns('sw')]);
    await ipBatch(ns('sw'), [`link set ${port} master ${bridge}`, `link set ${port} up`]);
    await ipBatch(ns(name), [
      ...addresses.map((a) => `address add ${a}/${a.includes(':') ? 64 : 24} dev ${device}`),
      `link set ${device} up`,
    ]);
  };
  await wire('client', 'eth0', 'in', inside.client);
  await wire('a', 'in', 'in', inside.a);
  await wire('b', 'in', 'in', inside.b);
  await wire('a', 'out', 'out', outside.a);
  await wire('b', 'out', 'out', outside.b);
  await wire('server', 'eth0', 'out', outside.server);
  await ipBatch(ns('client'), [`route add default via ${inside.a[0]}`, `route add default via ${inside.a[1]}`]);
  for (const name of ['a', 'b']) await inNamespace(ns(name), ['nft', '-f', '-'], { input: gatewayRules });
  // The failover addresses live on A's uplink.
  await ipBatch(ns('a'), [`address add ${failover.v4}/32 dev out`, `address add ${failover.v6}/128 dev out nodad`]);
  for (const name of ['sw', 'client', 'a', 'b', 'server']) await linksUp(ns(name));
}

function replication(name: 'a' | 'b', owned: string[]): Console {
  const other = name === 'a' ? 'b' : 'a';
  const options = {
    node: name,
    tlsDir: join(dir, name),
    listen: { host: inside[name][0], port: healthPort },
    peers: [{ node: other, addresses: [inside[other][0]] }],
    addresses: [failover.v4, failover.v6],
    owned,
    refreshMs: 1000,
  };
  const c = new Console(ns(name), [join(programs, 'flow-replication.ts'), JSON.stringify(options)]);
  consoles.push(c);
  return c;
}

beforeAll(async () => {
  prefix = await unusedPrefix();
  dir = await mkdtemp(join(tmpdir(), 'naat-failover-flows-'));
  const ca = makeTestCa();
  writeTlsDir(join(dir, 'a'), ca, 'a', [inside.a[0]!]);
  writeTlsDir(join(dir, 'b'), ca, 'b', [inside.b[0]!]);
  await topology();
});

afterAll(async () => {
  for (const c of consoles.reverse()) await stopProcess(c.child);
  for (const name of ['client', 'a', 'b', 'server', 'sw']) await deleteNamespace(ns(name));
  await rm(dir, { recursive: true, force: true });
});

describe('established flows through a gateway node that is powered off', () => {
  it('go on through the node that takes over its failover address, every byte intact', async () => {
    const server = new Console(ns('server'), [flowStreams, 'serve', String(tcpPort), String(udpPort)]);
    consoles.push(server);
    expect(await server.next()).toBe('listening');
    const a = replication('a', [failover.v4, failover.v6]);
    const b = replication('b', []);
    expect([await a.next(), await b.next()]).toEqual(['ready', 'ready']);
    await until('B following A', async () =>
      (await b.ask<ReplicationState>('state')).connected.includes('a') ? true : undefined,
    );

    const client = (server: string, count: number) =>
      new Console(ns('client'), [flowStreams, 'run', server, String(tcpPort), String(count), String(udpPort)]);
    const clients = { v4: client(outside.server[0]!, streams.v4), v6: client(outside.server[1]!, streams.v6) };
    consoles.push(clients.v4, clients.v6);
    expect([await clients.v4.next(), await clients.v6.next()]).toEqual(['running', 'running']);
    // Every flow is in B's replica: the TCP streams and the UDP flow of each family.
    const replicated = await until('the flows in B’s replica', async () => {
      const state = await b.ask<ReplicationState>('state');
      const full = state.replica[failover.v4] === streams.v4 + 1 && state.replica[failover.v6] === streams.v6 + 1;
      return full ? state : undefined;
    });
    expect(replicated.refused).toBe(0);
    const before = {
      v4: await clients.v4.ask<StreamsReport>('report'),
      v6: await clients.v6.ask<StreamsReport>('report'),
    };
    for (const report of Object.values(before)) {
      expect(report.tcp.filter((s) => s.error)).toEqual([]);
      expect(report.udp.received).toBeGreaterThan(0);
    }
    const opened = server.drain().map((line) => JSON.parse(line) as Record<string, string>);
    const tcpSeen = opened.filter((e) => e.tcp).map((e) => e.tcp);
    const udpSeen = opened.filter((e) => e.udp).map((e) => e.udp);
    expect(tcpSeen).toHaveLength(streams.v4 + streams.v6);
    expect(udpSeen.sort()).toEqual(
      [expect.stringMatching(/^192\.0\.2\.100:2\d{4}$/), expect.stringMatching(/^\[2001:db8:2::100\]:2\d{4}$/)].sort(),
    );

    // A is powered off: its links go down and whatever ran on it is killed.
    const lost = Date.now();
    await ipBatch(ns('a'), ['link set in down', 'link set out down']);
    await stopProcess(a.child);

    // B takes over: the replica first, then the address, announced; then the client's route.
    const injected = {
      v4: await b.ask<InjectResult>(`inject ${failover.v4}`),
      v6: await b.ask<InjectResult>(`inject ${failover.v6}`),
    };
    await ipBatch(ns('b'), [`address add ${failover.v4}/32 dev out`, `address add ${failover.v6}/128 dev out nodad`]);
    // arping sends at once but then waits out its interval before it exits.
    const announced = inNamespace(ns('b'), ['arping', '-q', '-U', '-c', '1', '-I', 'out', failover.v4]);
    await inNamespace(ns('b'), ['sh', '-c', unsolicitedNa('out', failover.v6)]);
    await ipBatch(ns('client'), [
      `route replace default via ${inside.b[0]}`,
      `route replace default via ${inside.b[1]}`,
    ]);
    const tookOver = Date.now() - lost;
    await announced;

    // Every stream moves on past where it was; none broke, and the server saw no new flow.
    const after = await until(
      'every stream going on through B',
      async () => {
        const reports = {
          v4: await clients.v4.ask<StreamsReport>('report'),
          v6: await clients.v6.ask<StreamsReport>('report'),
        };
        const moved = (family: 'v4' | 'v6') =>
          reports[family].tcp.every(
            (s, i) => s.error !== undefined || s.received > before[family].tcp[i]!.received + 4096,
          );
        return moved('v4') && moved('v6') ? reports : undefined;
      },
      30_000,
    );
    for (const family of ['v4', 'v6'] as const) {
      expect(after[family].tcp.filter((s) => s.error)).toEqual([]);
      expect(after[family].tcp.map((s) => s.port)).toEqual(before[family].tcp.map((s) => s.port));
    }
    expect(server.drain()).toEqual([]);
    // B translates each TCP flow to the address and port the server has seen from the start.
    const translated: string[] = [];
    for (const family of ['ipv4', 'ipv6']) {
      const { stdout } = await inNamespace(ns('b'), [
        'conntrack',
        '-L',
        '-f',
        family,
        '-p',
        'tcp',
        '-o',
        'id,extended',
      ]);
      for (const line of stdout.split('\n')) {
        const flow = parseConntrackLine(line)?.flow;
        if (flow?.destinationPort !== tcpPort) continue;
        const { mappedAddress: a, mappedPort: p } = flow;
        translated.push(a.includes(':') ? `[${a}]:${p}` : `${a}:${p}`);
      }
    }
    expect(translated.sort()).toEqual(tcpSeen.sort());
    expect(injected.v4.injected).toBe(streams.v4 + 1);
    expect(injected.v6.injected).toBe(streams.v6 + 1);
    console.log(
      JSON.stringify({
        injected,
        tookOverMs: tookOver,
        udpGapMs: { v4: after.v4.udp.maxGapMs, v6: after.v6.udp.maxGapMs },
        udp: { v4: after.v4.udp, v6: after.v6.udp },
      }),
    );
  });
});

describe('injecting a replica', () => {
  const flows = (count: number, from = 0): ReplicaFlow[] =>
    Array.from({ length: count }, (_, n) => ({
      family: 4,
      protocol: 'tcp',
      source: `10.10.${(from + n) >> 8}.${(from + n) & 255}`,
      sourcePort: 40_000,
      destination: outside.server[0]!,
      destinationPort: 443,
      address: failover.v4,
      port: 20_000 + from + n,
      mark: 1,
      timeoutSeconds: 300,
    }));

  it('loads 1,000 and 10,000 entries in one conntrack -R each, and the rest when some are there already', async () => {
    const figures: Record<string, InjectResult> = {};
    for (const count of [1_000, 10_000]) {
      const name = ns(`load${count}`);
      await run(['ip', 'netns', 'add', name]);
      try {
        const conntrack = ['ip', 'netns', 'exec', name, 'conntrack'];
        figures[count] = await injectFlows(flows(count), conntrack);
        expect(figures[count]).toMatchObject({ injected: count, loads: 1 });
        // Again, with 5 more: the first load stops at the first entry there; the second loads the 5.
        figures[`${count} again`] = await injectFlows(flows(count + 5), conntrack);
        expect(figures[`${count} again`]).toMatchObject({ injected: count + 5, clashing: 0, loads: 2 });
        const { stdout } = await inNamespace(name, ['conntrack', '-C']);
        expect(Number(stdout.trim())).toBe(count + 5);
      } finally {
        await deleteNamespace(name);
      }
    }
    console.log(JSON.stringify(figures));
  });
});
