// Faults injected into a running gateway, on real processes and a real kernel: the agent (or its
// nft child) killed with SIGKILL in the middle of applying a large change, an uplink that flaps
// every few hundred milliseconds, and SNAT ports and the conntrack table running out. Each fault
// prints a line `fault: …` with what was seen, so that the figures can be quoted.
//
// FAULTS_LONG=1 runs the kill loop for two minutes instead of twenty seconds.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readdir, readFile, readlink, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { parseGatewayConfig } from '../../contracts/gateway/index.ts';
import { parseConntrackLine } from '../../dataplane/conntrack.ts';
import { renderTable } from '../../dataplane/nft/model.ts';
import { render } from '../../dataplane/render.ts';
import { createTopology, server, stopProcess, until, uplinkAddress, uplinkNextHop, type Topology } from './topology.ts';
import { startStreamServer, startTransfer, startWhoami, type Server, type Transfer } from './traffic.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const whoamiPort = 9000;
const streamPort = 9100;
const long = process.env.FAULTS_LONG === '1';

let t: Topology;
let dir: string;
let agent: ChildProcess | undefined;
const servers: Server[] = [];
let generation = 0;

type Config = Record<string, unknown>;

const uplink = (n: number, extra: Record<string, unknown> = {}) => ({
  name: `isp${n}`,
  interface: `up${n}`,
  nextHop: { ipv4: uplinkNextHop(n).v4, ipv6: uplinkNextHop(n).v6 },
  snat: { addresses: [uplinkAddress(n).v4, uplinkAddress(n).v6] },
  ...extra,
});

function config(change: (c: Config) => void = () => {}): Config {
  const c: Config = {
    version: 1,
    gateway: 'faults',
    hash: `faults-${++generation}`,
    sources: ['10.244.0.0/16', 'fd00:244::/32'],
    bypass: [],
    uplinks: [uplink(1), uplink(2)],
    balancing: { mode: 'Weighted' },
    defaultAction: 'Allow',
    rules: [],
  };
  change(c);
  return c;
}

/** A config of `count` Deny rules, named `<tag>-<i>`, for ports no test uses: a large table whose every chain differs by tag. */
function bigConfig(tag: 'a' | 'b', count: number): Config {
  const base = tag === 'a' ? 10_000 : 30_000;
  return config((c) => {
    c.hash = `big-${tag}`;
    c.rules = Array.from({ length: count }, (_, i) => ({
      policy: 'faults/big',
      rule: `${tag}-${i}`,
      priority: 10,
      sources: [`10.244.${i % 200}.0/24`],
      destinations: [{ protocol: 'TCP', ports: [{ port: base + i }] }],
      action: 'Deny',
    }));
  });
}

async function status(): Promise<AgentReport> {
  const { stdout } = await t.exec(t.ns.gw, ['curl', '-sf', 'http://127.0.0.1:7741/status']);
  return JSON.parse(stdout);
}

/** Writes the config file whole (a rename), as a ConfigMap volume does: the agent never reads half of it. */
async function write(c: Config): Promise<void> {
  await writeFile(join(dir, 'gateway.json.new'), JSON.stringify(c));
  await rename(join(dir, 'gateway.json.new'), join(dir, 'gateway.json'));
}

async function apply(c: Config, timeoutMs = 30_000): Promise<void> {
  await write(c);
  await until(
    `config ${String(c.hash)}`,
    async () => ((await status()).appliedHash === c.hash ? true : undefined),
    timeoutMs,
  );
}

function startAgent(): ChildProcess {
  const log = openSync(join(dir, 'agent.log'), 'a');
  const argv = ['run', '--config', join(dir, 'gateway.json'), '--node', 'gw', '--state-dir', join(dir, 'state')];
  const child = t.spawn(t.ns.gw, [process.execPath, main, ...argv, '--reload-ms', '100'], {
    stdio: ['ignore', log, log],
  });
  closeSync(log);
  return child;
}

async function restartAgent(): Promise<void> {
  await stopProcess(agent);
  agent = startAgent();
}

/** Per chain: its name and its rules, each reduced to its comment (the policy rule) or `-`. */
function chainsOf(listing: string): string {
  const chains: string[] = [];
  let chain: string | undefined;
  let rules: string[] = [];
  for (const line of listing.split('\n').map((l) => l.trim())) {
    const start = /^chain (\S+) \{$/.exec(line);
    if (start) {
      chain = start[1];
      rules = [];
    } else if (chain && line === '}') {
      chains.push(`${chain}: ${rules.length} rules ${rules.join(' ')}`);
      chain = undefined;
    } else if (chain && line && !line.startsWith('type ')) {
      rules.push(/comment "([^"]*)"/.exec(line)?.[1] ?? '-');
    }
  }
  return chains.sort().join('\n');
}

/** The table the agent renders for `c`, normalised by chainsOf. */
async function expected(c: Config): Promise<string> {
  const ids = new Map(
    Object.entries(JSON.parse(await readFile(join(dir, 'state', 'uplinks.json'), 'utf8')) as Record<string, number>),
  );
  const { table } = render({ config: parseGatewayConfig(c), node: 'gw', ids, health: new Map() });
  return chainsOf(renderTable(table));
}

async function kernelTable(): Promise<string> {
  return chainsOf((await t.exec(t.ns.gw, ['nft', 'list', 'table', 'inet', 'naat'])).stdout);
}

/** Pids of the nft processes running in the gateway's namespace (the agent's children, or orphans of a killed agent). */
async function nftProcesses(): Promise<number[]> {
  const netns = `net:[${(await stat(`/run/netns/${t.ns.gw}`)).ino}]`;
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if ((await readFile(`/proc/${entry}/comm`, 'utf8')).trim() !== 'nft') continue;
      if ((await readlink(`/proc/${entry}/ns/net`)) === netns) pids.push(Number(entry));
    } catch {
      // Gone already.
    }
  }
  return pids;
}

/** Waits for an nft process in the gateway's namespace, scanning without pause (a transaction lasts a few hundred ms). */
async function catchNft(timeoutMs = 10_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = await nftProcesses();
    if (pids.length || Date.now() > deadline) return pids;
  }
}

async function transferFlow(port = streamPort) {
  const argv = ['conntrack', '-L', '-p', 'tcp', '--dport', String(port), '--state', 'ESTABLISHED'];
  const { stdout } = await t.exec(t.ns.gw, [...argv, '-o', 'id,extended']);
  return stdout.split('\n').flatMap((line) => parseConntrackLine(line)?.flow ?? []);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function report(line: string): void {
  console.log(`fault: ${line}`);
}

beforeAll(async () => {
  t = await createTopology({ pods: 2, uplinks: 2 });
  dir = await mkdtemp(join(tmpdir(), 'naat-faults-e2e-'));
  servers.push(await startWhoami(t, whoamiPort), await startStreamServer(t, streamPort));
  await write(config());
  agent = startAgent();
  await until('the agent', async () => ((await status()).appliedHash ? true : undefined));
}, 60_000);

afterAll(async () => {
  await stopProcess(agent);
  for (const s of servers) await s.stop();
  await t?.destroy();
  await rm(dir, { recursive: true, force: true });
});

describe('faults injected into a running gateway', () => {
  it(
    'holds the old or the new ruleset, never a mix, when the agent or nft is killed mid-apply, and keeps established flows',
    async () => {
      const rules = 3000;
      const configs = { a: bigConfig('a', rules), b: bigConfig('b', rules) };
      // A start with a large change: how long from the agent's start to the change applied.
      await stopProcess(agent);
      await write(configs.a);
      let started = Date.now();
      agent = startAgent();
      await until('big-a', async () => ((await status()).appliedHash === 'big-a' ? true : undefined));
      const startToApplied = Date.now() - started;
      const tables = { a: await expected(configs.a), b: await expected(configs.b) };
      expect(await kernelTable()).toBe(tables.a);
      expect(tables.a).not.toBe(tables.b);

      const transfer = startTransfer(t, t.ns.pods[0]!, server.v4, streamPort, {
        seconds: long ? 150 : 40,
        bytesPerSecond: 20_000,
        idleTimeoutMs: 10_000,
      });
      await transfer.receiving;
      const flowBefore = (await transferFlow())[0]!;

      // The agent killed at a random moment while it starts and applies the other config.
      const outcomes = { old: 0, new: 0, mix: 0, killedNft: 0, orphanedNft: 0 };
      let holds: 'a' | 'b' = 'a';
      let kills = 0;
      const agentKillsUntil = Date.now() + (long ? 100_000 : 18_000);
      while (Date.now() < agentKillsUntil) {
        const next: 'a' | 'b' = holds === 'a' ? 'b' : 'a';
        await stopProcess(agent);
        await write(configs[next]);
        agent = startAgent();
        // Every other kill lands while nft reads the transaction from the agent, the rest anywhere
        // from the agent's start to a while after the change is applied.
        if (kills++ % 2) {
          await catchNft();
          await sleep(Math.random() * 20);
        } else await sleep(startToApplied * (0.4 + Math.random() * 0.8));
        agent.kill('SIGKILL');
        await stopProcess(agent);
        if ((await nftProcesses()).length) outcomes.orphanedNft++;
        // An orphaned nft finishes on its own; only then is the kernel's table final.
        await until('orphaned nft gone', async () => ((await nftProcesses()).length ? undefined : true), 10_000);
        const now = await kernelTable();
        if (now === tables[holds]) outcomes.old++;
        else if (now === tables[next]) {
          outcomes.new++;
          holds = next;
        } else {
          outcomes.mix++;
          await writeFile(join(dir, `mix-${outcomes.mix}.txt`), now);
        }
      }

      // nft itself killed while the running agent applies a change: the agent tries again.
      await stopProcess(agent);
      await write(configs[holds]);
      agent = startAgent();
      await until('the agent back', async () => ((await status()).appliedHash === `big-${holds}` ? true : undefined));
      const retries: number[] = [];
      for (let i = 0; i < (long ? 20 : 5); i++) {
        const next: 'a' | 'b' = holds === 'a' ? 'b' : 'a';
        await write(configs[next]);
        const pids = await catchNft();
        await sleep(Math.random() * 50);
        for (const pid of pids) {
          try {
            process.kill(pid, 'SIGKILL');
            outcomes.killedNft++;
          } catch {
            // It finished first.
          }
        }
        await until('no nft', async () => ((await nftProcesses()).length ? undefined : true), 10_000);
        const now = await kernelTable();
        if (now === tables[holds]) outcomes.old++;
        else if (now === tables[next]) outcomes.new++;
        else outcomes.mix++;
        started = Date.now();
        await until(
          `big-${next} after nft was killed`,
          async () => ((await status()).appliedHash === `big-${next}` ? true : undefined),
          15_000,
        );
        retries.push(Date.now() - started);
        expect(await kernelTable()).toBe(tables[next]);
        holds = next;
      }

      // A last restart converges on the config in the file.
      await restartAgent();
      started = Date.now();
      await until('converged', async () => ((await status()).appliedHash === `big-${holds}` ? true : undefined));
      const converged = Date.now() - started;
      expect(await kernelTable()).toBe(tables[holds]);
      const result = await transfer.result;
      const flowAfter = (await transferFlow()).find((f) => f.id === flowBefore.id);
      report(
        `SIGKILL mid-apply (${rules} rules, start-to-applied ${startToApplied} ms): ` +
          `${outcomes.old + outcomes.new + outcomes.mix} kills, old ${outcomes.old}, new ${outcomes.new}, mix ${outcomes.mix}; ` +
          `nft orphaned by the kill ${outcomes.orphanedNft} times, nft killed ${outcomes.killedNft} times, ` +
          `re-applied by the agent's retry in ${retries.join(', ')} ms; restart converged in ${converged} ms; ` +
          `established transfer ${result.ok ? 'kept' : 'broken'} (${result.bytes}/${result.expected} bytes)`,
      );
      expect(outcomes.mix).toBe(0);
      expect(result).toMatchObject({ ok: true });
      expect(flowAfter === undefined || flowAfter.uplink === flowBefore.uplink).toBe(true);
      await apply(config());
    },
    long ? 400_000 : 120_000,
  );

  it('does not thrash on an uplink that flaps faster than its thresholds, and reports the truth', async () => {
    const healthCheck = {
      targets: [server.v4],
      protocol: 'TCP',
      port: whoamiPort,
      intervalMs: 150,
      timeoutMs: 100,
      failureThreshold: 4,
      successThreshold: 4,
    };
    await apply(
      config((c) => {
        c.uplinks = [uplink(1, { healthCheck }), uplink(2, { healthCheck })];
        c.rules = [
          {
            policy: 'faults/pin',
            rule: 'streams-via-isp2',
            priority: 1,
            sources: ['10.244.0.0/16'],
            destinations: [{ protocol: 'TCP', ports: [{ port: streamPort }] }],
            action: 'Allow',
            uplinks: { allowed: ['isp2'] },
          },
        ];
      }),
    );
    await until('both healthy', async () => ((await status()).uplinks.every((u) => u.healthy) ? true : undefined));
    const transfer = startTransfer(t, t.ns.pods[1]!, server.v4, streamPort, { seconds: 10, bytesPerSecond: 20_000 });
    await transfer.receiving;
    const pinned = (await transferFlow())[0]!;
    const isp2 = (await status()).uplinks.find((u) => u.name === 'isp2')!;
    expect(pinned.uplink).toBe(isp2.id);

    const logBefore = (await readFile(join(dir, 'agent.log'), 'utf8')).length;
    let seenFlips = 0;
    let last = true;
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const healthy = (await status()).uplinks.find((u) => u.name === 'isp1')!.healthy;
        if (healthy !== last) seenFlips++;
        last = healthy;
        await sleep(50);
      }
    })();
    const flaps = 10;
    for (let i = 0; i < flaps; i++) {
      await t.failUplink(1);
      await sleep(250);
      await t.restoreUplink(1);
      await sleep(350);
    }
    polling = false;
    await poller;
    const log = (await readFile(join(dir, 'agent.log'), 'utf8')).slice(logBefore);
    const flips = log.split('\n').filter((l) => /"msg":"Uplink (failed|recovered)","uplink":"isp1"/.test(l)).length;
    const deletions = log.split('\n').filter((l) => /Deleted flows of failed uplink","uplink":"isp1"/.test(l)).length;
    // The flapping is over with the uplink up: the status must say so within its success rounds.
    const settled = Date.now();
    await until('isp1 healthy', async () =>
      (await status()).uplinks.find((u) => u.name === 'isp1')!.healthy ? true : undefined,
    );
    const healthyAfter = Date.now() - settled;
    const stillPinned = (await transferFlow()).find((f) => f.id === pinned.id);
    const result = await transfer.result;

    // A real outage still takes it out, and the status says so.
    await t.failUplink(1);
    const failedAt = Date.now();
    await until('isp1 unhealthy', async () =>
      (await status()).uplinks.find((u) => u.name === 'isp1')!.healthy ? undefined : true,
    );
    const detected = Date.now() - failedAt;
    await t.restoreUplink(1);
    await until('isp1 healthy again', async () =>
      (await status()).uplinks.find((u) => u.name === 'isp1')!.healthy ? true : undefined,
    );
    report(
      `uplink flapping (${flaps} outages of 250 ms every 600 ms; probes every 150 ms, thresholds 4/4): ` +
        `${flips} health changes logged, ${seenFlips} seen in /status, ${deletions} conntrack deletions on isp1; ` +
        `flow pinned to isp2 ${stillPinned ? 'kept (same conntrack id)' : 'gone'}, transfer ${result.ok ? 'complete' : 'broken'}; ` +
        `status healthy ${healthyAfter} ms after the last flap; a sustained outage detected in ${detected} ms`,
    );
    expect(flips).toBeLessThanOrEqual(2);
    expect(stillPinned).toBeDefined();
    expect(result).toMatchObject({ ok: true });
    expect(detected).toBeLessThan(2000);
    await apply(config());
  }, 60_000);

  it('logs an uplink whose link is down once when it goes and once when it is back, not on every sync', async () => {
    const first = config();
    await apply(first);
    // The agent says a config is applied at /status just before it logs so: the count starts
    // after that line, or it would be counted as one of the changes below.
    const logBefore = await until('the first config logged', async () => {
      const text = await readFile(join(dir, 'agent.log'), 'utf8');
      return text.includes(`"hash":"${String(first.hash)}"`) ? text.length : undefined;
    });
    await t.exec(t.ns.gw, ['ip', 'link', 'set', 'up2', 'down']);
    // Config changes, each a sync, while the link is down; then two with other routes for isp2.
    for (let i = 0; i < 5; i++) await apply(config());
    const v4Only = uplink(2, { nextHop: { ipv4: uplinkNextHop(2).v4 } });
    await apply(config((c) => (c.uplinks = [uplink(1), v4Only])));
    await apply(config((c) => (c.uplinks = [uplink(1), uplink(2, { weight: 3 })])));
    await t.exec(t.ns.gw, ['ip', 'link', 'set', 'up2', 'up']);
    await apply(config());
    const last = config();
    await apply(last);
    const log = await until('the last config logged', async () => {
      const text = (await readFile(join(dir, 'agent.log'), 'utf8')).slice(logBefore);
      return text.includes(`"hash":"${String(last.hash)}"`) ? text : undefined;
    });
    const lines = log
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { level: string; msg: string; error?: string });
    const errors = lines.filter((l) => l.level === 'error').map((l) => `${l.msg}: ${l.error}`);
    report(
      `an uplink's link down for 7 syncs and up for 2 logged ${lines.length} lines:\n${lines.map((l) => `  ${l.level} ${l.msg} ${l.error ?? ''}`).join('\n')}`,
    );
    // Each problem once, however many syncs it lasted; no line per sync at the info level.
    expect(errors).toEqual([...new Set(errors)]);
    expect(lines.filter((l) => l.msg.startsWith('Synced'))).toEqual([]);
    expect(lines.filter((l) => l.msg === 'Applied a new gateway config')).toHaveLength(9);
    expect(lines.length).toBeLessThan(9 + 2 * errors.length + 4);
  }, 60_000);

  it('reports SNAT port and conntrack use before they run out, then fails new flows cleanly without leaking pod addresses', async () => {
    // Ten ports for isp1, and the stream port pinned to it: ten flows to one destination fill it.
    const ports = { min: 20_000, max: 20_009 };
    await apply(
      config((c) => {
        c.uplinks = [uplink(1, { snat: { addresses: [uplinkAddress(1).v4, uplinkAddress(1).v6], ports } }), uplink(2)];
        c.rules = [
          {
            policy: 'faults/pin',
            rule: 'streams-via-isp1',
            priority: 1,
            sources: ['10.244.0.0/16'],
            destinations: [{ protocol: 'TCP', ports: [{ port: streamPort }] }],
            action: 'Allow',
            uplinks: { allowed: ['isp1'] },
          },
        ];
      }),
    );
    const metric = async (name: string) => {
      const { stdout } = await t.exec(t.ns.gw, ['curl', '-sf', 'http://127.0.0.1:7741/metrics']);
      const line = stdout.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{uplink="isp1"}`));
      return line === undefined ? undefined : Number(line.split(' ').at(-1));
    };
    const isp1 = async () => (await status()).uplinks.find((u) => u.name === 'isp1')!;
    const insertFailedBefore = (await metric('naat_conntrack_insert_failed_total')) ?? 0;
    const fromPodsBefore = await t.serverPacketsFromPods();
    const hold = (count: number): Transfer[] =>
      Array.from({ length: count }, () =>
        startTransfer(t, t.ns.pods[0]!, server.v4, streamPort, { seconds: 12, bytesPerSecond: 1000 }),
      );

    const first = hold(8);
    await Promise.all(first.map((x) => x.receiving));
    const warned = await until('80 % reported', async () => {
      const u = await isp1();
      return u.portUtilisationPercent >= 80 ? u.portUtilisationPercent : undefined;
    });
    const warnedMetric = await metric('naat_uplink_snat_port_utilisation_ratio');
    const { conntrack } = await status();
    const utilisation = await metric('naat_conntrack_utilisation_ratio');

    const rest = hold(2);
    await Promise.all(rest.map((x) => x.receiving));
    const full = (await isp1()).portUtilisationPercent;
    // Past the last port: the kernel finds no mapping and drops the SYN.
    const refused = hold(3).map((x) =>
      x.receiving.then(
        () => 'connected',
        () => 'failed',
      ),
    );
    const refusedOutcomes = await Promise.all(refused);
    const insertFailed = await until(
      'insert_failed counted',
      async () => {
        const value = (await metric('naat_conntrack_insert_failed_total')) ?? 0;
        return value > insertFailedBefore ? value - insertFailedBefore : undefined;
      },
      5000,
    ).catch(() => 0);
    const held = await Promise.all([...first, ...rest].map((x) => x.result));
    const leaked = (await t.serverPacketsFromPods()) - fromPodsBefore;
    report(
      `SNAT ports (10 for one destination): ${warned} % in /status and ${warnedMetric} (ratio) in /metrics at 8 flows, ` +
        `${full} % at 10; 3 more flows: ${refusedOutcomes.join(', ')}; insert_failed +${insertFailed}; ` +
        `${held.filter((r) => r.ok).length}/10 established flows complete; packets with a pod source at the server: ${leaked}; ` +
        `conntrack ${conntrack?.entries}/${conntrack?.max} entries (utilisation metric ${utilisation})`,
    );
    expect(warned).toBe(80);
    expect(warnedMetric).toBe(0.8);
    expect(full).toBe(100);
    expect(refusedOutcomes).toEqual(['failed', 'failed', 'failed']);
    expect(held.every((r) => r.ok)).toBe(true);
    expect(leaked).toBe(0);
    expect(conntrack!.entries).toBeGreaterThanOrEqual(8);
    expect(utilisation).toBeCloseTo(conntrack!.entries / conntrack!.max, 3);
    await apply(config());
  }, 60_000);
});
