import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { CompiledUplink } from '../../contracts/gateway/index.ts';
import type { AgentReport, UplinkReport } from '../agent-report.ts';
import {
  steeringReadiness,
  steeringStreamInterval,
  streamSteering,
  type SteeringReadiness,
} from './gateway-readiness.ts';
import { steeringWatch } from './peer-monitor.ts';

const uplink = (name: string, nextHop?: CompiledUplink['nextHop']): CompiledUplink => ({
  name,
  interface: name,
  ...(nextHop ? { nextHop } : {}),
  snat: { ports: { min: 1024, max: 65535 } },
  weight: 1,
  tier: 0,
});
const dualStack = uplink('isp-a', { ipv4: '100.64.1.1', ipv6: 'fd00:64:1::1' });
const v4Only = uplink('isp-b', { ipv4: '100.64.2.1' });
const pointToPoint = uplink('wg0');

const state = (name: string, healthy: boolean): UplinkReport => ({
  name,
  id: 1,
  interface: name,
  healthy,
  since: new Date(0).toISOString(),
  activeFlows: 0,
  portUtilisationPercent: 0,
});
const synced: AgentReport['lastSync'] = { at: new Date(0).toISOString(), durationMs: 5, full: true };
const report = (uplinks: UplinkReport[], extra: Partial<AgentReport> = {}): AgentReport => ({
  node: 'gw-1',
  gateway: 'edge',
  appliedHash: 'sha256:abc',
  lastSync: synced,
  uplinks,
  flows: 12,
  associations: 3,
  ...extra,
});

test('a synced agent with a healthy uplink is ready, per family as its uplinks carry them', () => {
  expect(steeringReadiness(report([state('isp-a', true), state('isp-b', true)]), [dualStack, v4Only])).toEqual({
    ready: true,
    hash: 'sha256:abc',
    ipv4: true,
    ipv6: true,
  });
  expect(steeringReadiness(report([state('isp-a', false), state('isp-b', true)]), [dualStack, v4Only])).toEqual({
    ready: true,
    hash: 'sha256:abc',
    ipv4: true,
    ipv6: false,
  });
  // A point-to-point uplink carries both families; one the report does not name yet counts as healthy.
  expect(steeringReadiness(report([]), [pointToPoint])).toMatchObject({ ready: true, ipv4: true, ipv6: true });
});

test('without a healthy uplink, before the first sync or after a failed one, the node is not ready', () => {
  const uplinks = [dualStack, v4Only];
  const healthy = [state('isp-a', true), state('isp-b', true)];
  expect(steeringReadiness(report([state('isp-a', false), state('isp-b', false)]), uplinks)).toEqual({
    ready: false,
    hash: 'sha256:abc',
    ipv4: false,
    ipv6: false,
  });
  expect(steeringReadiness(report(healthy), [])).toMatchObject({ ready: false });
  const fresh: AgentReport = { node: 'gw-1', uplinks: healthy, flows: 0, associations: 0 };
  expect(steeringReadiness(fresh, uplinks)).toEqual({ ready: false, ipv4: true, ipv6: true });
  const failed = report(healthy, { lastSync: { ...synced!, error: 'nft: syntax error' } });
  expect(steeringReadiness(failed, uplinks).ready).toBe(false);
});

test('the answer holds no flow, pod or uplink detail', () => {
  const answer = steeringReadiness(report([state('isp-a', true)]), [dualStack]);
  expect(Object.keys(answer).sort()).toEqual(['hash', 'ipv4', 'ipv6', 'ready']);
});

test('a stream is asked for with an interval in milliseconds, kept within 50 ms and 10 s', () => {
  expect(steeringStreamInterval(undefined)).toBeUndefined();
  expect(steeringStreamInterval('')).toBeUndefined();
  expect(steeringStreamInterval('soon')).toBeUndefined();
  expect(steeringStreamInterval('0')).toBeUndefined();
  expect(steeringStreamInterval('200')).toBe(200);
  expect(steeringStreamInterval(['250', '300'])).toBe(250);
  expect(steeringStreamInterval('1')).toBe(50);
  expect(steeringStreamInterval('60000')).toBe(10_000);
});

test('names the failover addresses the agent holds, and none for a gateway without failover', () => {
  const held = report([state('isp-a', true)], { failoverAddresses: ['100.64.1.100', 'fd00:64:1::100'] });
  expect(steeringReadiness(held, [dualStack]).addresses).toEqual(['100.64.1.100', 'fd00:64:1::100']);
  expect(steeringReadiness(report([state('isp-a', true)], { failoverAddresses: [] }), [dualStack]).addresses).toEqual(
    [],
  );
  expect(steeringReadiness(report([state('isp-a', true)]), [dualStack])).not.toHaveProperty('addresses');
});

test('a stream answers at once when the held addresses change, not only at its interval', async () => {
  let addresses: string[] = [];
  const listeners = new Set<() => void>();
  const follow = (listener: () => void) => {
    listeners.add(listener);
    return () => listeners.delete(listener);
  };
  const answer = (): SteeringReadiness => ({ ready: true, ipv4: true, ipv6: false, addresses });
  const server = createServer((req, res) => streamSteering(res, 10_000, answer, follow));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const abort = new AbortController();
  const heard: Array<{ addresses: readonly string[] | undefined; ms: number }> = [];
  let changedAt = 0;
  const first = new Promise<void>((resolve) => {
    void steeringWatch()({ node: 'gw-1', host: '127.0.0.1', family: 4, port }, 10_000, abort.signal, (_ok, listed) => {
      heard.push({ addresses: listed, ms: performance.now() - changedAt });
      resolve();
    });
  });
  try {
    await first;
    expect(listeners.size).toBe(1);
    const told = new Promise<void>((resolve) => {
      const check = setInterval(() => heard.length === 2 && (clearInterval(check), resolve()), 5);
    });
    addresses = ['100.64.1.100'];
    changedAt = performance.now();
    for (const listener of listeners) listener();
    await told;
    expect(heard[1]!.addresses).toEqual(['100.64.1.100']);
    expect(heard[1]!.ms).toBeLessThan(1000);
  } finally {
    abort.abort();
    await new Promise((resolve) => server.close(resolve));
  }
  // The connection gone, nothing listens any more.
  for (let i = 0; i < 100 && listeners.size; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(listeners.size).toBe(0);
});
