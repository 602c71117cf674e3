// The dataplane agent as users run it (`node dataplane/main.ts run --config FILE`), on the gateway
// node of a network-namespace topology: real nftables, conntrack, policy routing and traffic from
// pods through three ISPs to a server that records how it saw each client.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { parseConntrackLine } from '../../dataplane/conntrack.ts';
import {
  createTopology,
  podAddress,
  server,
  stopProcess,
  until,
  uplinkAddress,
  uplinkNextHop,
  type DualStack,
  type Topology,
} from './topology.ts';
import {
  connectMany,
  fetchFtp,
  ping,
  startFtpServer,
  startStreamServer,
  startTransfer,
  startWhoami,
  type FtpServer,
  type Server,
} from './traffic.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const whoamiPort = 9000;
const streamPort = 9100;

let t: Topology;
let dir: string;
let agent: ChildProcess | undefined;
const servers: Server[] = [];
let generation = 0;

function config(change: (c: Record<string, unknown>) => void = () => {}): Record<string, unknown> {
  const uplink = (n: number, weight: number) => ({
    name: `isp${n}`,
    interface: `up${n}`,
    nextHop: { ipv4: uplinkNextHop(n).v4, ipv6: uplinkNextHop(n).v6 },
    snat: { addresses: [uplinkAddress(n).v4, uplinkAddress(n).v6] },
    weight,
    healthCheck: {
      targets: [server.v4],
      protocol: 'TCP',
      port: whoamiPort,
      intervalMs: 150,
      timeoutMs: 100,
      failureThreshold: 2,
      successThreshold: 2,
    },
  });
  const c: Record<string, unknown> = {
    version: 1,
    gateway: 'e2e',
    hash: `e2e-${++generation}`,
    sources: ['10.244.0.0/16', 'fd00:244::/32'],
    bypass: [],
    uplinks: [uplink(1, 1), uplink(2, 1), uplink(3, 2)],
    balancing: { mode: 'Weighted' },
    timeouts: { udpSeconds: 45 },
    defaultAction: 'Allow',
    rules: [
      {
        policy: 'e2e/deny',
        rule: 'no-2323',
        priority: 1,
        sources: ['10.244.0.0/16', 'fd00:244::/32'],
        destinations: [{ protocol: 'TCP', ports: [{ port: 2323 }] }],
        action: 'Deny',
      },
    ],
  };
  change(c);
  return c;
}

async function status(): Promise<AgentReport> {
  const { stdout } = await t.exec(t.ns.gw, ['curl', '-sf', 'http://127.0.0.1:7741/status']);
  return JSON.parse(stdout);
}

/** Writes the config file and waits until the agent reports it applied. */
async function apply(c: Record<string, unknown>): Promise<void> {
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(c));
  await until(`config ${String(c.hash)}`, async () => ((await status()).appliedHash === c.hash ? true : undefined));
}

/** Starts the agent as users do; its log goes to agent.log beside the config, kept when a test fails. */
function startAgent(): ChildProcess {
  const log = openSync(join(dir, 'agent.log'), 'a');
  const argv = ['run', '--config', join(dir, 'gateway.json'), '--node', 'gw', '--state-dir', join(dir, 'state')];
  const child = t.spawn(t.ns.gw, [process.execPath, main, ...argv, '--reload-ms', '100'], {
    stdio: ['ignore', log, log],
  });
  closeSync(log);
  return child;
}

let ftp: FtpServer | undefined;
/** The server's FTP service, started by the first test that needs it. */
async function ftpServer(): Promise<FtpServer> {
  if (!ftp) {
    ftp = await startFtpServer(t);
    servers.push(ftp);
  }
  return ftp;
}

/**
 * Strict reverse-path filtering on the gateway node: IPv4's `rp_filter=1`, and for IPv6, which
 * has no such setting, the nftables check firewalld installs (`fib saddr . mark . iif`).
 */
async function strictReversePath(on: boolean): Promise<void> {
  await t.exec(t.ns.gw, ['sysctl', '-q', '-w', `net.ipv4.conf.all.rp_filter=${on ? 1 : 0}`]);
  const table = on
    ? `table inet rpfilter {
  chain prerouting {
    type filter hook prerouting priority filter + 10; policy accept;
    icmpv6 type { nd-router-advert, nd-neighbor-solicit } accept
    meta nfproto ipv6 fib saddr . mark . iif oif missing counter drop
  }
}
`
    : 'table inet rpfilter {}\ndelete table inet rpfilter\n';
  await t.exec(t.ns.gw, ['nft', '-f', '-'], { input: table });
}

const families = ['v4', 'v6'] as const;

/** TCP and UDP from a pod to a whoami server: every answer, and what the server saw of it. */
async function whoamiBothWays(pod: string, address: string, count = 20): Promise<string[]> {
  const seen: string[] = [];
  for (const transport of ['tcp', 'udp'] as const) {
    const { answers, failures, error } = await connectMany(t, pod, address, whoamiPort, count, {
      transport,
      timeoutMs: 1000,
    });
    expect({ transport, address, failures, error }).toEqual({ transport, address, failures: 0, error: undefined });
    seen.push(...answers.map((a) => a.split(' ')[0]!));
  }
  return seen;
}

/**
 * Deletes the conntrack entries of pod 1's flows, so that UDP and ICMP flows that linger after a
 * test (45 s, 30 s) do not count as its open flows in the tests after it (SourceSticky).
 */
async function forgetPodFlows(): Promise<void> {
  for (const [family, source] of [
    ['ipv4', podAddress(1).v4],
    ['ipv6', podAddress(1).v6],
  ]) {
    await t.exec(t.ns.gw, ['conntrack', '-D', '-f', family!, '-s', source!]).catch(() => undefined);
  }
}

async function healthyAll(): Promise<void> {
  await until('every uplink healthy', async () =>
    (await status()).uplinks.every((u) => u.healthy) ? true : undefined,
  );
}

/** Which uplink address the server saw for each answer. */
function countByAddress(answers: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const answer of answers) {
    const address = answer.split(' ')[0]!;
    counts[address] = (counts[address] ?? 0) + 1;
  }
  return counts;
}

beforeAll(async () => {
  t = await createTopology({ pods: 2, uplinks: 3 });
  dir = await mkdtemp(join(tmpdir(), 'naat-dataplane-e2e-'));
  servers.push(await startWhoami(t, whoamiPort), await startStreamServer(t, streamPort));
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(config()));
  // Someone else's table, which naat must leave alone.
  await t.exec(t.ns.gw, [
    'nft',
    'add table inet other; add chain inet other c { type filter hook forward priority 0; }',
  ]);
  agent = startAgent();
  await until('the agent', async () => ((await status()).appliedHash ? true : undefined));
  await healthyAll();
}, 60_000);

afterAll(async () => {
  await stopProcess(agent);
  for (const s of servers) await s.stop();
  await t?.destroy();
  const log = await readFile(join(dir, 'agent.log'), 'utf8').catch(() => '');
  const errors = log.split('\n').filter((line) => line && !line.includes('"level":"info"'));
  if (errors.length) console.log(`the agent logged errors:\n${errors.join('\n')}`);
  await rm(dir, { recursive: true, force: true });
});

describe('the dataplane agent on a gateway node', () => {
  it('sends new flows to the least loaded uplinks in LeastLoaded mode', async () => {
    // First, while no other flows count: load isp1 with long transfers that a rule keeps there.
    await apply(
      config((c) => {
        c.balancing = { mode: 'LeastLoaded' };
        (c.rules as unknown[]).push({
          policy: 'e2e/load',
          rule: 'streams-via-isp1',
          priority: 2,
          sources: ['10.244.0.0/16'],
          destinations: [{ protocol: 'TCP', ports: [{ port: streamPort }] }],
          action: 'Allow',
          uplinks: { allowed: ['isp1'] },
        });
      }),
    );
    const transfers = Array.from({ length: 40 }, () =>
      startTransfer(t, t.ns.pods[1]!, server.v4, streamPort, { seconds: 6, bytesPerSecond: 1000 }),
    );
    await Promise.all(transfers.map((transfer) => transfer.receiving));
    await until('isp1 counted busy', async () =>
      (await status()).uplinks.find((u) => u.name === 'isp1')!.activeFlows >= 40 ? true : undefined,
    );
    await new Promise((r) => setTimeout(r, 1500));
    const { answers, failures } = await connectMany(t, t.ns.pods[0]!, server.v4, whoamiPort, 300);
    expect(failures).toBe(0);
    // Weighted would give isp1 a quarter of them.
    const isp1 = (countByAddress(answers)[uplinkAddress(1).v4] ?? 0) / answers.length;
    console.log(`LeastLoaded gave the loaded isp1 ${(isp1 * 100).toFixed(1)} % of new flows (Weighted: 25 %)`);
    expect(isp1).toBeLessThan(0.08);
    await Promise.all(transfers.map((transfer) => transfer.result));
    await apply(config());
  });

  it('balances 1:1:2 over the uplinks, and the server sees only uplink addresses', async () => {
    const { answers, failures } = await connectMany(t, t.ns.pods[0]!, server.v4, whoamiPort, 1200, { concurrency: 50 });
    expect(failures).toBe(0);
    const counts = countByAddress(answers);
    expect(Object.keys(counts).sort()).toEqual([uplinkAddress(1).v4, uplinkAddress(2).v4, uplinkAddress(3).v4]);
    const share = (n: number) => counts[uplinkAddress(n).v4]! / answers.length;
    // Expected 0.25, 0.25, 0.5; ±0.05 is more than 3.5 standard deviations at 1,200 flows.
    expect(Math.abs(share(1) - 0.25)).toBeLessThan(0.05);
    expect(Math.abs(share(2) - 0.25)).toBeLessThan(0.05);
    expect(Math.abs(share(3) - 0.5)).toBeLessThan(0.05);
    const ports = answers.map((a) => Number(a.split(' ')[1]));
    expect(ports.every((p) => p >= 1024 && p <= 65535)).toBe(true);
    expect(await t.serverPacketsFromPods()).toBe(0);
  });

  it('translates IPv6 too', async () => {
    const { answers, failures } = await connectMany(t, t.ns.pods[1]!, server.v6, whoamiPort, 200);
    expect(failures).toBe(0);
    expect(Object.keys(countByAddress(answers)).sort()).toEqual(
      [uplinkAddress(1).v6, uplinkAddress(2).v6, uplinkAddress(3).v6].sort(),
    );
    expect(await t.serverPacketsFromPods()).toBe(0);
  });

  it("translates UDP, with the config's conntrack timeout", async () => {
    const { answers, failures } = await connectMany(t, t.ns.pods[0]!, server.v4, whoamiPort, 100, { transport: 'udp' });
    expect(failures).toBe(0);
    expect(Object.keys(countByAddress(answers)).every((a) => a.startsWith('100.64.'))).toBe(true);
    // The config's 45 s, not the kernel's 30 s for a UDP flow that got one answer.
    const { stdout } = await t.exec(t.ns.gw, ['conntrack', '-L', '-p', 'udp', '--dport', String(whoamiPort)]);
    const remaining = stdout
      .trim()
      .split('\n')
      .map((line) => Number(line.split(/\s+/)[2]));
    expect(remaining.length).toBeGreaterThan(0);
    expect(remaining.every((seconds) => seconds > 30 && seconds <= 45)).toBe(true);
  });

  it('drops a denied destination', async () => {
    const { answers, failures } = await connectMany(t, t.ns.pods[0]!, server.v4, 2323, 5, { timeoutMs: 500 });
    expect(answers).toEqual([]);
    expect(failures).toBe(5);
  });

  it('answers ICMP echo of two pods that use the same identifier', async () => {
    const [a, b] = await Promise.all([
      ping(t, t.ns.pods[0]!, server.v4, { identifier: 4242 }),
      ping(t, t.ns.pods[1]!, server.v4, { identifier: 4242 }),
    ]);
    expect([a, b]).toEqual([true, true]);
  });

  it('carries active and passive FTP', async () => {
    const ftp = await ftpServer();
    for (const classic of [false, true]) {
      expect((await fetchFtp(t, t.ns.pods[0]!, server.v4, { classic })).equals(ftp.content)).toBe(true);
      expect((await fetchFtp(t, t.ns.pods[0]!, server.v4, { active: true, classic })).equals(ftp.content)).toBe(true);
    }
  });

  it('answers a pod on the gateway node over each uplink under strict reverse-path filtering', async () => {
    // The gateway's main table has no route to the server: only an uplink's table has one.
    expect((await t.exec(t.ns.gw, ['ip', 'route', 'get', server.v4]).catch((e: Error) => e)) instanceof Error).toBe(
      true,
    );
    const ftp = await ftpServer();
    await strictReversePath(true);
    try {
      for (const n of [1, 2, 3]) {
        await apply(
          config((c) =>
            (c.rules as unknown[]).push({
              policy: 'e2e/one-uplink',
              rule: `via-isp${n}`,
              priority: 2,
              sources: ['10.244.0.0/16', 'fd00:244::/32'],
              action: 'Allow',
              uplinks: { allowed: [`isp${n}`] },
            }),
          ),
        );
        // UDP flows of the round before, whose source ports the client may use again, keep their uplink.
        for (const family of ['ipv4', 'ipv6']) {
          await t
            .exec(t.ns.gw, ['conntrack', '-D', '-f', family, '-p', 'udp', '--dport', String(whoamiPort)])
            .catch(() => undefined);
        }
        for (const f of families) {
          const seen = await whoamiBothWays(t.ns.pods[0]!, server[f]);
          expect(new Set(seen)).toEqual(new Set([uplinkAddress(n)[f]]));
          expect({ f, n, ping: await ping(t, t.ns.pods[0]!, server[f], { identifier: 4000 + n }) }).toEqual({
            f,
            n,
            ping: true,
          });
        }
        // Active FTP: the server's data connection comes in through the uplink.
        expect((await fetchFtp(t, t.ns.pods[0]!, server.v4, { active: true })).equals(ftp.content)).toBe(true);
      }
      expect(await t.serverPacketsFromPods()).toBe(0);
    } finally {
      await strictReversePath(false);
      await apply(config());
      await forgetPodFlows();
    }
  });

  it("answers the gateway node's pods from the node's own address that an uplink translates to", async () => {
    // Every uplink translates to the gateway's own address on its interface, as an uplink on a
    // node's primary interface does: a pod that talks to the node there gets its answers.
    const own: DualStack = uplinkAddress(1);
    const local = await startWhoami({ ...t, ns: { srv: t.ns.gw } }, whoamiPort, [own.v4, own.v6]);
    try {
      for (const f of families) {
        expect(new Set(await whoamiBothWays(t.ns.pods[0]!, own[f]))).toEqual(new Set([podAddress(1)[f]]));
        expect({ f, ping: await ping(t, t.ns.pods[0]!, own[f], { identifier: 4100 }) }).toEqual({ f, ping: true });
        // The node's own traffic from that address: to its pod by the main table, to the server
        // (which only the uplink's table routes) through the uplink.
        for (const to of [podAddress(1)[f], server[f]]) {
          await t.exec(t.ns.gw, ['ping', '-n', '-q', '-c', '2', '-i', '0.2', '-W', '1', '-I', own[f], to]);
        }
      }
      await healthyAll();
    } finally {
      await local.stop();
      await forgetPodFlows();
    }
  });

  it('gives every flow of a source one address in SourceSticky mode', async () => {
    await apply(config((c) => (c.balancing = { mode: 'SourceSticky', stickySeconds: 60 })));
    for (const pod of t.ns.pods) {
      const { answers, failures } = await connectMany(t, pod, server.v4, whoamiPort, 50);
      expect(failures).toBe(0);
      expect(Object.keys(countByAddress(answers))).toHaveLength(1);
    }
    await apply(config());
  });

  it('keeps a source on its uplink while its flow is open and for stickySeconds after it ended', async () => {
    const stickySeconds = 2;
    const sticky = (c: Record<string, unknown>) => (c.balancing = { mode: 'SourceSticky', stickySeconds });
    await apply(config(sticky));
    const pod = t.ns.pods[0]!;
    const transfer = startTransfer(t, pod, server.v4, streamPort, { seconds: 9, bytesPerSecond: 10_000 });
    await transfer.receiving;
    const [first] = (await connectMany(t, pod, server.v4, whoamiPort, 1)).answers;
    const held = first!.split(' ')[0]!;
    const uplinks = (await status()).uplinks;
    const holder = uplinks.find((u) => uplinkAddress(Number(u.name.slice(3))).v4 === held)!;
    // Far past stickySeconds with the transfer open; then weights that would hash the source elsewhere.
    await sleep(3 * stickySeconds * 1000);
    const elsewhere = (c: Record<string, unknown>) => {
      sticky(c);
      c.uplinks = (c.uplinks as Array<{ name: string }>).map((u) => ({
        ...u,
        weight: u.name === holder.name ? 1 : 200,
      }));
    };
    await apply(config(elsewhere));
    const whileOpen = countByAddress((await connectMany(t, pod, server.v4, whoamiPort, 10)).answers);
    const result = await transfer.result;
    await sleep(1000);
    const afterEnd = countByAddress((await connectMany(t, pod, server.v4, whoamiPort, 10)).answers);
    // The source's last flows ended here: each whoami connection closes once answered.
    const lastEnded = Date.now();
    const source = podAddress(1).v4;
    const set = `sticky${holder.id}_4`;
    const holds = async () => {
      const { stdout } = await t.exec(t.ns.gw, ['nft', 'list', 'set', 'inet', 'naat', set]);
      return new RegExp(`[{ ]${source.replaceAll('.', '\\.')}[ ,]`).test(stdout);
    };
    const forgotten = await until(
      'the source forgotten',
      async () => ((await holds()) ? undefined : Date.now()),
      20_000,
    );
    const later = countByAddress((await connectMany(t, pod, server.v4, whoamiPort, 10)).answers);
    console.log(
      `SourceSticky (${stickySeconds} s): ${set} kept ${source} through ${3 * stickySeconds} s of an open flow; ` +
        `new flows while open ${JSON.stringify(whileOpen)}, 1 s after its end ${JSON.stringify(afterEnd)}; ` +
        `forgotten ${forgotten - lastEnded} ms after its last flow ended, then ${JSON.stringify(later)}`,
    );
    expect(result).toMatchObject({ ok: true });
    expect(whileOpen).toEqual({ [held]: 10 });
    expect(afterEnd).toEqual({ [held]: 10 });
    // Never before stickySeconds; late by up to the agent's conntrack listing (10 s), which is when
    // it learns that a closing TCP flow ended, and one renewal interval.
    expect(forgotten - lastEnded).toBeGreaterThanOrEqual(stickySeconds * 1000 - 300);
    expect(forgotten - lastEnded).toBeLessThan(stickySeconds * 1000 + 10_000 + stickySeconds * 500 + 1500);
    expect(later[held] ?? 0).toBeLessThan(10);
    await apply(config());
  }, 60_000);

  it('moves new flows off a failed uplink within a second, and back when it recovers', async () => {
    await healthyAll();
    await t.failUplink(3);
    const failedAt = Date.now();
    // New connections, one after another, until ten in a row succeed (none can through isp3).
    let streak = 0;
    let recoveredAt = 0;
    while (streak < 10) {
      const { answers } = await connectMany(t, t.ns.pods[0]!, server.v4, whoamiPort, 1, { timeoutMs: 300 });
      if (answers.length) {
        if (streak++ === 0) recoveredAt = Date.now();
      } else streak = 0;
      if (Date.now() - failedAt > 10_000) throw new Error('new connections did not recover');
    }
    const ms = recoveredAt - failedAt;
    console.log(`new connections succeeded again ${ms} ms after isp3 failed`);
    expect(ms).toBeLessThan(1000);
    const during = await connectMany(t, t.ns.pods[0]!, server.v4, whoamiPort, 100);
    expect(during.failures).toBe(0);
    expect(countByAddress(during.answers)[uplinkAddress(3).v4]).toBeUndefined();
    expect((await status()).uplinks.find((u) => u.name === 'isp3')!.healthy).toBe(false);

    await t.restoreUplink(3);
    await healthyAll();
    const after = await connectMany(t, t.ns.pods[0]!, server.v4, whoamiPort, 200);
    expect(after.failures).toBe(0);
    expect(countByAddress(after.answers)[uplinkAddress(3).v4]).toBeGreaterThan(50);
  });

  it('deletes the flows of a failed uplink from conntrack, so that their applications reconnect elsewhere', async () => {
    await healthyAll();
    const transfer = startTransfer(t, t.ns.pods[1]!, server.v4, streamPort, { seconds: 10, idleTimeoutMs: 3000 });
    await transfer.receiving;
    const transferFlow = async () => {
      const argv = ['conntrack', '-L', '-p', 'tcp', '--dport', String(streamPort), '--state', 'ESTABLISHED'];
      const { stdout } = await t.exec(t.ns.gw, [...argv, '-o', 'id,extended']);
      return stdout.split('\n').flatMap((line) => parseConntrackLine(line)?.flow ?? [])[0];
    };
    const flow = (await transferFlow())!;
    const uplink = (await status()).uplinks.find((u) => u.id === flow.uplink)!;
    const n = Number(uplink.name.slice(3));
    expect(flow.mappedAddress).toBe(uplinkAddress(n).v4);
    await t.failUplink(n);
    try {
      const failedAt = Date.now();
      await until('the flow deleted', async () => ((await transferFlow())?.id !== flow.id ? true : undefined), 5000);
      console.log(`the flow pinned to ${uplink.name} was deleted ${Date.now() - failedAt} ms after it failed`);
      expect(Date.now() - failedAt).toBeLessThan(1500);
      expect((await transfer.result).ok).toBe(false);
    } finally {
      await t.restoreUplink(n);
    }
  });

  it('keeps an established transfer going while the agent is killed and restarted', async () => {
    await healthyAll();
    const transfer = startTransfer(t, t.ns.pods[0]!, server.v4, streamPort, { seconds: 4 });
    await transfer.receiving;
    agent!.kill('SIGKILL');
    await stopProcess(agent);
    await new Promise((r) => setTimeout(r, 500));
    agent = startAgent();
    const result = await transfer.result;
    expect(result).toMatchObject({ ok: true });
    expect(result.bytes).toBe(result.expected);
    await until('the restarted agent', async () => ((await status()).appliedHash ? true : undefined));
  });

  it('takes away everything it made with `remove`, and nothing else', async () => {
    await stopProcess(agent);
    const rules = async () => (await t.exec(t.ns.gw, ['ip', 'rule'])).stdout;
    expect(await rules()).toMatch(/7700:/);
    expect(await rules()).toMatch(/7699:/);
    await t.exec(t.ns.gw, [process.execPath, main, 'remove', '--state-dir', join(dir, 'state')]);
    expect((await t.exec(t.ns.gw, ['nft', 'list', 'tables'])).stdout).not.toMatch(/naat/);
    expect(await rules()).not.toMatch(/7700:/);
    expect(await rules()).not.toMatch(/7699:/);
    expect((await t.exec(t.ns.gw, ['ip', '-6', 'rule'])).stdout).not.toMatch(/769\d:|7700:/);
    expect((await t.exec(t.ns.gw, ['ip', 'route', 'show', 'table', 'all'])).stdout).not.toMatch(/table 77\d\d/);
    expect(await rules()).toMatch(/lookup main/);
    expect((await t.exec(t.ns.gw, ['nft', 'list', 'table', 'inet', 'other'])).stdout).toMatch(/hook forward/);
  });
});
