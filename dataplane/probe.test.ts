import type { CompiledUplink } from '../contracts/gateway/index.ts';
import {
  HealthMonitor,
  initialHealth,
  linkHealth,
  linkIsUp,
  nextHealth,
  parseIpAddresses,
  parseIpLink,
  parseMonitorLine,
  parsePingRtt,
  type HealthCheck,
  type InterfaceAddresses,
  type LinkReader,
  type LinkWatcher,
  type ProbeRequest,
  type ProbeResult,
  type ProbeRound,
  type UplinkHealth,
} from './probe.ts';

const check: HealthCheck = {
  targets: ['192.0.2.1'],
  protocol: 'ICMP',
  intervalMs: 1000,
  timeoutMs: 800,
  failureThreshold: 3,
  successThreshold: 2,
  maxLossPercent: 50,
};
const good: ProbeRound = { answered: 1, sent: 1, meanRttMs: 10 };
const bad: ProbeRound = { answered: 0, sent: 1 };
const t0 = new Date('2025-01-01T00:00:00Z');
const at = (seconds: number) => new Date(t0.getTime() + seconds * 1000);

/** Applies rounds one a second from t0 + 1 s and returns the healthy flag after each. */
function run(state: UplinkHealth, rounds: ProbeRound[], c: HealthCheck = check) {
  const flags: boolean[] = [];
  rounds.forEach((round, i) => {
    state = nextHealth(state, round, c, at(i + 1));
    flags.push(state.healthy);
  });
  return { state, flags };
}

describe('nextHealth', () => {
  test('an uplink starts healthy with its link assumed up', () => {
    expect(initialHealth(t0)).toEqual({
      healthy: true,
      since: t0,
      linkUp: true,
      consecutiveFailures: 0,
      consecutiveSuccesses: 0,
    });
  });

  test('goes unhealthy after failureThreshold failed rounds and back after successThreshold good ones', () => {
    const { state, flags } = run(initialHealth(t0), [bad, bad, bad, bad, good, good, good]);
    expect(flags).toEqual([true, true, false, false, false, true, true]);
    expect(state).toEqual({
      healthy: true,
      since: at(6),
      linkUp: true,
      consecutiveFailures: 0,
      consecutiveSuccesses: 3,
      latencyMs: 10,
      lossPercent: 0,
    });
    const down = run(initialHealth(t0), [bad, bad, bad]).state;
    expect(down).toMatchObject({ healthy: false, since: at(3), consecutiveFailures: 3, lossPercent: 100 });
    expect(down.latencyMs).toBeUndefined();
  });

  test('rounds that flap faster than the thresholds change nothing', () => {
    const flapping = [bad, bad, good, bad, bad, good, bad, good, bad, bad, good];
    const healthy = run(initialHealth(t0), flapping);
    expect(healthy.flags.every(Boolean)).toBe(true);
    expect(healthy.state.since).toBe(t0);

    const unhealthy = run(run(initialHealth(t0), [bad, bad, bad]).state, [good, bad, good, bad, good, bad, good, bad]);
    expect(unhealthy.flags.some(Boolean)).toBe(false);
    expect(unhealthy.state.since).toEqual(at(3));

    const strict = { ...check, failureThreshold: 1, successThreshold: 1 };
    expect(run(initialHealth(t0), [bad, good, bad, good], strict).flags).toEqual([false, true, false, true]);
  });

  test('a round fails when more than maxLossPercent of its probes are lost', () => {
    const fails = (round: ProbeRound, maxLossPercent: number) =>
      nextHealth(initialHealth(t0), round, { ...check, maxLossPercent, failureThreshold: 1 }, at(1));
    expect(fails({ answered: 1, sent: 2, meanRttMs: 5 }, 50)).toMatchObject({ healthy: true, lossPercent: 50 });
    expect(fails({ answered: 1, sent: 3, meanRttMs: 5 }, 50).healthy).toBe(false);
    expect(fails({ answered: 1, sent: 3, meanRttMs: 5 }, 50).lossPercent).toBeCloseTo(66.67, 1);
    expect(fails({ answered: 3, sent: 4, meanRttMs: 5 }, 0).healthy).toBe(false);
    expect(fails({ answered: 4, sent: 4, meanRttMs: 5 }, 0).healthy).toBe(true);
    expect(fails({ answered: 0, sent: 4 }, 100)).toMatchObject({ healthy: true, lossPercent: 100 });
    // A round that could send nothing proves nothing.
    expect(fails({ answered: 0, sent: 0 }, 99)).toMatchObject({ healthy: false, lossPercent: 100 });
  });

  test('a round fails when the mean RTT of its answered probes exceeds maxLatencyMs', () => {
    const limited = { ...check, maxLatencyMs: 100, failureThreshold: 1 };
    const after = (meanRttMs: number | undefined, c: HealthCheck = limited) =>
      nextHealth(initialHealth(t0), { answered: 2, sent: 2, meanRttMs }, c, at(1));
    expect(after(100)).toMatchObject({ healthy: true, latencyMs: 100 });
    expect(after(100.5)).toMatchObject({ healthy: false, latencyMs: 100.5 });
    expect(after(5000, { ...check, failureThreshold: 1 }).healthy).toBe(true);
    // Slow answers count against the uplink like lost ones: three slow rounds take it out.
    const slow: ProbeRound = { answered: 1, sent: 1, meanRttMs: 250 };
    expect(run(initialHealth(t0), [slow, slow, slow, good, good], { ...check, maxLatencyMs: 100 }).flags).toEqual([
      true,
      true,
      false,
      false,
      true,
    ]);
  });
});

describe('linkHealth', () => {
  test('a link that goes down makes the uplink unhealthy at once; back up, it must pass the check again', () => {
    let state = linkHealth(initialHealth(t0), false, check, at(1));
    expect(state).toMatchObject({ healthy: false, linkUp: false, since: at(1) });
    // Probes that are answered anyway (the route fell through to another path) do not count.
    state = run(state, [good, good, good]).state;
    expect(state).toMatchObject({ healthy: false, consecutiveSuccesses: 0, consecutiveFailures: 3 });
    state = linkHealth(state, true, check, at(5));
    expect(state).toMatchObject({ healthy: false, linkUp: true, since: at(1) });
    const back = run(state, [good, good]);
    expect(back.flags).toEqual([false, true]);
  });

  test('an uplink without a health check is healthy exactly while its link is up', () => {
    let state = initialHealth(t0);
    const seen: boolean[] = [];
    for (const [i, up] of [true, false, false, true, true, false].entries()) {
      state = linkHealth(state, up, undefined, at(i));
      seen.push(state.healthy);
    }
    expect(seen).toEqual([true, false, false, true, true, false]);
    expect(state.since).toEqual(at(5));
    // Rounds without a check change nothing but follow the link.
    expect(nextHealth(state, good, undefined, at(9))).toBe(state);
    const up = linkHealth(state, true, undefined, at(10));
    expect(nextHealth(up, bad, undefined, at(11))).toMatchObject({ healthy: true, since: at(10) });
  });

  test('a look that changes nothing returns the same state', () => {
    const state = initialHealth(t0);
    expect(linkHealth(state, true, check, at(1))).toBe(state);
    const down = linkHealth(state, false, check, at(1));
    expect(linkHealth(down, false, check, at(2))).toBe(down);
  });
});

describe('parsing what ip and ping print', () => {
  test('ping RTT', () => {
    const output = `PING 100.64.200.2 (100.64.200.2) from 100.64.200.1 : 56(84) bytes of data.
64 bytes from 100.64.200.2: icmp_seq=1 ttl=64 time=0.620 ms

--- 100.64.200.2 ping statistics ---
1 packets transmitted, 1 received, 0% packet loss, time 0ms
rtt min/avg/max/mdev = 0.620/0.620/0.620/0.000 ms`;
    expect(parsePingRtt(output)).toBe(0.62);
    expect(parsePingRtt('64 bytes from fd00::2: icmp_seq=1 ttl=64 time=12 ms')).toBe(12);
    expect(parsePingRtt('1 packets transmitted, 0 received, 100% packet loss, time 0ms')).toBeUndefined();
  });

  test('link state: UP, or UNKNOWN with carrier for drivers that do not track it', () => {
    const link = (operstate: string, flags: string[]) => JSON.stringify([{ ifname: 'x', flags, operstate }]);
    expect(parseIpLink(link('UP', ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP']))).toEqual({
      exists: true,
      up: true,
      operState: 'UP',
    });
    expect(parseIpLink(link('DOWN', ['BROADCAST', 'MULTICAST'])).up).toBe(false);
    expect(parseIpLink(link('DOWN', ['NO-CARRIER', 'BROADCAST', 'MULTICAST', 'UP'])).up).toBe(false);
    expect(parseIpLink(link('LOWERLAYERDOWN', ['BROADCAST', 'UP'])).up).toBe(false);
    expect(parseIpLink(link('UNKNOWN', ['POINTOPOINT', 'NOARP', 'UP', 'LOWER_UP'])).up).toBe(true); // wg0
    expect(parseIpLink(link('UNKNOWN', ['POINTOPOINT', 'NOARP'])).up).toBe(false);
    expect(parseIpLink('[]')).toEqual({ exists: false, up: false, operState: 'ABSENT' });
    expect(linkIsUp('UP', ['BROADCAST'])).toBe(false);
  });

  test('primary addresses: the first global, settled, non-secondary address of each family', () => {
    const json = JSON.stringify([
      {
        ifname: 'eth1',
        addr_info: [
          { family: 'inet6', local: 'fd00::9', scope: 'global', tentative: true },
          { family: 'inet', local: '169.254.1.1', scope: 'link' },
          { family: 'inet', local: '203.0.113.7', scope: 'global' },
          { family: 'inet', local: '203.0.113.8', scope: 'global', secondary: true },
          { family: 'inet6', local: 'fe80::1', scope: 'link' },
          { family: 'inet6', local: '2001:db8::7', scope: 'global' },
        ],
      },
    ]);
    expect(parseIpAddresses(json)).toEqual({ ipv4: '203.0.113.7', ipv6: '2001:db8::7' });
    expect(parseIpAddresses('[{"ifname":"wg0","addr_info":[]}]')).toEqual({});
  });

  test('the interface a line of ip monitor link is about', () => {
    expect(parseMonitorLine('2: va@if2: <BROADCAST,MULTICAST> mtu 1500 qdisc noqueue state DOWN group default')).toBe(
      'va',
    );
    expect(parseMonitorLine('7: eth1: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state DOWN')).toBe('eth1');
    expect(parseMonitorLine('Deleted 9: wg0: <POINTOPOINT,NOARP> mtu 1420 state DOWN')).toBe('wg0');
    expect(parseMonitorLine('[LINK]3: ppp0: <POINTOPOINT,UP,LOWER_UP> mtu 1492')).toBe('ppp0');
    expect(parseMonitorLine('    link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff')).toBeUndefined();
  });
});

describe('HealthMonitor with a fake prober and fake links', () => {
  const fast: HealthCheck = { ...check, intervalMs: 100, timeoutMs: 50 };
  const uplink = (name: string, extra: Partial<CompiledUplink> = {}): CompiledUplink => ({
    name,
    interface: `if-${name}`,
    snat: { ports: { min: 1024, max: 65535 } },
    weight: 1,
    tier: 0,
    ...extra,
  });

  class Fake implements LinkReader {
    up = new Map<string, boolean>();
    own = new Map<string, InterfaceAddresses>();
    answer = new Map<string, boolean>();
    probes: ProbeRequest[] = [];
    emit: ((name: string) => void) | undefined;
    links: string[] = [];
    watching = false;

    link = async (name: string) => {
      const up = this.up.get(name) ?? true;
      return { exists: true, up, operState: up ? 'UP' : 'DOWN' };
    };
    addresses = async (name: string) => this.own.get(name) ?? {};
    probe = async (request: ProbeRequest): Promise<ProbeResult> => {
      this.probes.push(request);
      return this.answer.get(request.target) === false ? { ok: false, error: 'timeout' } : { ok: true, rttMs: 3 };
    };
    watch: LinkWatcher = (onLink) => {
      this.emit = onLink;
      this.watching = true;
      return { stop: () => (this.watching = false) };
    };
  }

  const until = async (what: () => boolean, ms = 3000) => {
    const deadline = Date.now() + ms;
    while (!what()) {
      if (Date.now() > deadline) throw new Error('timed out waiting');
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  };

  let monitor: HealthMonitor | undefined;
  afterEach(() => monitor?.stop());

  function start(fake: Fake, uplinks: CompiledUplink[]) {
    const changes: { name: string; health: UplinkHealth; at: number }[] = [];
    monitor = new HealthMonitor({
      uplinks,
      prober: fake,
      links: fake,
      watchLinks: fake.watch,
      onChange: (name, health) => changes.push({ name, health, at: Date.now() }),
      onLink: (name, up) => fake.links.push(`${name} ${up ? 'up' : 'down'}`),
    });
    return changes;
  }

  test('follows rounds with thresholds and the watcher at once, and stops cleanly', async () => {
    const fake = new Fake();
    const changes = start(fake, [
      uplink('a', { healthCheck: { ...fast, targets: ['192.0.2.1', '2001:db8::1'] } }),
      uplink('plain'),
    ]);
    fake.own.set('if-a', { ipv4: '198.51.100.1', ipv6: '2001:db8:1::1' });
    await until(() => fake.probes.length >= 4);
    expect(monitor!.current().get('a')).toMatchObject({ healthy: true, lossPercent: 0, latencyMs: 3 });

    fake.answer.set('192.0.2.1', false);
    fake.answer.set('2001:db8::1', false);
    const failedAt = Date.now();
    await until(() => changes.length === 1);
    expect(changes[0]).toMatchObject({ name: 'a', health: { healthy: false, consecutiveFailures: 3 } });
    expect(changes[0]!.at - failedAt).toBeGreaterThanOrEqual(190); // three rounds, 100 ms apart

    fake.answer.clear();
    await until(() => changes.length === 2);
    expect(changes[1]).toMatchObject({ name: 'a', health: { healthy: true, consecutiveSuccesses: 2 } });

    fake.up.set('if-plain', false);
    const downAt = Date.now();
    fake.emit!('if-plain');
    fake.emit!('unrelated0');
    await until(() => changes.length === 3);
    expect(changes[2]).toMatchObject({ name: 'plain', health: { healthy: false, linkUp: false } });
    expect(changes[2]!.at - downAt).toBeLessThan(50);
    expect(fake.links).toEqual(['plain down']);

    monitor!.stop();
    expect(fake.watching).toBe(false);
    const probes = fake.probes.length;
    await new Promise((resolve) => setTimeout(resolve, 250));
    expect(fake.probes.length).toBe(probes);
  });

  test('binds each target to a source of its family: SNAT addresses first, then the interface', async () => {
    const fake = new Fake();
    fake.own.set('if-a', { ipv4: '198.51.100.1' });
    start(fake, [
      uplink('a', {
        snat: { addresses: ['2001:db8:5::5'], ports: { min: 1024, max: 65535 } },
        healthCheck: { ...fast, targets: ['192.0.2.1', '2001:db8::1'], protocol: 'HTTP', maxLossPercent: 0 },
      }),
      uplink('b', { healthCheck: { ...fast, targets: ['192.0.2.1', '2001:db8::1'], failureThreshold: 1 } }),
    ]);
    fake.own.set('if-b', { ipv4: '198.51.100.2' });
    await until(() => monitor!.current().get('b')!.lossPercent !== undefined);
    const sources = new Map(fake.probes.map((p) => [`${p.target} ${p.sourceAddress}`, p]));
    expect(sources.get('192.0.2.1 198.51.100.1')).toMatchObject({
      protocol: 'HTTP',
      port: 80,
      path: '/',
      timeoutMs: 50,
    });
    expect(sources.get('2001:db8::1 2001:db8:5::5')).toBeDefined();
    // b has no IPv6 address: that target counts as unanswered, half the probes, within maxLossPercent 50.
    expect([...sources.keys()].filter((k) => k.endsWith('198.51.100.2'))).toEqual(['192.0.2.1 198.51.100.2']);
    expect(monitor!.current().get('b')).toMatchObject({ healthy: true, lossPercent: 50 });
  });

  test('update keeps the state of unchanged uplinks and drops removed ones', async () => {
    const fake = new Fake();
    fake.up.set('if-b', false);
    const changes = start(fake, [uplink('a'), uplink('b')]);
    await until(() => changes.length === 1);
    const a = monitor!.current().get('a')!;
    monitor!.update([uplink('a'), uplink('c')]);
    expect([...monitor!.current().keys()]).toEqual(['a', 'c']);
    expect(monitor!.current().get('a')!.since).toBe(a.since);
    expect(monitor!.current().get('c')).toMatchObject({ healthy: true });
  });
});
