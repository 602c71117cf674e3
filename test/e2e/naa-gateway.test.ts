// Application-aware egress end to end: a pod namespace runs two real programs and the real
// sidecar; the sidecar streams its pod's sockets to the dataplane agent on the gateway node, which
// authenticates it against the real apiserver and applies its associations to the kernel. Rules
// that name applications then deny one program and route the other, from the first packet on
// (Hold mode), and the agent attributes each flow to its program and pod.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { URL } from 'node:url';
import { parse as parseYaml } from 'yaml';
import type { AgentReport, AttributedFlow } from '../../dataplane/agent.ts';
import { kubectl } from '../cluster/cluster.ts';
import {
  createTopology,
  podAddress,
  podGateway,
  server,
  stopProcess,
  uplinkAddress,
  uplinkNextHop,
  type Topology,
} from './topology.ts';
import { startWhoami, type Server } from './traffic.ts';

const root = join(import.meta.dirname, '..', '..');
const programs = join(import.meta.dirname, 'programs');
const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const namespace = `naa-gw-${process.pid}`;
const whoamiPort = 9000;
// A gateway node of the test cluster (test/integration/global-setup.ts): the agent accepts only
// pods scheduled on its own node.
const node = 'gateway-a';

let t: Topology;
let dir: string;
let whoami: Server;
let agent: ChildProcess | undefined;
let sidecar: ChildProcess | undefined;
const helpers: ChildProcess[] = [];
let pod: { uid: string; ip: string };

/** Runs a program in a namespace of the topology (or, without one, on the host) with its output in a log file. */
function spawnLogged(ns: string | undefined, argv: string[], log: string, env: NodeJS.ProcessEnv = {}): ChildProcess {
  const fd = openSync(join(dir, log), 'a');
  const options = { stdio: ['ignore', fd, fd] as ['ignore', number, number], env: { ...process.env, ...env } };
  const child = ns ? t.spawn(ns, argv, options) : spawn(argv[0]!, argv.slice(1), options);
  closeSync(fd);
  return child;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function agentGet<T>(path: string): Promise<T> {
  const { stdout } = await t.exec(t.ns.gw, ['curl', '-sf', `http://127.0.0.1:7741${path}`]);
  return JSON.parse(stdout) as T;
}

/** One connection from the pod, by a program; resolves with what the server saw, or undefined. */
async function fetchAs(program: 'python3' | 'curl' | 'node'): Promise<string | undefined> {
  const node = `require('net').connect(${whoamiPort}, '${server.v4}').setTimeout(4000, () => process.exit(1)).on('data', (d) => console.log(String(d)))`;
  const argv =
    program === 'node'
      ? [process.execPath, '-e', node]
      : program === 'python3'
        ? [
            'python3',
            '-c',
            `import socket
s=socket.create_connection(('${server.v4}',${whoamiPort}),timeout=4,source_address=('${pod.ip}',0))
print(s.recv(100).decode().strip())`,
          ]
        : ['curl', '-s', '-m', '4', '--interface', pod.ip, `telnet://${server.v4}:${whoamiPort}`];
  try {
    const { stdout } = await t.exec(t.ns.pods[0]!, argv, { timeoutMs: 10_000, input: '' });
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

function startSidecar(): ChildProcess {
  return spawnLogged(t.ns.pods[0]!, [process.execPath, join(root, 'sidecar', 'main.ts')], 'sidecar.log', {
    NAAT_NAA_SERVER: `${podGateway(1).v4}:7740`,
    NAAT_POD_NAMESPACE: namespace,
    NAAT_POD_NAME: 'app',
    NAAT_POD_UID: pod.uid,
    NAAT_TOKEN_FILE: join(dir, 'token'),
    NAAT_SCAN_INTERVAL_MS: '50',
  });
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-naa-gw-'));
  await k(['create', 'namespace', namespace]);
  await k(['create', 'serviceaccount', 'app', '-n', namespace]);
  await k(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'app', namespace },
      spec: { nodeName: node, serviceAccountName: 'app', containers: [{ name: 'app', image: 'app:test' }] },
    }),
  );
  pod = await until('the pod to get an address', async () => {
    const p = JSON.parse(await k(['get', 'pod', 'app', '-n', namespace, '-o', 'json']));
    return p.status?.podIP ? { uid: p.metadata.uid as string, ip: p.status.podIP as string } : undefined;
  });
  const token = await k(
    ['create', 'token', 'app', '-n', namespace, '--audience', 'naat'].concat([
      '--bound-object-kind',
      'Pod',
      '--bound-object-name',
      'app',
      '--bound-object-uid',
      pod.uid,
    ]),
  );
  await writeFile(join(dir, 'token'), token.trim());

  t = await createTopology({ pods: 1, uplinks: 2 });
  whoami = await startWhoami(t, whoamiPort);
  // The pod namespace takes the address the apiserver gave the pod, as its only IPv4 address: the
  // gateway accepts associations for the pod's own addresses and refuses a stream that reports
  // any other.
  await t.exec(t.ns.pods[0]!, ['ip', 'addr', 'add', `${pod.ip}/32`, 'dev', 'eth0']);
  await t.exec(t.ns.pods[0]!, ['ip', 'addr', 'del', `${podAddress(1).v4}/24`, 'dev', 'eth0']);
  await t.exec(t.ns.pods[0]!, ['ip', 'route', 'replace', 'default', 'via', podGateway(1).v4, 'dev', 'eth0', 'onlink']);
  await t.exec(t.ns.gw, ['ip', 'route', 'add', `${pod.ip}/32`, 'dev', 'pod1']);

  // The agent runs in the gateway namespace; the apiserver listens on the host's loopback. Two
  // relays joined by a Unix socket make the same address work inside the gateway namespace.
  const apiserver = new URL(
    (parseYaml(await readFile(process.env.KUBECONFIG!, 'utf8')) as Kubeconfig).clusters[0]!.cluster.server,
  );
  const socket = join(dir, 'apiserver.sock');
  helpers.push(
    spawnLogged(
      undefined,
      [process.execPath, join(programs, 'relay.ts'), 'from-unix', socket, apiserver.hostname, apiserver.port],
      'relay.log',
    ),
  );
  await until('the host relay', async () =>
    (await readFile(join(dir, 'relay.log'), 'utf8')).includes('listening') ? true : undefined,
  );
  helpers.push(
    spawnLogged(
      t.ns.gw,
      [process.execPath, join(programs, 'relay.ts'), 'to-unix', apiserver.hostname, apiserver.port, socket],
      'relay-gw.log',
    ),
  );

  const uplink = (n: number) => ({
    name: `isp${n}`,
    interface: `up${n}`,
    nextHop: { ipv4: uplinkNextHop(n).v4 },
    snat: { addresses: [uplinkAddress(n).v4] },
  });
  const app = (processName: string) => [{ processName }];
  const config = {
    version: 1,
    gateway: 'naa',
    hash: 'naa-1',
    sources: [pod.ip],
    uplinks: [uplink(1), uplink(2)],
    balancing: {},
    timeouts: {},
    association: { port: 7740, unassociatedFlows: 'Hold', sidecarSources: [pod.ip] },
    rules: [
      {
        policy: `${namespace}/apps`,
        rule: 'no-curl',
        priority: 1,
        sources: [pod.ip],
        applications: app('curl'),
        destinations: [{ cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port: whoamiPort }] }],
        action: 'Deny',
      },
      {
        policy: `${namespace}/apps`,
        rule: 'python-via-isp2',
        priority: 2,
        sources: [pod.ip],
        applications: app('python3'),
        action: 'Allow',
        uplinks: { allowed: ['isp2'] },
      },
    ],
  };
  await writeFile(join(dir, 'gateway.json'), JSON.stringify(config));
  const argv = ['run', '--config', join(dir, 'gateway.json'), '--node', node, '--state-dir', join(dir, 'state')];
  agent = spawnLogged(t.ns.gw, [process.execPath, join(root, 'dataplane', 'main.ts'), ...argv], 'agent.log');
  await until('the agent', async () => ((await agentGet<AgentReport>('/status')).appliedHash ? true : undefined));
  sidecar = startSidecar();
  await until('the sidecar stream', async () =>
    (await readFile(join(dir, 'agent.log'), 'utf8')).includes('Accepted NAA stream') ? true : undefined,
  );
}, 90_000);

interface Kubeconfig {
  clusters: Array<{ cluster: { server: string } }>;
}

afterAll(async () => {
  await stopProcess(sidecar);
  await stopProcess(agent);
  for (const helper of helpers) await stopProcess(helper);
  await whoami?.stop();
  await t?.destroy();
  const logs = await Promise.all(
    ['agent.log', 'sidecar.log'].map((f) => readFile(join(dir, f), 'utf8').catch(() => '')),
  );
  const errors = logs
    .join('\n')
    .split('\n')
    .filter((line) => line.includes('"level":"error"'));
  if (errors.length) console.log(`errors logged:\n${errors.join('\n')}`);
  await rm(dir, { recursive: true, force: true });
  await k(['delete', 'namespace', namespace, '--wait=false']);
}, 60_000);

describe('applications behind the gateway', () => {
  it('routes python3 through isp2 only, as its rule says: in Hold mode no packet leaves before it is known', async () => {
    const seen = [];
    for (let i = 0; i < 5; i++) seen.push(await fetchAs('python3'));
    expect(seen.map((answer) => answer?.split(' ')[0])).toEqual(Array(5).fill(uplinkAddress(2).v4));
  });

  it('denies curl the destination that python3 reaches, and tells the sidecar which rule did', async () => {
    expect(await fetchAs('curl')).toBeUndefined();
    const said = (await readFile(join(dir, 'sidecar.log'), 'utf8'))
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line));
    expect(said.find((entry) => entry.msg === 'Received effective policy')?.rules).toEqual([
      `${namespace}/apps#no-curl Deny`,
      `${namespace}/apps#python-via-isp2 Allow`,
    ]);
    expect(said.find((entry) => entry.msg === 'Gateway denied flow')?.rule).toBe(`${namespace}/apps#no-curl`);
    expect(await fetchAs('python3')).toMatch(new RegExp(`^${uplinkAddress(2).v4.replace(/\./g, '\\.')} `));
  });

  it('lets a program that no rule names through by the pod rules, once it is known', async () => {
    const answer = await fetchAs('node');
    expect([uplinkAddress(1).v4, uplinkAddress(2).v4]).toContain(answer?.split(' ')[0]);
  });

  it('attributes the flows to their program and pod', async () => {
    const held = t.spawn(t.ns.pods[0]!, [
      'python3',
      '-c',
      `import socket,time
s=socket.create_connection(('${server.v4}',${whoamiPort}),timeout=4,source_address=('${pod.ip}',0))
time.sleep(30)`,
    ]);
    helpers.push(held);
    const flow = await until('the attributed flow', async () =>
      (await agentGet<AttributedFlow[]>('/flows')).find(
        (f) => f.source === pod.ip && f.destinationPort === whoamiPort && f.application?.processName === 'python3',
      ),
    );
    expect(flow).toMatchObject({
      uplinkName: 'isp2',
      mappedAddress: uplinkAddress(2).v4,
      pod: { namespace, name: 'app' },
    });
    await stopProcess(held);
  });

  it('refuses a sidecar whose token belongs to another pod', async () => {
    const impostor = spawnLogged(t.ns.pods[0]!, [process.execPath, join(root, 'sidecar', 'main.ts')], 'impostor.log', {
      NAAT_NAA_SERVER: `${podGateway(1).v4}:7740`,
      NAAT_POD_NAMESPACE: namespace,
      NAAT_POD_NAME: 'other',
      NAAT_POD_UID: '00000000-0000-0000-0000-000000000000',
      NAAT_TOKEN_FILE: join(dir, 'token'),
    });
    helpers.push(impostor);
    await until('the refusal', async () =>
      (await readFile(join(dir, 'agent.log'), 'utf8')).includes('but the token is bound to') ? true : undefined,
    );
    await stopProcess(impostor);
  });

  it('resyncs after the sidecar and then the agent restart', async () => {
    await stopProcess(sidecar);
    sidecar = startSidecar();
    expect(await fetchAs('python3')).toMatch(/^100\.64\.2\.2 /);
    await stopProcess(agent);
    const argv = ['run', '--config', join(dir, 'gateway.json'), '--node', node, '--state-dir', join(dir, 'state')];
    agent = spawnLogged(t.ns.gw, [process.execPath, join(root, 'dataplane', 'main.ts'), ...argv], 'agent.log');
    await until('the restarted agent', async () =>
      (await agentGet<AgentReport>('/status')).appliedHash ? true : undefined,
    );
    expect(await fetchAs('python3')).toMatch(/^100\.64\.2\.2 /);
    expect(await fetchAs('curl')).toBeUndefined();
  });
});
