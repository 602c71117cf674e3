// A gateway node's kernel side of failover addresses, in the cluster of network namespaces with one
// L2 segment per ISP that both gateway nodes join (cluster-topology.ts, sharedUplinks). The real
// gateway Agent runs on g1 and g2 with the real kernel (test/e2e/programs/failover-gateway.ts), the
// test deciding which node owns the failover addresses; the real node agents steer the workers'
// pods to the owner. A pod with egress addresses leaves with them from the node that owns them,
// a pod without keeps the node's own addresses; moving the addresses from g1 to g2 moves the
// ISP's neighbour entries to g2's MAC, and new flows leave from g2 with the same addresses. A node
// whose agent is SIGKILLed keeps the addresses on its interface, but its kernel's fence stops it
// answering ARP and neighbour solicitations for them within the lease (dataplane/failover/fence.ts).
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import {
  createCluster,
  sharedNextHop,
  failoverAddress,
  gatewayAddress,
  gateways,
  nodeNetwork,
  podAddress,
  podNetwork,
  sharedUplinkAddress,
  sharedUplinks,
  workerAddress,
  type Cluster,
} from './cluster-topology.ts';
import { server, stopProcess, until } from './topology.ts';
import { connectMany, startWhoami, type Server } from './traffic.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const program = join(import.meta.dirname, 'programs', 'failover-gateway.ts');
const neighbourProbe = join(import.meta.dirname, 'programs', 'neighbour-probe.py');
const leaseMs = 600;
const whoamiPort = 9000;
const tunnel = { vni: 7700, port: 4790 };
/** The failover addresses of the pod on w1; the pod on w2 has none. */
const egress = failoverAddress(1, 0);
const steered = [1, 2] as const;

let c: Cluster;
let dir: string;
let whoami: Server;
const gatewayAgents = new Map<number, { child: ChildProcess; answers: AsyncIterator<string> }>();
const nodeAgents: ChildProcess[] = [];
let generation = 0;

function gatewayConfig(): Record<string, unknown> {
  return {
    version: 1,
    gateway: 'egress',
    hash: 'gw-1',
    sources: [podNetwork.v4, podNetwork.v6],
    pods: steered.map((w) => ({
      namespace: 'shop',
      name: `web-${w}`,
      addresses: [podAddress(w).v4, podAddress(w).v6],
      node: `w${w}`,
      ...(w === 1 ? { egress: [egress.v4, egress.v6] } : {}),
    })),
    uplinks: sharedUplinks(),
    balancing: { mode: 'Weighted' },
    timeouts: {},
    steering: {
      tunnel,
      markMask: 0x10,
      sources: steered.map((w) => ({ node: `w${w}`, addresses: [workerAddress(w).v4, workerAddress(w).v6] })),
    },
    failover: {
      addresses: [
        { address: egress.v4, uplink: 'isp1' },
        { address: egress.v6, uplink: 'isp1' },
      ],
      leaseDurationMs: leaseMs,
      failback: false,
      failbackDelaySeconds: 30,
      nodes: gateways.map((g) => ({ node: `g${g}`, addresses: [gatewayAddress(g).v4, gatewayAddress(g).v6] })),
      draining: [],
    },
  };
}

/** Worker w's node config, with gateway node `owner` its only peer (its pod's addresses follow that node's answers). */
function nodeConfig(w: number, owner: number): Record<string, unknown> {
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
        pods: [
          {
            namespace: 'shop',
            name: `web-${w}`,
            addresses: [podAddress(w).v4, podAddress(w).v6],
            ...(w === 1 ? { egress: [egress.v4, egress.v6] } : {}),
          },
        ],
        peers: [{ node: `g${owner}`, addresses: [gatewayAddress(owner).v4, gatewayAddress(owner).v6] }],
        failover: { addresses: [egress.v4, egress.v6] },
      },
    ],
  };
}

async function statusOf(ns: string, port: number): Promise<Record<string, unknown>> {
  const { stdout } = await c.exec(ns, ['curl', '-sf', `http://127.0.0.1:${port}/status`]);
  return JSON.parse(stdout) as Record<string, unknown>;
}

/** Steers every worker's pod to gateway node `owner` and waits until the node agents see it up. */
async function steerTo(owner: number): Promise<void> {
  const configs = steered.map((w) => nodeConfig(w, owner));
  for (const w of steered) await writeFile(join(dir, `w${w}.json`), JSON.stringify(configs[w - 1]));
  for (const w of steered) {
    await until(`w${w} steers to g${owner}`, async () => {
      const status = await statusOf(c.worker(w), 7742);
      const peers = (status.peers ?? []) as Array<{ up: boolean }>;
      return status.appliedHash === configs[w - 1]!.hash && peers.length && peers.every((p) => p.up) ? true : undefined;
    });
  }
}

/** Hands gateway node g the failover addresses it owns; resolves once its agent applied them. */
async function own(g: number, addresses: string[]): Promise<void> {
  const agent = gatewayAgents.get(g)!;
  agent.child.stdin!.write(`${JSON.stringify(addresses)}\n`);
  const answer = JSON.parse((await agent.answers.next()).value as string) as { owned?: string[]; error?: string };
  expect(answer).toEqual({ owned: addresses });
}

async function macOf(ns: string, device: string): Promise<string> {
  const { stdout } = await c.exec(ns, ['cat', `/sys/class/net/${device}/address`]);
  return stdout.trim();
}

/** The MAC ISP 1's neighbour entry for `address` holds, if any. */
async function ispNeighbour(address: string): Promise<string | undefined> {
  const { stdout } = await c.exec(c.ns.isps[0]!, ['ip', '-j', 'neighbour', 'show', 'to', address, 'dev', 'lan']);
  return (JSON.parse(stdout) as Array<{ lladdr?: string }>)[0]?.lladdr;
}

async function failoverAddressesOf(g: number): Promise<string[]> {
  const { stdout } = await c.exec(c.gateway(g), ['ip', '-j', 'address', 'show', 'dev', 'up1']);
  const [link] = JSON.parse(stdout) as Array<{ addr_info: Array<{ local: string; metric?: number }> }>;
  return link!.addr_info.filter((a) => a.metric === 7700).map((a) => a.local);
}

/** The source addresses the server saw for 10 connections of the pod on worker w, per family. */
async function seenFrom(w: number): Promise<{ v4: string[]; v6: string[] }> {
  const seen = async (address: string) => {
    const result = await connectMany(c, c.pod(w), address, whoamiPort, 10, { concurrency: 5 });
    expect({ failures: result.failures, error: result.error }).toEqual({ failures: 0, error: undefined });
    return [...new Set(result.answers.map((a) => a.split(' ')[0]!))].sort();
  };
  return { v4: await seen(server.v4), v6: await seen(server.v6) };
}

/** Whether gateway node g's conntrack holds TCP flows of the pod on w1 translated to its egress addresses. */
async function carries(g: number): Promise<boolean> {
  const flows = await Promise.all(
    (['ipv4', 'ipv6'] as const).map(async (family) => {
      const { stdout } = await c.exec(c.gateway(g), [
        'conntrack',
        '-L',
        '-f',
        family,
        '-p',
        'tcp',
        '--dport',
        String(whoamiPort),
      ]);
      return stdout;
    }),
  );
  return flows[0]!.includes(`dst=${egress.v4} `) && flows[1]!.includes(`dst=${egress.v6} `);
}

/** Starts the gateway agent of node g (again), its state kept across restarts. */
async function startGateway(g: number): Promise<void> {
  const log = openSync(join(dir, `g${g}.log`), 'a');
  const argv = [join(dir, 'gateway.json'), `g${g}`, join(dir, `g${g}-state`), '::', '7741'];
  const child = c.spawn(c.gateway(g), [process.execPath, program, ...argv], { stdio: ['pipe', 'pipe', log] });
  closeSync(log);
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
  expect(JSON.parse((await lines.next()).value as string)).toEqual({ listening: true });
  gatewayAgents.set(g, { child, answers: lines });
}

/** Milliseconds on CLOCK_MONOTONIC, the clock of the neighbour probe's answers. */
const monotonicMs = () => Number(process.hrtime.bigint()) / 1e6;

interface NeighbourAnswer {
  at: number;
  family: 4 | 6;
  mac: string;
}

/**
 * Asks ISP 1's segment who has the egress addresses every 20 ms (neighbour-probe.py) and collects
 * every answer with the MAC it came from.
 */
async function probeNeighbours(): Promise<{ answers: NeighbourAnswer[]; stop: () => Promise<void> }> {
  const own = sharedNextHop(1);
  const argv = ['python3', neighbourProbe, 'lan', own.v4, own.v6, egress.v4, egress.v6, '20'];
  const child = c.spawn(c.ns.isps[0]!, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const answers: NeighbourAnswer[] = [];
  const ready = new Promise<void>((resolve) =>
    lines.on('line', (line) => {
      const parsed = JSON.parse(line) as NeighbourAnswer | { ready: true };
      if ('ready' in parsed) resolve();
      else answers.push(parsed);
    }),
  );
  await ready;
  return { answers, stop: () => stopProcess(child) };
}

/** The last answer per family from `mac` in `answers`, in milliseconds after `since` (undefined: none after it). */
function lastAnswers(answers: readonly NeighbourAnswer[], mac: string, since: number) {
  const last = (family: 4 | 6) => {
    const times = answers.filter((a) => a.family === family && a.mac === mac && a.at >= since).map((a) => a.at);
    return times.length ? Math.round(Math.max(...times) - since) : undefined;
  };
  return { v4: last(4), v6: last(6) };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

beforeAll(async () => {
  c = await createCluster({ sharedUplinks: true });
  dir = await mkdtemp(join(tmpdir(), 'naat-failover-e2e-'));
  whoami = await startWhoami(c, whoamiPort);
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(gatewayConfig()));
  for (const g of gateways) await startGateway(g);
  for (const w of steered) {
    await writeFile(join(dir, `w${w}.json`), JSON.stringify(nodeConfig(w, 1)));
    const log = openSync(join(dir, `w${w}.log`), 'a');
    const argv = ['node', '--config', join(dir, `w${w}.json`), '--node', `w${w}`, '--reload-ms', '100'];
    nodeAgents.push(
      c.spawn(c.worker(w), [process.execPath, main, ...argv, '--state-dir', join(dir, `w${w}-state`)], {
        stdio: ['ignore', log, log],
      }),
    );
    closeSync(log);
  }
}, 120_000);

afterAll(async () => {
  for (const agent of [...nodeAgents, ...[...gatewayAgents.values()].map((a) => a.child)]) await stopProcess(agent);
  await whoami?.stop();
  await c?.destroy();
  for (const name of ['g1', 'g2', 'w1', 'w2']) {
    const log = await readFile(join(dir, `${name}.log`), 'utf8').catch(() => '');
    const errors = log.split('\n').filter((line) => line && !line.includes('"level":"info"'));
    if (errors.length) console.log(`${name} logged:\n${errors.slice(0, 20).join('\n')}`);
  }
  await rm(dir, { recursive: true, force: true });
});

describe('failover addresses in the kernel', () => {
  it('takes a pod with egress addresses out with them from the node that owns them, and moves them with their neighbour entries', async () => {
    await own(1, [egress.v4, egress.v6]);
    expect((await failoverAddressesOf(1)).sort()).toEqual([egress.v4, egress.v6].sort());
    await steerTo(1);
    expect(await seenFrom(1)).toEqual({ v4: [egress.v4], v6: [egress.v6] });
    expect(await carries(1)).toBe(true);
    // A pod without egress addresses keeps the node's own address on its uplinks.
    const own1 = await seenFrom(2);
    for (const seen of own1.v4) expect([sharedUplinkAddress(1, 1).v4, sharedUplinkAddress(1, 2).v4]).toContain(seen);
    for (const seen of own1.v6) expect([sharedUplinkAddress(1, 1).v6, sharedUplinkAddress(1, 2).v6]).toContain(seen);
    const [g1, g2] = [await macOf(c.gateway(1), 'up1'), await macOf(c.gateway(2), 'up1')];
    expect(await ispNeighbour(egress.v4)).toBe(g1);
    expect(await ispNeighbour(egress.v6)).toBe(g1);

    await own(1, []);
    expect(await failoverAddressesOf(1)).toEqual([]);
    const claimed = performance.now();
    await own(2, [egress.v4, egress.v6]);
    // The claim announced the addresses: the ISP's entries moved before any new flow.
    await until('the ISP reaches the addresses at g2', async () =>
      (await ispNeighbour(egress.v4)) === g2 && (await ispNeighbour(egress.v6)) === g2 ? true : undefined,
    );
    console.log(`claim on g2 → ISP's neighbour entries at g2: ${Math.round(performance.now() - claimed)} ms`);
    expect((await failoverAddressesOf(2)).sort()).toEqual([egress.v4, egress.v6].sort());
    expect(
      JSON.parse((await c.exec(c.gateway(2), ['curl', '-sf', 'http://127.0.0.1:7741/steering'])).stdout),
    ).toMatchObject({
      addresses: [egress.v4, egress.v6].sort(),
    });
    await steerTo(2);
    expect(await seenFrom(1)).toEqual({ v4: [egress.v4], v6: [egress.v6] });
    expect(await carries(2)).toBe(true);
    const own2 = await seenFrom(2);
    for (const seen of own2.v4) expect([sharedUplinkAddress(2, 1).v4, sharedUplinkAddress(2, 2).v4]).toContain(seen);
  });

  it('silences a node whose agent was SIGKILLed for the addresses it keeps, within the lease', async () => {
    const [g1, g2] = [await macOf(c.gateway(1), 'up1'), await macOf(c.gateway(2), 'up1')];
    const probe = await probeNeighbours();
    try {
      // A live agent keeps extending the fence: g2 answers for three lease durations and more.
      const alive = monotonicMs();
      await sleep(4 * leaseMs);
      expect(lastAnswers(probe.answers, g2, alive + 3 * leaseMs)).toEqual({
        v4: expect.any(Number),
        v6: expect.any(Number),
      });
      expect(lastAnswers(probe.answers, g1, alive)).toEqual({ v4: undefined, v6: undefined });

      // An agent that hangs (stopped) extends nothing either; once it runs again, it does.
      const { child } = gatewayAgents.get(2)!;
      const hung = monotonicMs();
      child.kill('SIGSTOP');
      await sleep(leaseMs + 600);
      const silentAfterHang = lastAnswers(probe.answers, g2, hung);
      console.log(
        `SIGSTOP of g2's agent → g2's last answer: IPv4 ${silentAfterHang.v4} ms, IPv6 ${silentAfterHang.v6} ms`,
      );
      expect(silentAfterHang.v4).toBeLessThanOrEqual(leaseMs + 100);
      expect(silentAfterHang.v6).toBeLessThanOrEqual(leaseMs + 100);
      const resumed = monotonicMs();
      child.kill('SIGCONT');
      await sleep(2 * leaseMs);
      expect(lastAnswers(probe.answers, g2, resumed + leaseMs)).toEqual({
        v4: expect.any(Number),
        v6: expect.any(Number),
      });

      const exited = new Promise((resolve) => child.once('exit', resolve));
      const killed = monotonicMs();
      child.kill('SIGKILL');
      await exited;
      await sleep(leaseMs + 600);
      // The addresses stay on the interface, but the kernel no longer answers for them.
      expect((await failoverAddressesOf(2)).sort()).toEqual([egress.v4, egress.v6].sort());
      const silentAfter = lastAnswers(probe.answers, g2, killed);
      console.log(`SIGKILL of g2's agent → g2's last answer: IPv4 ${silentAfter.v4} ms, IPv6 ${silentAfter.v6} ms`);
      expect(silentAfter.v4).toBeLessThanOrEqual(leaseMs + 100);
      expect(silentAfter.v6).toBeLessThanOrEqual(leaseMs + 100);
      const quiet = monotonicMs();
      await sleep(300);
      expect(lastAnswers(probe.answers, g2, quiet)).toEqual({ v4: undefined, v6: undefined });

      // The new owner answers, alone.
      const claimed = monotonicMs();
      await own(1, [egress.v4, egress.v6]);
      await sleep(4 * leaseMs);
      expect(lastAnswers(probe.answers, g1, claimed + 3 * leaseMs)).toEqual({
        v4: expect.any(Number),
        v6: expect.any(Number),
      });
      expect(lastAnswers(probe.answers, g2, claimed)).toEqual({ v4: undefined, v6: undefined });
      await until('the ISP reaches the addresses at g1', async () =>
        (await ispNeighbour(egress.v4)) === g1 && (await ispNeighbour(egress.v6)) === g1 ? true : undefined,
      );

      // Restarted, g2's agent allows nothing until told what it owns, and then removes the addresses.
      const restarted = monotonicMs();
      await startGateway(2);
      await own(2, []);
      expect(await failoverAddressesOf(2)).toEqual([]);
      await sleep(2 * leaseMs);
      expect(lastAnswers(probe.answers, g2, restarted)).toEqual({ v4: undefined, v6: undefined });
      expect(lastAnswers(probe.answers, g1, restarted + leaseMs)).toEqual({
        v4: expect.any(Number),
        v6: expect.any(Number),
      });
      // The restart made the fence afresh: both tables, guarding the addresses, allowing none.
      for (const family of ['arp', 'inet']) {
        const sets = await Promise.all(
          ['guarded', 'allowed'].map(
            async (set) => (await c.exec(c.gateway(2), ['nft', 'list', 'set', family, 'naat-fence', set])).stdout,
          ),
        );
        expect(sets[0]).toContain(family === 'arp' ? egress.v4 : egress.v6);
        expect(sets[1]).not.toContain('elements');
      }
    } finally {
      await probe.stop();
    }
  });

  it('takes the failover addresses off the interfaces when the agent stops', async () => {
    const { child } = gatewayAgents.get(1)!;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
    expect(await failoverAddressesOf(1)).toEqual([]);
  });
});
