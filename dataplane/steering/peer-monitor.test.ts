// The peer monitor over a fake watch (thresholds, updates, stop, late answers), and against real
// HTTP servers on this host, streaming as gateway agents do or answering once: one that answers 200
// and then 503, one that stops answering, one that goes away; and over mutual TLS, where a gateway
// node whose certificate does not verify stays down.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TunnelEndpoint } from '../../contracts/gateway/index.ts';
import { makeTestCa, writeTlsDir } from '../../test/tls.ts';
import { plainAndMutualTls, TlsDir } from '../link-tls.ts';
import { rendezvous } from '../../common/index.ts';
import { steeringStreamHeader } from './gateway-readiness.ts';
import {
  chooseOwners,
  createPeerMonitor,
  parseAnswer,
  peerTarget,
  steeringWatch,
  type PeerMonitor,
  type PeerTarget,
  type PeerWatch,
} from './peer-monitor.ts';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const peer = (node: string, ...addresses: string[]): TunnelEndpoint => ({ node, addresses });

/** Resolves once `up()` satisfies `holds`, with the time it took; rejects after `ms`. */
function until(monitor: PeerMonitor, holds: (up: ReadonlySet<string>) => boolean, ms = 3000): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    if (holds(monitor.up())) return resolve(0);
    const timer = setTimeout(() => reject(new Error(`up() is still ${JSON.stringify([...monitor.up()])}`)), ms);
    monitor.onChange(() => {
      if (!holds(monitor.up())) return;
      clearTimeout(timer);
      resolve(performance.now() - started);
    });
  });
}

test('a peer is asked at its IPv4 address when it has one, at its IPv6 address otherwise', () => {
  expect(peerTarget(peer('gw-1', 'fd00::1', '192.0.2.1'), 9091)).toEqual({
    node: 'gw-1',
    host: '192.0.2.1',
    family: 4,
    port: 9091,
  });
  expect(peerTarget(peer('gw-2', 'fd00::2'), 9091)).toEqual({ node: 'gw-2', host: 'fd00::2', family: 6, port: 9091 });
});

describe('owners of failover addresses', () => {
  /** Claims listed since this node's first answers, unless `since` says when a node's began. */
  const claims = (entries: Record<string, string[]>, since: Record<string, number> = {}) =>
    new Map(
      Object.entries(entries).map(([node, addresses]) => [
        node,
        new Map(addresses.map((a) => [a, since[node] ?? -Infinity])),
      ]),
    );

  test('an address one up peer claims is its own; none claimed, no owner', () => {
    expect(chooseOwners(new Map(), claims({ 'gw-1': ['192.0.2.10'], 'gw-2': ['2001:db8::10'] }))).toEqual(
      new Map([
        ['192.0.2.10', 'gw-1'],
        ['2001:db8::10', 'gw-2'],
      ]),
    );
    expect(chooseOwners(new Map([['192.0.2.10', 'gw-1']]), claims({ 'gw-1': [], 'gw-2': [] }))).toEqual(new Map());
  });

  test('claimed by two since the first answers, the owner in use stays; else the same pick on every node', () => {
    const both = claims({ 'gw-1': ['192.0.2.10'], 'gw-2': ['192.0.2.10'] });
    expect(chooseOwners(new Map([['192.0.2.10', 'gw-2']]), both).get('192.0.2.10')).toBe('gw-2');
    expect(chooseOwners(new Map([['192.0.2.10', 'gw-1']]), both).get('192.0.2.10')).toBe('gw-1');
    const fresh = chooseOwners(new Map(), both).get('192.0.2.10');
    expect(fresh).toBe(rendezvous('192.0.2.10', ['gw-2', 'gw-1']));
    expect(chooseOwners(new Map([['192.0.2.10', 'gw-3']]), both).get('192.0.2.10')).toBe(fresh);
  });

  test('claimed by two, the newer claim wins whatever was in use: the older claimant has let its Lease lapse', () => {
    const inUse = new Map([['192.0.2.10', 'gw-1']]);
    const taken = claims({ 'gw-1': ['192.0.2.10'], 'gw-2': ['192.0.2.10'] }, { 'gw-2': 5000 });
    expect(chooseOwners(inUse, taken).get('192.0.2.10')).toBe('gw-2');
    expect(
      chooseOwners(
        inUse,
        claims({ 'gw-1': ['192.0.2.10'], 'gw-2': ['192.0.2.10'] }, { 'gw-1': 4000, 'gw-2': 5000 }),
      ).get('192.0.2.10'),
    ).toBe('gw-2');
    expect(
      chooseOwners(
        new Map([['192.0.2.10', 'gw-2']]),
        claims({ 'gw-1': ['192.0.2.10'], 'gw-2': ['192.0.2.10'] }, { 'gw-1': 5000 }),
      ).get('192.0.2.10'),
    ).toBe('gw-1');
    // Unless the newer one's answers stopped.
    expect(chooseOwners(inUse, taken, new Set(['gw-1'])).get('192.0.2.10')).toBe('gw-1');
  });

  test('claimed by two, one whose answers stopped yields to one that answers, whatever was in use', () => {
    const both = claims({ 'gw-1': ['192.0.2.10'], 'gw-2': ['192.0.2.10'] });
    const inUse = new Map([['192.0.2.10', 'gw-1']]);
    expect(chooseOwners(inUse, both, new Set(['gw-2'])).get('192.0.2.10')).toBe('gw-2');
    expect(chooseOwners(inUse, both, new Set(['gw-1', 'gw-2'])).get('192.0.2.10')).toBe('gw-1');
    // Neither answers: as if both did. One claimant alone keeps its address while it is up.
    expect(chooseOwners(inUse, both, new Set()).get('192.0.2.10')).toBe('gw-1');
    expect(chooseOwners(inUse, claims({ 'gw-1': ['192.0.2.10'] }), new Set()).get('192.0.2.10')).toBe('gw-1');
  });

  test('an answer gives its addresses canonical, and nothing that is not an address', () => {
    expect(parseAnswer('{"ready":true,"addresses":["2001:DB8:0::10","192.0.2.10","x",7]}')).toEqual({
      ready: true,
      addresses: ['2001:db8::10', '192.0.2.10'],
      apiserver: false,
    });
    expect(parseAnswer('{"ready":true}')).toEqual({ ready: true, addresses: [], apiserver: false });
    expect(parseAnswer('null')).toEqual({ ready: false, addresses: [], apiserver: false });
    expect(parseAnswer('{"ready":')).toEqual({ ready: false, addresses: [], apiserver: false });
  });

  test('an answer says the peer reaches the API server only when it says so, and true alone counts', () => {
    expect(parseAnswer('{"ready":true,"apiserver":true}').apiserver).toBe(true);
    expect(parseAnswer('{"ready":true,"apiserver":"yes"}').apiserver).toBe(false);
  });
});

describe('with a fake watch', () => {
  const answers = new Map<string, boolean>();
  /** The addresses each peer says it owns. */
  const owned = new Map<string, string[]>();
  /** Which peers say they reach the API server. */
  const apiserver = new Set<string>();
  const asked: PeerTarget[] = [];
  /** A peer that answers once per connection, as a gateway agent that does not stream. */
  const watch: PeerWatch = async (target, _intervalMs, _signal, onAnswer) => {
    asked.push(target);
    onAnswer(answers.get(target.node) ?? false, owned.get(target.node), apiserver.has(target.node));
  };
  let monitor: PeerMonitor;
  beforeEach(() => {
    answers.clear();
    owned.clear();
    apiserver.clear();
    asked.length = 0;
  });
  afterEach(() => monitor.stop());

  test('a peer is down until its first good answer, and down again after two failed ones', async () => {
    answers.set('gw-1', true);
    answers.set('gw-2', false);
    monitor = createPeerMonitor({
      peers: [peer('gw-1', '192.0.2.1'), peer('gw-2', '192.0.2.2')],
      healthPort: 9091,
      check: { intervalMs: 20, timeoutMs: 20 },
      watch,
    });
    expect(monitor.up()).toEqual(new Set());
    monitor.start();
    await until(monitor, (up) => up.has('gw-1'));
    await sleep(100);
    expect(monitor.up()).toEqual(new Set(['gw-1']));

    answers.set('gw-1', false);
    const failedAt = asked.filter((t) => t.node === 'gw-1').length;
    await until(monitor, (up) => !up.has('gw-1'));
    // The first failed answer changes nothing; the second takes the peer down.
    expect(asked.filter((t) => t.node === 'gw-1').length - failedAt).toBe(2);
    answers.set('gw-2', true);
    await until(monitor, (up) => up.has('gw-2'));
  });

  test('says which up peers reach the API server, and reports a change of what one says', async () => {
    answers.set('gw-1', true);
    answers.set('gw-2', true);
    apiserver.add('gw-1');
    monitor = createPeerMonitor({
      peers: [peer('gw-1', '192.0.2.1'), peer('gw-2', '192.0.2.2')],
      healthPort: 9091,
      check: { intervalMs: 20, timeoutMs: 20 },
      watch,
    });
    let changes = 0;
    monitor.onChange(() => changes++);
    monitor.start();
    await until(monitor, (up) => up.size === 2);
    expect(monitor.apiservers()).toEqual(
      new Map([
        ['gw-1', true],
        ['gw-2', false],
      ]),
    );
    const before = changes;
    apiserver.delete('gw-1');
    await sleep(100);
    expect(monitor.apiservers().get('gw-1')).toBe(false);
    expect(changes).toBeGreaterThan(before);
    // A peer that is down is not heard at all.
    answers.set('gw-2', false);
    await until(monitor, (up) => !up.has('gw-2'));
    expect([...monitor.apiservers().keys()]).toEqual(['gw-1']);
  });

  test('owners are the up peers that say they own an address, and every move is reported', async () => {
    answers.set('gw-1', true);
    answers.set('gw-2', true);
    owned.set('gw-1', ['192.0.2.10']);
    monitor = createPeerMonitor({
      peers: [peer('gw-1', '192.0.2.1'), peer('gw-2', '192.0.2.2')],
      healthPort: 9091,
      check: { intervalMs: 20, timeoutMs: 20 },
      watch,
    });
    const seen: string[] = [];
    monitor.onChange(() => seen.push(JSON.stringify([...monitor.owners()])));
    const owner = (expected: string | undefined) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`owner is ${monitor.owners().get('192.0.2.10')}`)), 3000);
        const check = () => {
          if (monitor.owners().get('192.0.2.10') !== expected) return;
          clearTimeout(timer);
          resolve();
        };
        monitor.onChange(check);
        check();
      });
    monitor.start();
    await owner('gw-1');
    // Released by one and claimed by the other, with both up all along.
    owned.set('gw-1', []);
    owned.set('gw-2', ['192.0.2.10']);
    await owner('gw-2');
    expect(monitor.up()).toEqual(new Set(['gw-1', 'gw-2']));
    // Claimed by both: the newer claim wins, at once.
    owned.set('gw-1', ['192.0.2.10']);
    await owner('gw-1');
    // Its owner down: the other claimant owns it.
    answers.set('gw-1', false);
    await owner('gw-2');
    // A peer that is down owns nothing, whatever it said.
    answers.set('gw-2', false);
    await owner(undefined);
    expect(seen.length).toBeGreaterThanOrEqual(4);
  });

  test('update adds, keeps and drops peers; a dropped peer that was up is reported', async () => {
    answers.set('gw-1', true);
    answers.set('gw-2', true);
    monitor = createPeerMonitor({
      peers: [peer('gw-1', '192.0.2.1')],
      healthPort: 9091,
      check: { intervalMs: 20, timeoutMs: 20 },
      watch,
    });
    monitor.start();
    await until(monitor, (up) => up.has('gw-1'));
    let changes = 0;
    monitor.onChange(() => changes++);
    monitor.update([peer('gw-1', '192.0.2.1'), peer('gw-2', 'fd00::2')]);
    // Kept: still up without a new answer; new: down until it answers.
    expect(monitor.up()).toEqual(new Set(['gw-1']));
    await until(monitor, (up) => up.has('gw-2'));
    monitor.update([peer('gw-2', 'fd00::2')], 9092);
    expect(monitor.up()).toEqual(new Set(['gw-2']));
    expect(changes).toBe(2);
    asked.length = 0;
    await sleep(60);
    expect(new Set(asked.map((t) => `${t.node} ${t.host} ${t.port}`))).toEqual(new Set(['gw-2 fd00::2 9092']));
  });

  test('stop ends the requests; start takes them up again', async () => {
    answers.set('gw-1', true);
    monitor = createPeerMonitor({
      peers: [peer('gw-1', '192.0.2.1')],
      healthPort: 9091,
      check: { intervalMs: 10, timeoutMs: 10 },
      watch,
    });
    monitor.start();
    await until(monitor, (up) => up.has('gw-1'));
    await monitor.stop();
    const count = asked.length;
    await sleep(50);
    expect(asked.length).toBe(count);
    monitor.start();
    await sleep(50);
    expect(asked.length).toBeGreaterThan(count);
  });

  test('a streamed answer that comes late is a failure, and the connection is opened anew at once', async () => {
    let connections = 0;
    let streaming = true;
    const streamed: PeerWatch = (_target, intervalMs, signal, onAnswer) =>
      new Promise((resolve) => {
        connections++;
        const send = () => (streaming ? onAnswer(true) : undefined);
        send();
        const timer = setInterval(send, intervalMs);
        signal.addEventListener('abort', () => {
          clearInterval(timer);
          resolve();
        });
      });
    monitor = createPeerMonitor({
      peers: [peer('gw-1', '192.0.2.1')],
      healthPort: 9091,
      check: { intervalMs: 50, timeoutMs: 50 },
      watch: streamed,
    });
    monitor.start();
    await until(monitor, (up) => up.has('gw-1'));
    await sleep(300);
    // One connection carries every answer.
    expect(connections).toBe(1);
    streaming = false;
    const ms = await until(monitor, (up) => !up.has('gw-1'));
    // Late after 100 ms, then after 50 ms on the connection opened at once.
    expect(ms).toBeLessThan(500);
    expect(connections).toBe(2);
    streaming = true;
    await until(monitor, (up) => up.has('gw-1'));
  });
});

test('an owner that went silent loses its address to the node that took it over at once, before it is late', async () => {
  const silent = new Set<string>();
  const owned = new Map([['gw-1', ['192.0.2.10']]]);
  const streamed: PeerWatch = (target, intervalMs, signal, onAnswer) =>
    new Promise((resolve) => {
      const send = () => (silent.has(target.node) ? undefined : onAnswer(true, owned.get(target.node) ?? []));
      send();
      const timer = setInterval(send, intervalMs);
      signal.addEventListener('abort', () => {
        clearInterval(timer);
        resolve();
      });
    });
  // Late 1 s after its last answer, down only after three late answers.
  const monitor = createPeerMonitor({
    peers: [peer('gw-1', '192.0.2.1'), peer('gw-2', '192.0.2.2')],
    healthPort: 9091,
    check: { intervalMs: 20, timeoutMs: 1000, failureThreshold: 3 },
    watch: streamed,
  });
  try {
    monitor.start();
    await until(monitor, (up) => up.size === 2);
    await sleep(50);
    expect(monitor.owners().get('192.0.2.10')).toBe('gw-1');
    // Powered off: gw-1 says nothing more; gw-2 claims the address a moment later.
    silent.add('gw-1');
    await sleep(20);
    owned.set('gw-2', ['192.0.2.10']);
    const claimed = performance.now();
    await new Promise<void>((resolve) => {
      const check = () => monitor.owners().get('192.0.2.10') === 'gw-2' && resolve();
      monitor.onChange(check);
      check();
    });
    // Both claim it and both are up, gw-1 not even late: the newer claim won.
    expect(performance.now() - claimed).toBeLessThan(1000);
    expect(monitor.up()).toEqual(new Set(['gw-1', 'gw-2']));
  } finally {
    await monitor.stop();
  }
});

describe('against real HTTP servers on this host', () => {
  type Mode = 'ready' | 'unavailable' | 'hang';
  const modes = new Map<number, Mode>();
  const hung: ServerResponse[] = [];
  const servers: Server[] = [];
  async function serve(mode: Mode, streams: boolean): Promise<number> {
    const server = createServer((req, res) => {
      const mode = () => modes.get((server.address() as AddressInfo).port);
      if (streams && req.headers[steeringStreamHeader]) {
        // As a gateway agent streams: a line per interval, none while it hangs.
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        const send = () => mode() === 'hang' || res.write(`${JSON.stringify({ ready: mode() === 'ready' })}\n`);
        send();
        const timer = setInterval(send, Number(req.headers[steeringStreamHeader]));
        return void res.on('close', () => clearInterval(timer));
      }
      if (mode() === 'hang') return void hung.push(res);
      res.statusCode = req.url === '/steering' && mode() === 'ready' ? 200 : 503;
      res.end('{}\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    servers.push(server);
    const port = (server.address() as AddressInfo).port;
    modes.set(port, mode);
    return port;
  }
  afterAll(async () => {
    for (const res of hung) res.destroy();
    for (const server of servers) server.closeAllConnections();
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  });

  /** A monitor of one peer on `port` with the default check, up before the fault. */
  async function watching(port: number): Promise<PeerMonitor> {
    const monitor = createPeerMonitor({ peers: [peer('gw', '127.0.0.1')], healthPort: port });
    monitor.start();
    await until(monitor, (up) => up.has('gw'));
    return monitor;
  }

  const detections: string[] = [];
  afterAll(() => console.log(`peer down detected after (ms): ${detections.join(', ')}`));

  const faults = [
    ['answers 503', (port: number) => void modes.set(port, 'unavailable')],
    ['stops answering', (port: number) => void modes.set(port, 'hang')],
    [
      'goes away',
      (port: number) => {
        const server = servers.find((s) => (s.address() as AddressInfo | null)?.port === port)!;
        server.close();
        server.closeAllConnections();
      },
    ],
  ] as const;
  test.each([
    ...faults.map(([what, fault]) => ['streaming', what, fault] as const),
    ...faults.map(([what, fault]) => ['answering once', what, fault] as const),
  ])('a peer %s that %s is down well within a second, and back at its first good answer', async (how, what, fault) => {
    const port = await serve('ready', how === 'streaming');
    const monitor = await watching(port);
    try {
      fault(port);
      const ms = await until(monitor, (up) => !up.has('gw'));
      detections.push(`${how}, ${what} ${Math.round(ms)}`);
      expect(ms).toBeLessThan(900);
      if (what === 'goes away') return;
      modes.set(port, 'ready');
      expect(await until(monitor, (up) => up.has('gw'))).toBeLessThan(450);
    } finally {
      await monitor.stop();
    }
  });
});

test('a streaming gateway node names the addresses it owns, and the monitor follows them', async () => {
  let addresses = ['2001:DB8::10'];
  const server = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    const send = () => res.write(`${JSON.stringify({ ready: true, addresses })}\n`);
    send();
    const timer = setInterval(send, Number(req.headers[steeringStreamHeader]));
    res.on('close', () => clearInterval(timer));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const monitor = createPeerMonitor({
    peers: [peer('gw', '127.0.0.1')],
    healthPort: (server.address() as AddressInfo).port,
    check: { intervalMs: 50 },
  });
  try {
    monitor.start();
    await until(monitor, (up) => up.has('gw'));
    expect(monitor.owners()).toEqual(new Map([['2001:db8::10', 'gw']]));
    addresses = [];
    const started = performance.now();
    await new Promise<void>((resolve) => monitor.onChange(() => monitor.owners().size === 0 && resolve()));
    expect(performance.now() - started).toBeLessThan(500);
  } finally {
    await monitor.stop();
    server.closeAllConnections();
    server.close();
  }
});

describe('over mutual TLS', () => {
  const ca = makeTestCa();
  const dirs: string[] = [];
  const closers: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const close of closers) await close();
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });
  /** A node's TLS directory from `from`, followed. */
  async function nodeTls(node: string, from = ca): Promise<TlsDir> {
    const dir = mkdtempSync(join(tmpdir(), 'naat-peer-tls-'));
    dirs.push(dir);
    writeTlsDir(dir, from, node, ['127.0.0.1']);
    const tls = new TlsDir(dir);
    await tls.ready();
    closers.push(async () => tls.stop());
    return tls;
  }
  /** A gateway node's health port answering /steering "ready" to agents, as the gateway agent does. */
  async function gatewayNode(tls: TlsDir): Promise<number> {
    const server = plainAndMutualTls(tls, (_req, res, agentNode) => {
      res.statusCode = agentNode ? 200 : 403;
      res.end('{"ready":true}\n');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closers.push(() => new Promise((resolve) => server.close(resolve)));
    return (server.address() as AddressInfo).port;
  }
  const monitorOf = (port: number, watch: PeerWatch) => {
    const monitor = createPeerMonitor({ peers: [peer('gw', '127.0.0.1')], healthPort: port, watch });
    closers.push(() => monitor.stop());
    monitor.start();
    return monitor;
  };

  test('a gateway node with a certificate from the CA for its address is up', async () => {
    const node = await nodeTls('worker-1');
    const monitor = monitorOf(
      await gatewayNode(await nodeTls('gw')),
      steeringWatch(() => node.current()),
    );
    await until(monitor, (up) => up.has('gw'));
  });

  test('one whose certificate comes from another CA, and one asked in plaintext, stay down', async () => {
    const node = await nodeTls('worker-1');
    const forged = monitorOf(
      await gatewayNode(await nodeTls('gw', makeTestCa('forged'))),
      steeringWatch(() => node.current()),
    );
    const plain = monitorOf(await gatewayNode(await nodeTls('gw')), steeringWatch());
    const none = monitorOf(
      await gatewayNode(await nodeTls('gw')),
      steeringWatch(() => undefined),
    );
    await sleep(1000);
    expect([forged.up().size, plain.up().size, none.up().size]).toEqual([0, 0, 0]);
  });
});
