// The end-to-end topology itself, with plain routes through uplink 1 instead of the dataplane:
// traffic reaches the server from a pod's own address, an outage cuts it and its end restores
// it, and nothing is left behind.
import { execFileSync } from 'node:child_process';
import {
  createTopology,
  ispServerSide,
  podAddress,
  podNetwork,
  server,
  uplinkAddress,
  uplinkNextHop,
  type Topology,
} from './topology.ts';
import {
  connectMany,
  fetchFtp,
  iperf,
  ping,
  startFtpServer,
  startStreamServer,
  startTransfer,
  startWhoami,
  type FtpServer,
} from './traffic.ts';

let topology: Topology;
let pod1: string;
let ftp: FtpServer;
const whoamiPort = 9000;
const streamPort = 9100;

beforeAll(async () => {
  topology = await createTopology();
  pod1 = topology.ns.pods[0]!;
  // What the dataplane would otherwise provide, and a way back to the pods, which only this test
  // gives the ISP and the server.
  const [isp1] = topology.ns.isps as [string];
  for (const family of ['v4', 'v6'] as const) {
    await topology.exec(topology.ns.gw, ['ip', 'route', 'add', server[family], 'via', uplinkNextHop(1)[family]]);
    await topology.exec(isp1, ['ip', 'route', 'add', podNetwork[family], 'via', uplinkAddress(1)[family]]);
    await topology.exec(topology.ns.srv, ['ip', 'route', 'add', podNetwork[family], 'via', ispServerSide(1)[family]]);
  }
  await startWhoami(topology, whoamiPort);
  ftp = await startFtpServer(topology);
});

afterAll(async () => {
  await ftp?.stop();
  await topology?.destroy();
});

test.each(['v4', 'v6'] as const)('a pod reaches the server over IP%s from its own address', async (family) => {
  const { answers, failures } = await connectMany(topology, pod1, server[family], whoamiPort, 200);
  expect(failures).toBe(0);
  expect(answers).toHaveLength(200);
  expect(new Set(answers.map((answer) => answer.split(' ')[0]))).toEqual(new Set([podAddress(1)[family]]));
  expect(new Set(answers).size).toBe(200);

  const udp = await connectMany(topology, pod1, server[family], whoamiPort, 20, { transport: 'udp' });
  expect(udp.failures).toBe(0);
  expect(udp.answers.every((answer) => answer.startsWith(`${podAddress(1)[family]} `))).toBe(true);
  expect(await topology.serverPacketsFromPods()).toBeGreaterThan(0);
});

test('ping with a chosen identifier gets answers in both families', async () => {
  expect(await ping(topology, pod1, server.v4, { identifier: 4242 })).toBe(true);
  expect(await ping(topology, pod1, server.v6, { identifier: 4243 })).toBe(true);
});

test.each([
  ['EPSV', server.v4, {}],
  ['EPRT', server.v4, { active: true }],
  ['PASV', server.v4, { classic: true }],
  ['PORT', server.v4, { active: true, classic: true }],
  ['EPSV', server.v6, {}],
  ['EPRT', server.v6, { active: true }],
] as const)('FTP with %s to %s delivers the file', async (_, address, options) => {
  const content = await fetchFtp(topology, pod1, address, options);
  expect(content.equals(ftp.content)).toBe(true);
});

test('an outage of the ISP cuts connections and its end brings them back', async () => {
  await topology.failUplink(1);
  const during = await connectMany(topology, pod1, server.v4, whoamiPort, 10, { timeoutMs: 500 });
  expect(during).toMatchObject({ answers: [], failures: 10 });
  expect(await ping(topology, pod1, server.v6, { identifier: 4244, count: 1 })).toBe(false);

  await topology.restoreUplink(1);
  const after = await connectMany(topology, pod1, server.v4, whoamiPort, 10);
  expect(after.failures).toBe(0);
});

test('a degraded uplink delays, loses and limits what it sends towards the gateway, until cleaned', async () => {
  const fastest = async () => {
    const { stdout } = await topology.exec(pod1, ['ping', '-n', '-q', '-c', '3', '-i', '0.2', server.v6]);
    return Number(/= ([\d.]+)\//.exec(stdout)![1]);
  };
  await topology.degradeUplink(1, { delayMs: 100 });
  expect(await fastest()).toBeGreaterThanOrEqual(100);
  await topology.degradeUplink(1, { lossPercent: 100 });
  expect(await ping(topology, pod1, server.v4, { identifier: 4245, count: 2 })).toBe(false);
  await topology.degradeUplink(1, { rateMbit: 20 });
  const rate = await iperf(topology, pod1, server.v4, { reverse: true, seconds: 1 });
  expect(rate).toBeLessThan(22e6);
  expect(rate).toBeGreaterThan(10e6);

  await topology.degradeUplink(1, {});
  expect(await fastest()).toBeLessThan(10);
  expect(await iperf(topology, pod1, server.v4, { reverse: true, seconds: 1 })).toBeGreaterThan(100e6);
});

test('a long transfer survives a short outage and reports every byte', async () => {
  await startStreamServer(topology, streamPort);
  const transfer = startTransfer(topology, pod1, server.v6, streamPort, { seconds: 2, idleTimeoutMs: 5000 });
  await transfer.receiving;
  await topology.failUplink(1);
  await new Promise((resolve) => setTimeout(resolve, 500));
  await topology.restoreUplink(1);
  expect(await transfer.result).toEqual({ ok: true, bytes: 200_000, expected: 200_000 });
});

test('destroy leaves no namespace behind, and can be called again', async () => {
  const other = await createTopology({ pods: 1, uplinks: 1 });
  await startWhoami(other);
  const listed = () => execFileSync('ip', ['netns', 'list']).toString();
  expect(listed()).toContain(other.ns.srv);
  await other.destroy();
  await other.destroy();
  expect(listed()).not.toContain(other.prefix);
});
