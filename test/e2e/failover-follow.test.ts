// A source node follows the owner of its pod's failover addresses, in the cluster of network
// namespaces of cluster-topology.ts: the real node agent (`dataplane/main.ts node`) on worker w1,
// with a NodeConfig whose gateway has failover addresses and whose pod leaves by one of each
// family, and the real gateway agents on g1 and g2 for the data path. Which gateway node owns the
// addresses is what the gateway nodes' /steering answers say; the test gives those answers itself
// (programs/steering-answers.ts, over mutual TLS with each gateway node's own certificate, at the
// health port of the node config), since the answer is the contract the node agent follows.
//
// Counted on each gateway node as the pod's packets come out of the tunnel: a long-lived TCP
// stream and new flows reach the owner alone; when another node claims the addresses, the old
// owner still listing them, both move within one answer interval and the route change, and
// nothing reaches the old owner afterwards; with no owner, new flows are dropped on the worker and
// counted there. IPv4 and IPv6.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rendezvous } from '../../common/index.ts';
import type { NodeAgentReport } from '../../dataplane/steering/node-agent.ts';
import { tunnelLinkLocal } from '../../dataplane/steering/tunnel.ts';
import {
  createCluster,
  gatewayAddress,
  gatewayUplinks,
  gateways,
  isps,
  nodeNetwork,
  podAddress,
  podNetwork,
  printAgentErrors,
  uplinkAddress,
  workerAddress,
  writeClusterTls,
  type Cluster,
} from './cluster-topology.ts';
import { renderedListenArgs } from './rendered-agent.ts';
import { server, stopProcess, until } from './topology.ts';
import { connectMany, startStreamServer, startTransfer, startWhoami, type Server } from './traffic.ts';
import { makeTestCa } from '../tls.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const answersProgram = join(import.meta.dirname, 'programs', 'steering-answers.ts');
const whoamiPort = 9000;
const streamPort = 9100;
const tunnel = { vni: 7700, port: 4790 };
/** Where the test answers /steering on the gateway nodes (the gateway agents keep 7741). */
const answerPort = 7751;
/** The node agent's peer monitor asks for one answer per this interval (defaultPeerCheck). */
const answerIntervalMs = 200;
const egress = { v4: '198.51.100.10', v6: '2001:db8:100::10' };
const families = ['v4', 'v6'] as const;
type Family = (typeof families)[number];
const pod = podAddress(1);

let c: Cluster;
let dir: string;
const servers: Server[] = [];
const agents: ChildProcess[] = [];
const answers = new Map<number, ChildProcess>();

const gatewayConfig = {
  version: 1,
  gateway: 'egress',
  hash: 'gw-1',
  sources: [podNetwork.v4, podNetwork.v6],
  pods: [{ namespace: 'shop', name: 'web-1', addresses: [pod.v4, pod.v6], node: 'w1' }],
  uplinks: gateways.flatMap((g) => gatewayUplinks(g, whoamiPort)),
  balancing: { mode: 'Weighted' },
  timeouts: {},
  steering: {
    tunnel,
    markMask: 0x10,
    sources: [{ node: 'w1', addresses: [workerAddress(1).v4, workerAddress(1).v6] }],
  },
};

const nodeConfig = {
  version: 1,
  node: 'w1',
  hash: 'node-1',
  markMask: 0xe0,
  gateways: [
    {
      gateway: 'egress',
      tunnel,
      selection: 'Pod',
      associationPort: 7740,
      healthPort: answerPort,
      bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
      pods: [{ namespace: 'shop', name: 'web-1', addresses: [pod.v4, pod.v6], egress: [egress.v4, egress.v6] }],
      peers: gateways.map((g) => ({ node: `g${g}`, addresses: [gatewayAddress(g).v4, gatewayAddress(g).v6] })),
      failover: { addresses: [egress.v4, egress.v6] },
    },
  ],
};

// The first owner is the gateway node that rendezvous hashing would not pick for the pod, so that
// only the owner can explain where its flows go.
const first = rendezvous('shop/web-1', ['g1', 'g2']) === 'g1' ? 2 : 1;
const second = first === 1 ? 2 : 1;

/** Sets what gateway node g's /steering answers say it owns. */
function own(g: number, addresses: string[]): void {
  answers.get(g)!.stdin!.write(`${JSON.stringify({ addresses })}\n`);
}

async function nodeStatus(): Promise<NodeAgentReport> {
  const { stdout } = await c.exec(c.worker(1), ['curl', '-sf', 'http://127.0.0.1:7742/status']);
  return JSON.parse(stdout) as NodeAgentReport;
}

/** Waits until the node agent routes both addresses to `owner` (a gateway node's number, or none). */
async function ownedBy(owner: number | undefined): Promise<NodeAgentReport> {
  return until(`w1 follows owner ${owner ?? 'none'}`, async () => {
    const status = await nodeStatus();
    const slots = status.slots ?? [];
    const want = owner === undefined ? undefined : `g${owner}`;
    return slots.length === 2 && slots.every((s) => s.owner === want) ? status : undefined;
  });
}

// On each gateway node, the pod's packets as they come out of the tunnel: those of the stream, and all of them.
const countRules = `table inet follow {
  counter stream-v4 {}
  counter stream-v6 {}
  counter all-v4 {}
  counter all-v6 {}
  chain prerouting {
    type filter hook prerouting priority raw - 10;
    iifname "naatg${tunnel.vni}" ip saddr ${pod.v4} tcp dport ${streamPort} counter name stream-v4
    iifname "naatg${tunnel.vni}" ip6 saddr ${pod.v6} tcp dport ${streamPort} counter name stream-v6
    iifname "naatg${tunnel.vni}" ip saddr ${pod.v4} counter name all-v4
    iifname "naatg${tunnel.vni}" ip6 saddr ${pod.v6} counter name all-v6
  }
}
`;

type Counts = Record<`${'stream' | 'all'}-${Family}`, number>;
async function counts(g: number): Promise<Counts> {
  const { stdout } = await c.exec(c.gateway(g), ['nft', 'list', 'table', 'inet', 'follow']);
  const read = (name: string) => Number(new RegExp(`counter ${name} \\{\\s*packets (\\d+)`).exec(stdout)?.[1]);
  return {
    'stream-v4': read('stream-v4'),
    'stream-v6': read('stream-v6'),
    'all-v4': read('all-v4'),
    'all-v6': read('all-v6'),
  };
}

/** Packets of new flows the worker dropped for want of an owner of their address. */
async function dropsOnWorker(): Promise<number> {
  const { stdout } = await c.exec(c.worker(1), ['nft', 'list', 'table', 'inet', 'naat_node']);
  const dropped = [
    ...stdout.matchAll(/counter packets (\d+) bytes \d+ drop comment "egress: no gateway node owns [^",]+"/g),
  ];
  return dropped.reduce((sum, m) => sum + Number(m[1]), 0);
}

const uplinkAddresses = (g: number) => new Set(isps.flatMap((i) => [uplinkAddress(g, i).v4, uplinkAddress(g, i).v6]));

/** New flows of both families from the pod: every one answered, from gateway node g's uplinks. */
async function newFlowsLeaveBy(g: number): Promise<void> {
  for (const f of families) {
    const result = await connectMany(c, c.pod(1), server[f], whoamiPort, 5);
    expect({ f, failures: result.failures, error: result.error }).toEqual({ f, failures: 0, error: undefined });
    for (const answer of result.answers) expect(uplinkAddresses(g)).toContain(answer.split(' ')[0]);
  }
}

beforeAll(async () => {
  c = await createCluster();
  dir = await mkdtemp(join(tmpdir(), 'naat-failover-follow-'));
  const tlsDir = writeClusterTls(dir, makeTestCa());
  servers.push(await startWhoami(c, whoamiPort), await startStreamServer(c, streamPort));
  // The server does not reset the stream when its packets reach it through the other gateway
  // node (no node translates them to the same address here): the stream lives on, its packets
  // keep coming, and the test sees where they go.
  await c.exec(c.ns.srv, ['nft', '-f', '-'], {
    input: `table inet keep {
  chain output {
    type filter hook output priority 0;
    tcp sport ${streamPort} tcp flags & rst == rst drop
  }
}
`,
  });
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(gatewayConfig));
  await writeFile(join(dir, 'w1.json'), JSON.stringify(nodeConfig));
  const log = (name: string) => openSync(join(dir, `${name}.log`), 'a');
  for (const g of gateways) {
    await c.exec(c.gateway(g), ['nft', '-f', '-'], { input: countRules });
    const out = log(`g${g}`);
    agents.push(
      c.spawn(
        c.gateway(g),
        [
          process.execPath,
          main,
          'run',
          '--config',
          join(dir, 'gateway.json'),
          '--node',
          `g${g}`,
          ...renderedListenArgs({ health: 7741, metrics: 7749 }),
          '--state-dir',
          join(dir, `g${g}-state`),
          '--tls-dir',
          tlsDir(`g${g}`),
        ],
        { stdio: ['ignore', out, out] },
      ),
    );
    closeSync(out);
    const answering = c.spawn(c.gateway(g), [process.execPath, answersProgram, tlsDir(`g${g}`), String(answerPort)], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    answers.set(g, answering);
    await new Promise<void>((resolve, reject) => {
      answering.stdout!.on('data', (data: Buffer) => data.toString().includes('listening') && resolve());
      answering.once('exit', (code) => reject(new Error(`the /steering answers of g${g} exited with ${code}`)));
    });
  }
  own(first, [egress.v4, egress.v6]);
  own(second, []);
  const out = log('w1');
  agents.push(
    c.spawn(
      c.worker(1),
      [
        process.execPath,
        main,
        'node',
        '--config',
        join(dir, 'w1.json'),
        '--node',
        'w1',
        '--state-dir',
        join(dir, 'w1-state'),
        '--tls-dir',
        tlsDir('w1'),
      ],
      { stdio: ['ignore', out, out] },
    ),
  );
  closeSync(out);
  for (const g of gateways) {
    await until(`g${g} healthy`, async () => {
      const { stdout } = await c.exec(c.gateway(g), ['curl', '-sf', 'http://127.0.0.1:7741/status']);
      const { uplinks = [] } = JSON.parse(stdout) as { uplinks?: Array<{ healthy: boolean }> };
      return uplinks.length && uplinks.every((u) => u.healthy) ? true : undefined;
    });
  }
  await ownedBy(first);
}, 120_000);

afterAll(async () => {
  for (const child of [...agents, ...answers.values()]) await stopProcess(child);
  for (const s of servers) await s.stop();
  await c?.destroy();
  await printAgentErrors(dir, ['g1', 'g2', 'w1']);
  await rm(dir, { recursive: true, force: true });
});

describe('a source node follows the owner of its pod’s failover addresses', () => {
  it('sends a long-lived stream and new flows to the owner, moves both with the address, and drops them without one', async () => {
    const transfers = families.map((f) =>
      startTransfer(c, c.pod(1), server[f], streamPort, { seconds: 60, bytesPerSecond: 50_000, idleTimeoutMs: 60_000 }),
    );
    for (const t of transfers) t.result.catch(() => {});
    await Promise.all(transfers.map((t) => t.receiving));
    await newFlowsLeaveBy(first);
    const before = await counts(first);
    expect(before['stream-v4'] * before['stream-v6']).toBeGreaterThan(0);
    expect(await counts(second)).toEqual({ 'stream-v4': 0, 'stream-v6': 0, 'all-v4': 0, 'all-v6': 0 });

    // The second takes the addresses over while the first still lists them (as after a power-off,
    // the dead owner's answers not late yet): the newer claim wins at once, and the stream's next
    // packets, and new flows, reach the second.
    const slots = (await nodeStatus()).slots!;
    const base = await counts(second);
    const claimed = performance.now();
    const claimedAt = Date.now();
    own(second, [egress.v4, egress.v6]);
    const movedAfter = async (what: string, moved: () => Promise<boolean>) =>
      until(what, async () => ((await moved()) ? performance.now() - claimed : undefined), 5000);
    const [route, streamV4, streamV6] = await Promise.all([
      movedAfter('the slot routes via the new owner', async () => {
        const { stdout } = await c.exec(c.worker(1), [
          'ip',
          '-6',
          'route',
          'show',
          'table',
          String(7800 + slots[0]!.id),
        ]);
        return stdout.includes(tunnelLinkLocal(`g${second}`));
      }),
      movedAfter(
        'the IPv4 stream reaches the new owner',
        async () => (await counts(second))['stream-v4'] > base['stream-v4'],
      ),
      movedAfter(
        'the IPv6 stream reaches the new owner',
        async () => (await counts(second))['stream-v6'] > base['stream-v6'],
      ),
    ]);
    // The node agent moved the slots alone (their routes, no full sync): the apply time within those figures.
    const { lastOwnerChange } = await nodeStatus();
    expect(Date.parse(lastOwnerChange!.at)).toBeGreaterThanOrEqual(claimedAt);
    console.log(
      `after another node claimed (answers every ${answerIntervalMs} ms): slot route moved after ${route.toFixed(0)} ms, ` +
        `stream packets at the new owner after ${streamV4.toFixed(0)} ms (IPv4) and ${streamV6.toFixed(0)} ms (IPv6); ` +
        `the node agent moved the slots in ${lastOwnerChange!.durationMs.toFixed(0)} ms`,
    );
    expect(Math.max(streamV4, streamV6)).toBeLessThanOrEqual(answerIntervalMs + 800);
    await newFlowsLeaveBy(second);
    // Nothing reaches the old owner any more, while the stream goes on at the new one.
    const old = await counts(first);
    const moved = await counts(second);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    await newFlowsLeaveBy(second);
    expect(await counts(first)).toEqual(old);
    const later = await counts(second);
    expect(later['stream-v4'] > moved['stream-v4'] || later['stream-v6'] > moved['stream-v6']).toBe(true);
    // The first lets go: nothing moves.
    own(first, []);
    await new Promise((resolve) => setTimeout(resolve, 3 * answerIntervalMs));
    expect((await nodeStatus()).slots!.map((s) => s.owner)).toEqual([`g${second}`, `g${second}`]);

    // No owner: new flows are dropped on the worker and counted, and nothing reaches either node.
    own(second, []);
    await ownedBy(undefined);
    const quiet = await Promise.all(gateways.map(counts));
    const dropsBefore = await dropsOnWorker();
    for (const f of families) {
      const result = await connectMany(c, c.pod(1), server[f], whoamiPort, 3, { timeoutMs: 500 });
      expect({ f, failures: result.failures }).toEqual({ f, failures: 3 });
    }
    expect((await dropsOnWorker()) - dropsBefore).toBeGreaterThanOrEqual(6);
    expect(await Promise.all(gateways.map(counts))).toEqual(quiet);

    // An owner again: new flows go to it.
    own(first, [egress.v4, egress.v6]);
    await ownedBy(first);
    await newFlowsLeaveBy(first);
    expect(await c.serverPacketsFromInside()).toBe(0);
  }, 120_000);
});
