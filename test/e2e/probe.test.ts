// Uplink probes and the health monitor against a real kernel: a pair of network namespaces joined
// by a veth, the uplink's targets on the far side reachable only through a policy-routing table
// chosen by source address, as the agent sets it up. Probes must leave from the uplink's address,
// fail within their timeout once the far side drops them, and the monitor must see a link go down
// at once.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import type { CompiledUplink } from '../../contracts/gateway/index.ts';
import type { ProbeRequest, ProbeResult } from '../../dataplane/probe/index.ts';

const tag = `prb${randomBytes(3).toString('hex')}`;
const nsA = `${tag}-a`; // the gateway node: runs the prober and the monitor
const nsB = `${tag}-b`; // beyond the uplink: the targets and their servers
const probeModule = pathToFileURL(`${import.meta.dirname}/../../dataplane/probe/index.ts`).href;

// Addresses: the veth carries the low half of 100.64.200.0/24 and fd00:64:200::/120; the targets
// sit on lo in ns b, outside those prefixes, so only the uplink's table (100) reaches them.
const uplinkV4 = '100.64.200.1';
const uplinkV6 = 'fd00:64:200::1';
const unroutedV4 = '100.64.200.3'; // also on the uplink's interface, but without a rule
const targetV4 = '100.64.200.130';
const targetV6 = 'fd00:64:200::100';

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
const inA = (...args: string[]) => ip('-n', nsA, ...args);
const inB = (...args: string[]) => ip('-n', nsB, ...args);
const nft = (ns: string, script: string) =>
  execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], { input: script });
const sysctl = (ns: string, ...settings: string[]) =>
  execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-q', ...settings.flatMap((s) => ['-w', s])]);
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Routes to the targets in the uplink's table; the kernel drops them when the link goes down. */
function uplinkRoutes(): void {
  inA('route', 'replace', '100.64.200.128/25', 'via', '100.64.200.2', 'dev', 'up0', 'table', '100');
  inA('-6', 'route', 'replace', `${targetV6}/128`, 'via', 'fd00:64:200::2', 'dev', 'up0', 'table', '100');
}

const dropTargets = () =>
  nft(
    nsB,
    `table inet prbdrop {
      chain input { type filter hook input priority 0; policy accept; ip daddr ${targetV4} drop; ip6 daddr ${targetV6} drop; }
    }`,
  );
const stopDropping = () => nft(nsB, 'delete table inet prbdrop');

const children: ChildProcess[] = [];
function node(ns: string, code: string, args: string[]): ChildProcess {
  const child = spawn(
    'ip',
    ['netns', 'exec', ns, process.execPath, '--input-type=module', '--no-warnings', '-e', code, ...args],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(child);
  return child;
}

/** Lines a child prints, parsed as JSON, in a queue the test takes them from. */
function lines(child: ChildProcess) {
  const queue: Record<string, unknown>[] = [];
  const waiters: (() => void)[] = [];
  createInterface({ input: child.stdout! }).on('line', (line) => {
    queue.push(JSON.parse(line) as Record<string, unknown>);
    waiters.splice(0).forEach((wake) => wake());
  });
  const next = async (match: (line: Record<string, unknown>) => boolean, ms = 10000) => {
    const deadline = Date.now() + ms;
    for (;;) {
      const at = queue.findIndex(match);
      if (at >= 0) return queue.splice(at, 1)[0]!;
      if (Date.now() > deadline) throw new Error(`no matching line within ${ms}ms; have ${JSON.stringify(queue)}`);
      await new Promise<void>((wake) => {
        waiters.push(wake);
        setTimeout(wake, 100);
      });
    }
  };
  return { queue, next };
}

const servers = `
import { createServer } from 'node:net';
import { createServer as httpServer } from 'node:http';
const seen = (socket) => console.log(JSON.stringify({ from: socket.remoteAddress.replace(/^::ffff:/, '') }));
const tcp = createServer((socket) => { seen(socket); socket.end(); });
const http = httpServer((req, res) => { res.statusCode = req.url === '/health' ? 204 : 503; res.end(); });
http.on('connection', seen);
await Promise.all([new Promise((r) => tcp.listen(7000, '::', r)), new Promise((r) => http.listen(8080, '::', r))]);
console.log(JSON.stringify({ ready: true }));
`;

const probeAll = `
const { SystemProber } = await import(process.argv[1]);
const prober = new SystemProber();
const results = await Promise.all(JSON.parse(process.argv[2]).map(async (request) => {
  const started = performance.now();
  const result = await prober.probe(request);
  return { ...result, elapsedMs: performance.now() - started };
}));
console.log(JSON.stringify(results));
`;

const monitorScript = `
const { HealthMonitor } = await import(process.argv[1]);
const print = (line) => console.log(JSON.stringify({ at: Date.now(), ...line }));
const uplinks = JSON.parse(process.argv[2]);
const monitor = new HealthMonitor({
  uplinks,
  linkPollMs: 60000, // uplinks without a check notice their link only through the watcher here
  onChange: (name, health) => print({ change: name, ...health }),
  onLink: (name, up) => print({ link: name, up }),
  onError: (name, error) => error && print({ error: error.message, name }),
});
const firstRounds = setInterval(() => {
  const health = monitor.current();
  if (uplinks.some((u) => u.healthCheck && health.get(u.name).lossPercent === undefined)) return;
  clearInterval(firstRounds);
  print({ ready: true, health: Object.fromEntries(monitor.current()) });
}, 20);
process.on('SIGTERM', () => { monitor.stop(); print({ stopped: true }); });
`;

async function runProbes(requests: ProbeRequest[]): Promise<(ProbeResult & { elapsedMs: number })[]> {
  const child = node(nsA, probeAll, [probeModule, JSON.stringify(requests)]);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
  const code = await new Promise((resolve) => child.once('exit', resolve));
  expect(code).toBe(0);
  return JSON.parse(out) as (ProbeResult & { elapsedMs: number })[];
}

let serverLines: ReturnType<typeof lines>;
beforeAll(async () => {
  ip('netns', 'add', nsA);
  ip('netns', 'add', nsB);
  for (const ns of [nsA, nsB]) {
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    sysctl(ns, 'net.ipv6.conf.all.accept_dad=0', 'net.ipv6.conf.default.accept_dad=0');
  }
  ip('link', 'add', 'up0', 'netns', nsA, 'type', 'veth', 'peer', 'name', 'up0p', 'netns', nsB);
  // Keep the IPv6 address when the link goes down, as a gateway's uplink config would.
  sysctl(nsA, 'net.ipv6.conf.up0.keep_addr_on_down=1');
  inA('addr', 'add', `${uplinkV4}/25`, 'dev', 'up0');
  inA('addr', 'add', `${unroutedV4}/25`, 'dev', 'up0');
  inA('addr', 'add', `${uplinkV6}/120`, 'dev', 'up0', 'nodad');
  inB('addr', 'add', '100.64.200.2/25', 'dev', 'up0p');
  inB('addr', 'add', 'fd00:64:200::2/120', 'dev', 'up0p', 'nodad');
  inB('addr', 'add', `${targetV4}/32`, 'dev', 'lo');
  inB('addr', 'add', `${targetV6}/128`, 'dev', 'lo');
  inA('link', 'set', 'up0', 'up');
  inB('link', 'set', 'up0p', 'up');
  // An uplink without a health check (this kernel has no dummy links: another veth).
  ip('link', 'add', 'plain0', 'netns', nsA, 'type', 'veth', 'peer', 'name', 'plain0p', 'netns', nsB);
  inB('link', 'set', 'plain0p', 'up');
  inA('link', 'set', 'plain0', 'up');
  inA('rule', 'add', 'from', uplinkV4, 'lookup', '100', 'pref', '7700');
  inA('-6', 'rule', 'add', 'from', uplinkV6, 'lookup', '100', 'pref', '7700');
  uplinkRoutes();

  const server = node(nsB, servers, []);
  serverLines = lines(server);
  await serverLines.next((l) => l.ready === true);
  // Neighbour discovery on a fresh veth can lose the first IPv6 packet: wait until both answer.
  for (let attempt = 0; ; attempt++) {
    const results = await runProbes([
      { protocol: 'ICMP', target: targetV4, sourceAddress: uplinkV4, timeoutMs: 500 },
      { protocol: 'ICMP', target: targetV6, sourceAddress: uplinkV6, timeoutMs: 500 },
    ]);
    if (results.every((r) => r.ok)) break;
    if (attempt === 10) throw new Error(`targets do not answer: ${JSON.stringify(results)}`);
  }
});

afterAll(() => {
  for (const child of children) child.kill('SIGKILL');
  for (const ns of [nsA, nsB]) {
    try {
      ip('netns', 'delete', ns);
    } catch {
      // never created
    }
  }
});

test('probes of each protocol leave from the uplink address and fail within timeoutMs once dropped', async () => {
  const timeoutMs = 400;
  const requests: ProbeRequest[] = [
    { protocol: 'ICMP', target: targetV4, sourceAddress: uplinkV4, timeoutMs },
    { protocol: 'ICMP', target: targetV6, sourceAddress: uplinkV6, timeoutMs },
    { protocol: 'TCP', target: targetV4, port: 7000, sourceAddress: uplinkV4, timeoutMs },
    { protocol: 'TCP', target: targetV6, port: 7000, sourceAddress: uplinkV6, timeoutMs },
    { protocol: 'HTTP', target: targetV4, port: 8080, path: '/health', sourceAddress: uplinkV4, timeoutMs },
    { protocol: 'HTTP', target: targetV6, port: 8080, path: '/health', sourceAddress: uplinkV6, timeoutMs },
  ];
  const answered = await runProbes(requests);
  console.log(
    `probe RTTs (ms): ${answered.map((r, i) => `${requests[i]!.protocol}/${requests[i]!.target} ${r.rttMs?.toFixed(2)}`).join(', ')}`,
  );
  for (const result of answered) expect(result).toMatchObject({ ok: true, rttMs: expect.any(Number) });
  // The servers saw the uplink's addresses, and only them.
  const sources = new Set<unknown>();
  while (serverLines.queue.length) sources.add(serverLines.queue.shift()!.from);
  expect([...sources].sort()).toEqual([uplinkV4, uplinkV6]);

  // A source without the uplink's rule has no route to the targets; a bad status is a failure.
  const [unrouted, unroutedTcp, badStatus] = await runProbes([
    { protocol: 'ICMP', target: targetV4, sourceAddress: unroutedV4, timeoutMs },
    { protocol: 'TCP', target: targetV4, port: 7000, sourceAddress: unroutedV4, timeoutMs },
    { protocol: 'HTTP', target: targetV4, port: 8080, path: '/missing', sourceAddress: uplinkV4, timeoutMs },
  ]);
  expect(unrouted!.ok).toBe(false); // ping reports no error here, it just gets no reply
  expect(unroutedTcp).toMatchObject({ ok: false, error: expect.stringMatching(/ENETUNREACH/) });
  expect(badStatus).toMatchObject({ ok: false, error: 'HTTP 503' });

  dropTargets();
  try {
    const dropped = await runProbes(requests);
    console.log(`dropped probes gave up after (ms): ${dropped.map((r) => r.elapsedMs.toFixed(0)).join(', ')}`);
    for (const result of dropped) {
      expect(result.ok).toBe(false);
      expect(result.elapsedMs).toBeGreaterThanOrEqual(timeoutMs - 5);
      expect(result.elapsedMs).toBeLessThan(timeoutMs + 300);
    }
  } finally {
    stopDropping();
  }
});

test('the monitor applies the thresholds and sees a link go down at once', async () => {
  const check = {
    protocol: 'ICMP' as const,
    targets: [targetV4, targetV6],
    intervalMs: 500,
    timeoutMs: 200,
    failureThreshold: 3,
    successThreshold: 2,
    maxLossPercent: 0,
  };
  const base = { snat: { ports: { min: 1024, max: 65535 } }, weight: 1, tier: 0 };
  const uplinks: CompiledUplink[] = [
    { name: 'icmp', interface: 'up0', healthCheck: check, ...base },
    {
      name: 'http',
      interface: 'up0',
      healthCheck: { ...check, protocol: 'HTTP', port: 8080, path: '/health', targets: [targetV6, targetV4] },
      ...base,
    },
    { name: 'plain', interface: 'plain0', ...base },
  ];
  const monitor = node(nsA, monitorScript, [probeModule, JSON.stringify(uplinks)]);
  const out = lines(monitor);
  const ready = await out.next((l) => l.ready === true);
  expect(ready.health).toMatchObject({
    icmp: { healthy: true, lossPercent: 0 },
    http: { healthy: true, lossPercent: 0 },
    plain: { healthy: true, linkUp: true },
  });
  await sleep(100); // let `ip monitor` subscribe before the first link change
  const change = (name: string, healthy: boolean) => (l: Record<string, unknown>) =>
    l.change === name && l.healthy === healthy;

  // Probes dropped: unhealthy after failureThreshold rounds, no sooner.
  const dropped = Date.now();
  dropTargets();
  const down = await out.next(change('icmp', false));
  const downAfter = (down.at as number) - dropped;
  expect(down.consecutiveFailures).toBe(check.failureThreshold);
  expect(downAfter).toBeGreaterThanOrEqual((check.failureThreshold - 1) * check.intervalMs - 10);
  expect(downAfter).toBeLessThan(check.failureThreshold * check.intervalMs + check.timeoutMs + 500);
  await out.next(change('http', false));

  // Answered again: healthy after successThreshold rounds.
  const restored = Date.now();
  stopDropping();
  const up = await out.next(change('icmp', true));
  const upAfter = (up.at as number) - restored;
  expect(up.consecutiveSuccesses).toBe(check.successThreshold);
  expect(upAfter).toBeGreaterThanOrEqual((check.successThreshold - 1) * check.intervalMs - 10);
  await out.next(change('http', true));
  console.log(`probes dropped → unhealthy in ${downAfter} ms; answered again → healthy in ${upAfter} ms`);

  // A link that goes down is certain: no thresholds, and seen before any round could.
  let linkDownAt = Date.now();
  inA('link', 'set', 'plain0', 'down');
  const plainDown = await out.next(change('plain', false));
  const plainDownMs = (plainDown.at as number) - linkDownAt;
  linkDownAt = Date.now();
  inA('link', 'set', 'up0', 'down');
  const [icmpDown, httpDown] = await Promise.all([out.next(change('icmp', false)), out.next(change('http', false))]);
  const checkedDownMs = Math.max(icmpDown.at as number, httpDown.at as number) - linkDownAt;
  console.log(`link down → unhealthy in ${plainDownMs} ms (no check), ${checkedDownMs} ms (with checks)`);
  expect(plainDownMs).toBeLessThan(300);
  expect(checkedDownMs).toBeLessThan(300);
  expect(icmpDown).toMatchObject({ linkUp: false, consecutiveSuccesses: 0 });

  // Back up: the uplink without a check at once; those with one after their rounds pass again,
  // once the uplink's routes, which the kernel deleted with the link, are back.
  const linkUpAt = Date.now();
  inA('link', 'set', 'plain0', 'up');
  inA('link', 'set', 'up0', 'up');
  const plainUp = await out.next(change('plain', true));
  expect((plainUp.at as number) - linkUpAt).toBeLessThan(300);
  await out.next((l) => l.link === 'icmp' && l.up === true);
  expect(inA('route', 'show', 'table', '100')).toBe('');
  uplinkRoutes();
  const icmpUp = await out.next(change('icmp', true));
  expect(icmpUp.consecutiveSuccesses).toBe(check.successThreshold);
  await out.next(change('http', true));
  expect(out.queue.filter((l) => l.error !== undefined)).toEqual([]);

  // stop() leaves nothing running: the process exits on its own.
  const exited = new Promise((resolve) => monitor.once('exit', resolve));
  monitor.kill('SIGTERM');
  await out.next((l) => l.stopped === true);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise((resolve) => (timer = setTimeout(() => resolve('still running'), 3000)));
  await expect(Promise.race([exited, late]).finally(() => clearTimeout(timer))).resolves.toBe(0);
});
