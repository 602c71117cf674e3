// Which gateway nodes can take steered flows, against a real gateway agent: the agent runs as users
// run it (`node dataplane/main.ts run --config FILE`) on the gateway namespace of a topology and
// answers `/steering`; a node agent's peer monitor runs in a pod namespace (standing in for another
// node) and asks it. The agent's uplink failing (503), the agent hanging and its address vanishing
// must each take the peer out well within a second.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import type { TunnelEndpoint } from '../../contracts/gateway/index.ts';
import type { SteeringReadiness } from '../../dataplane/steering/gateway-readiness.ts';
import { renderedListenArgs } from './rendered-agent.ts';
import {
  createTopology,
  podGateway,
  server,
  stopProcess,
  until,
  uplinkAddress,
  uplinkNextHop,
  type Topology,
} from './topology.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const monitorModule = pathToFileURL(join(import.meta.dirname, '..', '..', 'dataplane', 'steering', 'peer-monitor.ts'));
const healthPort = 9091;

// The same agent twice: by its IPv4 address (preferred when a peer has both) and by IPv6 alone.
const peers: TunnelEndpoint[] = [
  { node: 'gw', addresses: [podGateway(1).v6, podGateway(1).v4] },
  { node: 'gw-v6', addresses: [podGateway(1).v6] },
];

const monitorScript = `
const { createPeerMonitor } = await import(process.argv[1]);
const monitor = createPeerMonitor({ peers: JSON.parse(process.argv[2]), healthPort: Number(process.argv[3]) });
const print = () => console.log(JSON.stringify({ at: Date.now(), up: [...monitor.up()].sort() }));
monitor.onChange(print);
monitor.start();
print();
process.on('SIGTERM', () => monitor.stop().then(() => process.exit(0)));
`;

let t: Topology;
let dir: string;
let agent: ChildProcess | undefined;
let monitor: ChildProcess | undefined;
const seen: Array<{ at: number; up: string[] }> = [];
const detections: string[] = [];

const config = {
  version: 1,
  gateway: 'e2e',
  hash: 'e2e-steering',
  sources: ['10.244.0.0/16', 'fd00:244::/32'],
  uplinks: [
    {
      name: 'isp1',
      interface: 'up1',
      nextHop: { ipv4: uplinkNextHop(1).v4, ipv6: uplinkNextHop(1).v6 },
      snat: { addresses: [uplinkAddress(1).v4, uplinkAddress(1).v6] },
      healthCheck: {
        targets: [server.v4],
        protocol: 'ICMP',
        intervalMs: 100,
        timeoutMs: 80,
        failureThreshold: 1,
        successThreshold: 1,
      },
    },
  ],
  balancing: { mode: 'Weighted' },
  timeouts: {},
};

/** `/steering` as another node asks it. */
async function steering(): Promise<{ code: number; body: SteeringReadiness }> {
  const url = `http://${podGateway(1).v4}:${healthPort}/steering`;
  const { stdout } = await t.exec(t.ns.pods[0]!, ['curl', '-s', '-m', '2', '-w', '\\n%{http_code}', url]);
  const lines = stdout.trim().split('\n');
  return { code: Number(lines.at(-1)), body: JSON.parse(lines[0]!) as SteeringReadiness };
}

/** Waits until the monitor reports `up` after `since`; resolves with how long after `since`. */
async function upBecomes(up: string[], since: number): Promise<number> {
  const line = await until(
    `up = ${JSON.stringify(up)}`,
    async () => seen.find((l) => l.at >= since && JSON.stringify(l.up) === JSON.stringify(up)),
    5000,
  );
  return line.at - since;
}

beforeAll(async () => {
  t = await createTopology({ pods: 1, uplinks: 1 });
  dir = await mkdtemp(join(tmpdir(), 'naat-steering-health-'));
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(config));
  const log = openSync(join(dir, 'agent.log'), 'a');
  agent = t.spawn(
    t.ns.gw,
    [
      process.execPath,
      main,
      'run',
      '--config',
      join(dir, 'gateway.json'),
      '--node',
      'gw',
      '--state-dir',
      join(dir, 'state'),
      // Where the operator's DaemonSet has it listen: asked over IPv4 and over IPv6 below.
      ...renderedListenArgs({ health: healthPort, metrics: healthPort + 1 }),
    ],
    { stdio: ['ignore', log, log] },
  );
  closeSync(log);
  await until('/steering answers 200', async () => ((await steering()).code === 200 ? true : undefined));
  monitor = spawn(
    'ip',
    [
      'netns',
      'exec',
      t.ns.pods[0]!,
      process.execPath,
      '--input-type=module',
      '--no-warnings',
      '-e',
      monitorScript,
      monitorModule.href,
      JSON.stringify(peers),
      String(healthPort),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  createInterface({ input: monitor.stdout! }).on('line', (line) => seen.push(JSON.parse(line)));
  await upBecomes(['gw', 'gw-v6'], 0);
}, 60_000);

afterAll(async () => {
  console.log(`peer down detected after (ms): ${detections.join(', ')}`);
  agent?.kill('SIGCONT');
  await stopProcess(monitor);
  await stopProcess(agent);
  await t?.destroy();
  const log = await readFile(join(dir, 'agent.log'), 'utf8').catch(() => '');
  const errors = log.split('\n').filter((line) => line && !line.includes('"level":"info"'));
  if (errors.length) console.log(`the agent logged errors:\n${errors.join('\n')}`);
  await rm(dir, { recursive: true, force: true });
});

test('the gateway agent answers 200 with what it applied, and 503 once it has no healthy uplink', async () => {
  expect(await steering()).toEqual({
    code: 200,
    body: { ready: true, hash: 'e2e-steering', ipv4: true, ipv6: true },
  });
  const failed = Date.now();
  await t.failUplink(1);
  const ms = await upBecomes([], failed);
  detections.push(`uplink failed (agent's own check included) ${ms}`);
  expect(await steering()).toEqual({
    code: 503,
    body: { ready: false, hash: 'e2e-steering', ipv4: false, ipv6: false },
  });
  // The agent notices within a probe round of 100 ms, its peers within 600 ms after that.
  expect(ms).toBeLessThan(1000);
  await t.restoreUplink(1);
  await upBecomes(['gw', 'gw-v6'], failed);
});

test('a gateway agent that stops answering is down well within a second', async () => {
  const stopped = Date.now();
  agent!.kill('SIGSTOP');
  try {
    const ms = await upBecomes([], stopped);
    detections.push(`agent hung ${ms}`);
    expect(ms).toBeLessThan(800);
  } finally {
    agent!.kill('SIGCONT');
  }
  await upBecomes(['gw', 'gw-v6'], stopped);
});

test('a peer whose address vanishes is down well within a second; its other address is unaffected', async () => {
  const gone = Date.now();
  await t.exec(t.ns.gw, ['ip', 'address', 'del', `${podGateway(1).v4}/24`, 'dev', 'pod1']);
  const ms = await upBecomes(['gw-v6'], gone);
  detections.push(`address vanished ${ms}`);
  expect(ms).toBeLessThan(800);
  await new Promise((resolve) => setTimeout(resolve, 500));
  expect(seen.at(-1)!.up).toEqual(['gw-v6']);
});
