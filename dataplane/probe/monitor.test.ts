// The probe shell: what ip and ping print, and the monitor over a fake prober and fake links.
import type { CompiledUplink } from '../../contracts/gateway/index.ts';
import {
  HealthMonitor,
  linkIsUp,
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
  type UplinkHealth,
} from './index.ts';

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
  const fast: HealthCheck = {
    targets: ['192.0.2.1'],
    protocol: 'ICMP',
    intervalMs: 100,
    timeoutMs: 50,
    failureThreshold: 3,
    successThreshold: 2,
    maxLossPercent: 50,
  };
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

    reads: string[] = [];

    link = async (name: string) => {
      this.reads.push(name);
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
        healthCheck: {
          ...fast,
          targets: ['192.0.2.1', '2001:db8::1'],
          protocol: 'HTTP',
          port: 8080,
          path: '/healthz',
          maxLossPercent: 0,
        },
      }),
      uplink('b', { healthCheck: { ...fast, targets: ['192.0.2.1', '2001:db8::1'], failureThreshold: 1 } }),
    ]);
    fake.own.set('if-b', { ipv4: '198.51.100.2' });
    await until(() => monitor!.current().get('b')!.lossPercent !== undefined);
    const sources = new Map(fake.probes.map((p) => [`${p.target} ${p.sourceAddress}`, p]));
    expect(sources.get('192.0.2.1 198.51.100.1')).toMatchObject({
      protocol: 'HTTP',
      port: 8080,
      path: '/healthz',
      timeoutMs: 50,
    });
    expect(sources.get('2001:db8::1 2001:db8:5::5')).toBeDefined();
    // b has no IPv6 address: that target counts as unanswered, half the probes, within maxLossPercent 50.
    expect([...sources.keys()].filter((k) => k.endsWith('198.51.100.2'))).toEqual(['192.0.2.1 198.51.100.2']);
    expect(monitor!.current().get('b')).toMatchObject({ healthy: true, lossPercent: 50 });
  });

  test("reads a link at the first look, on the watcher's news and every linkPollMs, not at every round", async () => {
    const fake = new Fake();
    fake.own.set('if-a', { ipv4: '198.51.100.1' });
    monitor = new HealthMonitor({
      uplinks: [uplink('a', { healthCheck: fast })],
      prober: fake,
      links: fake,
      watchLinks: fake.watch,
      linkPollMs: 300,
    });
    await until(() => fake.probes.length >= 8);
    // Rounds every 100 ms for 700 ms or more: the first look, then one read per 300 ms or so.
    expect(fake.reads.length).toBeGreaterThanOrEqual(2);
    expect(fake.reads.length).toBeLessThanOrEqual(fake.probes.length / 2);
    fake.up.set('if-a', false);
    const reads = fake.reads.length;
    fake.emit!('if-a');
    await until(() => monitor!.current().get('a')!.linkUp === false, 50);
    expect(fake.reads.length).toBe(reads + 1);
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
