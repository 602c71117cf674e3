// The replication stream between gateway agents over real mutual TLS on loopback: a FlowSource
// served as the agent serves it (plainAndMutualTls), FlowFollowers with their nodes' certificates.
import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'node:https';
import { request as plainRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { makeTestCa, writeTlsDir } from '../../test/tls.ts';
import type { Flow } from '../conntrack.ts';
import { plainAndMutualTls, secureContextOptions, TlsDir } from '../link-tls.ts';
import { FlowFollower } from './flow-follower.ts';
import { FlowSource, flowsPath } from './flow-source.ts';

const address = '100.64.1.100';
const flow = (sourcePort: number, protocol = 'tcp'): Flow => ({
  id: sourcePort,
  family: 4,
  protocol,
  source: '10.244.2.2',
  sourcePort,
  destination: '203.0.113.10',
  destinationPort: 443,
  mappedAddress: address,
  mappedPort: 20_000 + sourcePort,
  uplink: 1,
  mark: 1,
  timeoutSeconds: 300,
  startedAt: new Date(0),
});

const ca = makeTestCa();
let dir: string;
const dirs = new Map<string, TlsDir>();
const closers: (() => void)[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-flow-stream-'));
  for (const node of ['a', 'b', 'c', 'stranger']) {
    writeTlsDir(join(dir, node), ca, node, ['127.0.0.1', '127.0.0.2']);
    const tls = new TlsDir(join(dir, node));
    await tls.ready();
    dirs.set(node, tls);
  }
});

afterAll(async () => {
  for (const close of closers) close();
  for (const tls of dirs.values()) tls.stop();
  await rm(dir, { recursive: true, force: true });
});

async function listen(handle: Parameters<typeof plainAndMutualTls>[1], host = '127.0.0.1', port = 0): Promise<number> {
  const server: Server = plainAndMutualTls(dirs.get('a')!, handle);
  await new Promise<void>((resolve) => server.listen({ host, port }, resolve));
  closers.push(() => server.close());
  return (server.address() as AddressInfo).port;
}

function follower(node: string, port: number, peers = [{ node: 'a', addresses: ['127.0.0.1'] }]): FlowFollower {
  const f = new FlowFollower({
    peers,
    port,
    addresses: [address],
    tls: () => dirs.get(node)!.current(),
    retryMs: 50,
  });
  f.start();
  closers.push(() => f.stop());
  return f;
}

const eventually = async (check: () => boolean) => {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
};

/** The source ports of the flows a follower holds of the address, in its replica's order. */
const sourcePorts = (f: FlowFollower) =>
  f.replica
    .flows(address, Date.now())
    .map((flow) => flow.sourcePort)
    .join();

describe('/failover/flows', () => {
  it('streams the owned flows to the gateway’s nodes as they come and go, in rounds', async () => {
    let listed = [flow(1), flow(2, 'udp')];
    const source = new FlowSource({ list: async () => listed, refreshMs: 100 });
    source.setOwned([address]);
    source.setPeers(['b', 'c']);
    source.start();
    closers.push(() => source.stop());
    const port = await listen((req, res, node) => source.handle(req, res, node));
    const b = follower('b', port);
    await eventually(() => b.replica.size === 2);
    // The kernel's table changes, and its events say so.
    listed = [flow(2, 'udp'), flow(3)];
    source.onEvents([{ type: 'new', flow: flow(3) }]);
    source.onEvents([{ type: 'destroy', flow: flow(1) }]);
    await eventually(() => sourcePorts(b) === '2,3');
    // The next round lists flow 3 no more: gone from the replica too.
    listed = [flow(2, 'udp')];
    await eventually(() => b.replica.size === 1);
    // A follower that comes later gets the whole round at once.
    const c = follower('c', port);
    await eventually(() => c.replica.size === 1);
    expect(c.connected()).toEqual(['a']);
    expect(b.refused + c.refused).toBe(0);
  });

  it('counts a peer synced once its first whole round arrived, not when its stream opens', async () => {
    let listed: () => void = () => {};
    const listing = new Promise<void>((resolve) => (listed = resolve));
    const source = new FlowSource({
      list: async () => {
        await listing;
        return [flow(1)];
      },
      refreshMs: 60_000,
    });
    source.setOwned([address]);
    source.setPeers(['b']);
    source.start();
    closers.push(() => source.stop());
    const port = await listen((req, res, node) => source.handle(req, res, node));
    const b = follower('b', port);
    await eventually(() => b.connected().length === 1);
    expect([...b.synced()]).toEqual([]);
    listed();
    await eventually(() => b.synced().has('a'));
    expect(b.replica.size).toBe(1);
  });

  it('keeps the replica of an owner whose restarted agent streams before it has listed its flows', async () => {
    const first = new FlowSource({ list: async () => [flow(1), flow(2)], refreshMs: 60_000 });
    first.setOwned([address]);
    first.setPeers(['b']);
    first.start();
    let current = first;
    let streams = 0;
    const port = await listen((req, res, node) => {
      streams++;
      current.handle(req, res, node);
    });
    const b = follower('b', port);
    await eventually(() => b.replica.size === 2);
    // The owner's agent restarts: the new one knows no flow until its listing, which is slow.
    let listed: () => void = () => {};
    const listing = new Promise<void>((resolve) => (listed = resolve));
    const second = new FlowSource({
      list: async () => {
        await listing;
        return [flow(2), flow(3)];
      },
      refreshMs: 60_000,
    });
    second.setOwned([address]);
    second.setPeers(['b']);
    second.start();
    closers.push(() => second.stop());
    current = second;
    first.stop();
    await eventually(() => streams === 2 && b.connected().length === 1);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(sourcePorts(b)).toBe('1,2');
    // Its first whole round replaces them.
    listed();
    await eventually(() => sourcePorts(b) === '2,3');
  });

  it('keeps a silent peer’s flows, and takes its whole round on the stream opened when it is heard again', async () => {
    let connections = 0;
    const port = await listen((_req, res) => {
      connections++;
      // The first stream goes silent after its round (a cut); the second is never answered (the
      // peer still cut off); the third carries the peer's flows now.
      if (connections === 2) return;
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      if (connections === 1) res.write('["flow","tcp","10.244.2.2",1,"203.0.113.10",443,"100.64.1.100",20001,1,300]\n');
      else res.write('["flow","tcp","10.244.2.2",2,"203.0.113.10",443,"100.64.1.100",20002,1,300]\n');
      res.write('["synced"]\n');
    });
    const b = follower('b', port);
    const ports = () =>
      b.replica
        .flows(address, Date.now())
        .map((f) => f.sourcePort)
        .join();
    await eventually(() => ports() === '1');
    b.reconnect('a');
    await eventually(() => connections === 2);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(ports()).toBe('1');
    b.reconnect('a');
    await eventually(() => ports() === '2');
    expect(connections).toBe(3);
  });

  it('is answered to the gateway’s other nodes over mutual TLS only', async () => {
    const source = new FlowSource({ list: async () => [flow(1)] });
    source.setOwned([address]);
    source.setPeers(['b']);
    const port = await listen((req, res, node) => source.handle(req, res, node));
    const status = (secure: boolean, node = 'stranger') =>
      new Promise<number | undefined>((resolve) => {
        const options = { host: '127.0.0.1', port, path: flowsPath, agent: false };
        const req = secure
          ? request({ ...options, ...secureContextOptions(dirs.get(node)!.current()!) })
          : plainRequest(options);
        req.on('response', (res) => {
          resolve(res.statusCode);
          res.destroy();
        });
        req.on('error', () => resolve(undefined));
        req.end();
      });
    expect(await status(false)).toBe(403);
    expect(await status(true, 'stranger')).toBe(403);
    expect(await status(true, 'b')).toBe(200);
  });

  it('refuses malformed, foreign and oversized messages of one peer and keeps the others’ streams', async () => {
    const good = '["flow","tcp","10.244.2.2",1,"203.0.113.10",443,"100.64.1.100",20001,1,300]\n';
    const bad = [
      'not json\n',
      '["flow","tcp","10.244.2.2",2,"203.0.113.10",443,"100.64.9.9",20002,1,300]\n',
      '["flow","tcp","10.244.2.2",3,"203.0.113.10",443,"100.64.1.100",70000,1,300]\n',
    ];
    let connections = 0;
    const port = await listen((_req, res) => {
      connections++;
      res.writeHead(200, { 'content-type': 'application/x-ndjson' });
      res.write(bad.join('') + good);
      // Then a message that never ends: the stream is cut, and opened again.
      res.write('['.padEnd(2048, ' '));
    }, '127.0.0.2');
    const source = new FlowSource({ list: async () => [flow(5)] });
    source.setOwned([address]);
    source.setPeers(['b']);
    source.start();
    closers.push(() => source.stop());
    await listen((req, res, node) => source.handle(req, res, node), '127.0.0.1', port);
    const b = follower('b', port, [
      { node: 'a', addresses: ['127.0.0.2'] },
      { node: 'd', addresses: ['127.0.0.1'] },
    ]);
    await eventually(() => connections >= 2 && b.replica.size === 2);
    expect(
      b.replica
        .flows(address, Date.now())
        .map((f) => f.sourcePort)
        .sort(),
    ).toEqual([1, 5]);
    expect(b.refused).toBeGreaterThanOrEqual(bad.length + 1);
    // The good peer's stream stayed open throughout.
    expect(b.connected()).toContain('d');
    source.onEvents([{ type: 'new', flow: flow(6) }]);
    await eventually(() => b.replica.size === 3);
  });
});
