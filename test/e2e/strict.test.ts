// Strict association end to end: the pod namespace runs two real programs with the stamping
// library preloaded and the real sidecar in strict mode; the agent classifies each new flow by the
// stamp in its first packet. Under PodRules (an unclassified flow would take any uplink and pass
// any port), 1,000 connections of each program must all leave through their application's uplink,
// the denied program's SYNs must never get through, the gateway's counters must show every new
// flow stamped, and no stamp may reach the server. Everything is counted at the gateway (its
// conntrack table and counters) and at the server's link, not inferred from the clients.
import type { ChildProcess } from 'node:child_process';
import {
  curlConnects,
  deniedConnects,
  expectClassified,
  pythonConnects,
  strictGateway,
  strictPorts,
} from './strict-programs.ts';
import { startWhoami, type Server } from './traffic.ts';

const namespace = `naa-strict-${process.pid}`;
const ports = strictPorts;
const connections = 1000;
const gateway = strictGateway(namespace);

const servers: Server[] = [];
let sidecar: ChildProcess;
/** The environment of a program of a strict pod, as the webhook sets it. */
let preloaded: () => Record<string, string>;

/** Runs a shell script in the pod namespace, with `env`. */
async function inPod(script: string, env: Record<string, string> = {}): Promise<string> {
  const assignments = Object.entries(env).map(([name, value]) => `${name}=${value}`);
  const { stdout } = await gateway.topology.exec(gateway.pod.netns, ['env', ...assignments, 'sh', '-c', script], {
    timeoutMs: 240_000,
  });
  return stdout;
}

const percentile = (values: number[], q: number) =>
  [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.ceil(q * values.length) - 1)]!;

beforeAll(async () => {
  await gateway.start();
  for (const port of Object.values(ports)) servers.push(await startWhoami(gateway.topology, port));
  // What reaches the server: any packet still carrying a DSCP would be a stamp that leaked.
  await gateway.topology.exec(gateway.topology.ns.srv, [
    'nft',
    'add table inet leak; add chain inet leak in { type filter hook input priority 0; }; add rule inet leak in ip dscp != cs0 counter',
  ]);
  const strict = await gateway.startStampingSidecar({ log: 'sidecar.log' });
  sidecar = strict.sidecar;
  preloaded = () => strict.env;
}, 120_000);

afterAll(async () => {
  sidecar?.kill('SIGTERM');
  for (const s of servers) await s.stop();
  await gateway.printErrorsLogged(['agent.log', 'sidecar.log']);
  await gateway.stop();
}, 60_000);

test('1,000 connections of each program are classified from their first packet at the gateway', async () => {
  // curl: a new process per connection, eight at a time.
  let curlFailures = '';
  const curlFlows = await gateway.counted(async () => {
    curlFailures = await inPod(curlConnects(connections), preloaded());
  }, [connections, 0]);
  let stampedTimes: number[] = [];
  const pythonFlows = await gateway.counted(async () => {
    stampedTimes = (await inPod(pythonConnects(ports.python, connections), preloaded())).trim().split(' ').map(Number);
  }, [0, connections]);
  // The denied program's SYNs are dropped at the gateway: none connects, none is refused by the server.
  let denied = '';
  const deniedFlows = await gateway.counted(async () => {
    denied = await inPod(deniedConnects(connections), preloaded());
  }, [0, 0]);
  const counters = await gateway.strictCounters();

  expectClassified({ curlFailures, curlFlows, pythonFlows, deniedFlows, denied, counters }, connections);

  // The same program without the library: its flows arrive unstamped, counted as such, and the
  // pod's rules (any uplink) decide them.
  let plainTimes: number[] = [];
  const plainFlows = await gateway.counted(async () => {
    plainTimes = (await inPod(pythonConnects(ports.unstamped, connections))).trim().split(' ').map(Number);
  }, [connections / 2, connections / 2]);
  const after = await gateway.strictCounters();
  expect(after.newFlows - counters.newFlows).toBe(connections);
  expect(after.stamped).toBe(counters.stamped);
  expect(plainFlows[0]! + plainFlows[1]!).toBe(connections);
  expect(Math.min(...plainFlows)).toBeGreaterThan(0);

  // Nothing set inside the pod reached the server.
  const leak = await gateway.topology.exec(gateway.topology.ns.srv, ['nft', 'list', 'table', 'inet', 'leak']);
  expect(leak.stdout).toMatch(/counter packets 0 bytes 0/);

  const share = counters.stamped / counters.newFlows;
  console.log(
    [
      `strict: ${connections} curl + ${connections} python3 + ${connections} denied connections; ` +
        `${(share * 100).toFixed(1)}% of new flows stamped at the gateway (${counters.stamped}/${counters.newFlows} packets)`,
      `connect() stamped   p50 ${percentile(stampedTimes, 0.5).toFixed(3)} ms  p99 ${percentile(stampedTimes, 0.99).toFixed(3)} ms  (first, which asks the sidecar: ${stampedTimes[0]!.toFixed(3)} ms)`,
      `connect() unstamped p50 ${percentile(plainTimes, 0.5).toFixed(3)} ms  p99 ${percentile(plainTimes, 0.99).toFixed(3)} ms  (baseline, same program and path)`,
    ].join('\n'),
  );
}, 300_000);
