// The local lab as a newcomer runs it (`npm run lab`), headless: it comes up with two
// applications' flows balanced over the uplinks and attributed to their pods; a failed uplink
// shows in the view within seconds; a worker node's pod leaves through a gateway node with that
// node's uplink address, and through the other gateway node once the first fails; and stopping it (Ctrl-C, or `down` after the lab's process
// died) leaves no namespace, process, port or file behind. The lab starts a control plane of its
// own, beside the one of the integration run.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import type { AttributionRecord } from '../../dataplane/attribution.ts';
import { freePortRange } from '../cluster/cluster.ts';
import { agentPortCount, pods, stateFile, viewSources, workerPods, type LabState } from '../lab/lab.ts';
import { gatewayNodes, gatewayUplinkAddress, underlay } from '../lab/nodes.ts';
import { FlowMemory, getFlowData, readView, renderView, type ViewSources } from '../lab/view.ts';
import { until } from './topology.ts';

const run = promisify(execFile);
const main = join(import.meta.dirname, '..', 'lab', 'main.ts');
const prefix = `lt${process.pid % 100_000}-`;
let env: NodeJS.ProcessEnv;
let dir: string;
let agentUrl: string;
let sources: ViewSources;
let lab: ChildProcess | undefined;
let output = '';

/** Starts `npm run lab -- up --headless`; resolves once it says it is up. */
async function startLab(): Promise<ChildProcess> {
  output = '';
  const child = spawn(process.execPath, [main, 'up', '--headless'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  await until(
    'the lab to come up',
    async () => {
      if (child.exitCode !== null) throw new Error(`the lab exited:\n${output}`);
      return output.includes('The lab is up') ? true : undefined;
    },
    180_000,
  ).catch((error: Error) => {
    throw new Error(`${error.message}\n${output}`);
  });
  return child;
}

const labCommand = (...args: string[]) => run(process.execPath, [main, ...args], { env });
const agent = async <T>(path: string) => (await (await fetch(`${agentUrl}${path}`)).json()) as T;
/** Flow data from a gateway node's secure listener (gateway-1's by default), as the lab's flow reader. */
const flowData = async <T>(path: string, flowUrl = sources.gateways[0]!.flowUrl) =>
  JSON.parse(await getFlowData(sources.flowAccess, `${flowUrl}${path}`)) as T;

/** Every pid the lab's namespaces and host processes hold now. */
async function labPids(): Promise<number[]> {
  const { stdout } = await run('ip', ['netns', 'list']);
  const namespaces = stdout
    .split('\n')
    .map((line) => line.split(' ')[0]!)
    .filter((ns) => ns.startsWith(prefix));
  const pids = (await readFile(join(dir, 'pids'), 'utf8')).split('\n').filter(Boolean).map(Number);
  for (const ns of namespaces) {
    pids.push(...(await run('ip', ['netns', 'pids', ns])).stdout.split('\n').filter(Boolean).map(Number));
  }
  return pids;
}

/** What the machine must be back to once the lab is gone. */
async function expectNothingLeft(pids: number[]): Promise<void> {
  const { stdout } = await run('ip', ['netns', 'list']);
  expect(stdout.split('\n').filter((line) => line.startsWith(prefix))).toEqual([]);
  expect(existsSync(dir)).toBe(false);
  // A killed process is gone once the kernel has torn it down (a zombie waits only for its parent's wait()).
  const running = (pid: number) => {
    try {
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  await until('the lab processes to be gone', async () => (pids.some(running) ? undefined : true), 10_000).catch(
    () => undefined,
  );
  expect(pids.filter(running)).toEqual([]);
  const port = Number(new URL(agentUrl).port);
  const listening = await new Promise((resolve) =>
    createConnection(port, '127.0.0.1')
      .on('connect', function (this: ReturnType<typeof createConnection>) {
        this.destroy();
        resolve(true);
      })
      .on('error', () => resolve(false)),
  );
  expect(listening).toBe(false);
}

beforeAll(async () => {
  dir = join(await mkdtemp(join(tmpdir(), 'naat-lab-test-')), 'lab');
  const port = await freePortRange(agentPortCount);
  agentUrl = `http://127.0.0.1:${port}`;
  env = { ...process.env, NAAT_LAB_DIR: dir, NAAT_LAB_PREFIX: prefix, NAAT_LAB_AGENT_PORT: String(port) };
  const started = performance.now();
  lab = await startLab();
  console.log(`the lab came up in ${((performance.now() - started) / 1000).toFixed(1)} s:\n${output}`);
  sources = viewSources(JSON.parse(await readFile(stateFile(dir), 'utf8')) as LabState, new Map());
}, 200_000);

afterAll(async () => {
  // Whatever a failed test left.
  await labCommand('down').catch(() => undefined);
  await rm(join(dir, '..'), { recursive: true, force: true });
}, 120_000);

describe('the local lab', () => {
  it('balances the flows of two applications over the uplinks, attributed to their pods', async () => {
    const seen = new Map<string, Set<string>>();
    let sample: AttributedFlow | undefined;
    await until(
      'flows of two applications over two uplinks',
      async () => {
        for (const flow of await flowData<AttributedFlow[]>('/flows')) {
          if (!flow.application || !flow.pod || !flow.uplinkName) continue;
          const app = `${flow.pod.namespace}/${flow.pod.name} ${flow.application.processName}`;
          seen.set(app, (seen.get(app) ?? new Set()).add(flow.uplinkName));
          sample ??= flow;
        }
        const uplinks = new Set([...seen.values()].flatMap((s) => [...s]));
        return seen.size >= 2 && uplinks.size >= 2 ? true : undefined;
      },
      60_000,
    );
    console.log(`applications and their uplinks: ${[...seen].map(([a, u]) => `${a}: ${[...u]}`).join('; ')}`);
    expect([...seen.keys()].every((app) => pods.some((p) => app.startsWith(`${p.namespace}/${p.name} `)))).toBe(true);

    // The NAT attribution log names the pod and the application behind the mapped address and port.
    const at = new Date(Date.parse(String(sample!.startedAt)) + 10).toISOString();
    const records = await flowData<AttributionRecord[]>(
      `/attribution?address=${sample!.mappedAddress}&port=${sample!.mappedPort}&at=${encodeURIComponent(at)}`,
    );
    expect(records[0]).toMatchObject({
      pod: sample!.pod,
      application: { processName: sample!.application!.processName },
      uplink: sample!.uplinkName,
    });

    // perl is denied in the reports pod by the lab's policy, and the view says so.
    await until('perl denied', async () => {
      const view = renderView(await readView(sources, new FlowMemory(new Map())));
      return /^perl\s+[1-9]/m.test(view) ? view : undefined;
    });
  });

  it('shows a failed uplink as DOWN in the view within seconds, and moves new flows off it', async () => {
    const failed = Date.now();
    await labCommand('fail', 'isp1');
    const memory = new FlowMemory(new Map());
    const view = await until(
      'isp1 DOWN in the view',
      async () => {
        const screen = renderView(await readView(sources, memory));
        return /^isp1\s+gateway-1\s+DOWN/m.test(screen) ? screen : undefined;
      },
      10_000,
    );
    const seconds = (Date.now() - failed) / 1000;
    console.log(`isp1 showed DOWN ${seconds.toFixed(1)} s after it failed:\n${view}`);
    expect(seconds).toBeLessThan(5);
    // The view shows the agent's health decision as it is made; new flows avoid isp1 once a sync
    // that started after it has put it in the kernel.
    await until('the failure in the kernel', async () => {
      const status = await agent<AgentReport>('/status');
      const down = Date.parse(status.uplinks.find((u) => u.name === 'isp1')!.since);
      const sync = status.lastSync;
      return sync && !sync.error && Date.parse(sync.at) - sync.durationMs >= down ? true : undefined;
    });
    // Flows that start from now on leave through the other uplinks.
    const since = Date.now();
    const later = await until(
      'new flows after the failure',
      async () => {
        const flows = (await flowData<AttributedFlow[]>('/flows')).filter(
          (f) => Date.parse(String(f.startedAt)) > since,
        );
        return flows.length >= 3 ? flows : undefined;
      },
      30_000,
    );
    expect(later.map((f) => f.uplinkName).filter((u) => u === 'isp1')).toEqual([]);
    await labCommand('restore', 'isp1');
    await until('isp1 healthy again', async () =>
      (await agent<AgentReport>('/status')).uplinks.find((u) => u.name === 'isp1')?.healthy ? true : undefined,
    );
  });

  it('steers a worker pod through a gateway node with its uplink address, and through the other once it fails', async () => {
    // Who the server sees, asked from the worker's pod etl (its namespace pod3), each time on a new flow.
    const seen = async () => {
      const { stdout } = await run('ip', [
        'netns',
        'exec',
        `${prefix}pod3`,
        'python3',
        '-c',
        `import socket
s = socket.create_connection(('203.0.113.10', 9000), timeout=0.5)
print(s.recv(100).decode().strip())`,
      ]);
      return stdout.trim().split(' ')[0]!;
    };
    // Each gateway node g translates to its own address on an uplink: 100.64.N.(g+1).
    const nodeOf = (address: string) =>
      gatewayNodes.find((_, g) => [1, 2, 3].some((n) => gatewayUplinkAddress(g + 1, n).v4 === address))?.name;
    const podAddresses = new Set<string>();
    for (const pod of workerPods) {
      const { stdout } = await run(
        'kubectl',
        ['get', 'pod', pod.name, '-n', pod.namespace, '-o', 'jsonpath={.status.podIP}'],
        {
          env: { ...process.env, KUBECONFIG: join(dir, 'kubeconfig') },
        },
      );
      podAddresses.add(stdout.trim());
    }
    // The node agent reported steering ready, and the operator says so on the gateway.
    await until('SteeringReady on the gateway', async () => {
      const { stdout } = await run('kubectl', ['get', 'egressgateway', 'lab', '-o', 'json'], {
        env: { ...process.env, KUBECONFIG: join(dir, 'kubeconfig') },
      });
      const conditions = (JSON.parse(stdout) as { status?: { conditions?: Array<{ type: string; status: string }> } })
        .status?.conditions;
      return conditions?.some((c) => c.type === 'SteeringReady' && c.status === 'True') ? true : undefined;
    });
    const first = await until('an answer from the server to the worker pod', async () => (await seen()) || undefined);
    const through = nodeOf(first);
    console.log(`the server saw the worker pod as ${first} (${through})`);
    expect(through).toBeDefined();
    expect(podAddresses.has(first)).toBe(false);
    expect(first.startsWith(underlay.subnet.split('.').slice(0, 3).join('.'))).toBe(false);
    // That gateway node's agent has the worker pods' flows, translated to its own uplink addresses,
    // and its attribution API names the pod behind a mapped address and port.
    const url = sources.gateways.find((g) => g.node === through)!.flowUrl;
    const flow = await until("a worker pod's flow in its gateway node's /flows", async () => {
      const flows = await flowData<AttributedFlow[]>('/flows', url);
      return flows.find((f) => podAddresses.has(f.source) && f.mappedPort);
    });
    expect(nodeOf(flow.mappedAddress)).toBe(through);
    const at = new Date(Date.parse(String(flow.startedAt)) + 10).toISOString();
    const records = await flowData<AttributionRecord[]>(
      `/attribution?address=${flow.mappedAddress}&port=${flow.mappedPort}&at=${encodeURIComponent(at)}`,
      url,
    );
    expect(records[0]?.pod?.namespace).toBe('batch');
    expect(workerPods.map((p) => p.name)).toContain(records[0]?.pod?.name);

    // Timed from when the command has taken the link down, not from its own start-up.
    await labCommand('fail', through!);
    const failed = Date.now();
    const moved = await until(
      "the worker pod's new flows through the other gateway node",
      async () => {
        const address = await seen().catch(() => '');
        const node = nodeOf(address);
        return node && node !== through ? address : undefined;
      },
      10_000,
    );
    const seconds = (Date.now() - failed) / 1000;
    const screen = renderView(await readView(sources, new FlowMemory(new Map())));
    console.log(
      `new flows left through ${nodeOf(moved)} (${moved}) ${seconds.toFixed(1)} s after ${through} failed:\n${screen}`,
    );
    // Seen down 0.4–0.6 s after it stops answering, plus a sync, plus a connect that may time out.
    expect(seconds).toBeLessThan(2.5);
    expect(screen).toMatch(new RegExp(`^${through}\\s+DOWN`, 'm'));
    await labCommand('restore', through!);
    await until(`${through} steered to again`, async () =>
      new RegExp(`^${through}\\s+up`, 'm').test(renderView(await readView(sources, new FlowMemory(new Map()))))
        ? true
        : undefined,
    );
  });

  it('removes everything it made when stopped with Ctrl-C', async () => {
    const pids = await labPids();
    expect(pids.length).toBeGreaterThan(10);
    const exited = new Promise<number | null>((resolve) => lab!.once('exit', resolve));
    lab!.kill('SIGINT');
    expect(await exited).toBe(0);
    lab = undefined;
    expect(output).toContain('The naat lab is down');
    await expectNothingLeft(pids);
  }, 60_000);

  it('removes everything with `down` after the lab process died', async () => {
    const child = await startLab();
    const pids = await labPids();
    const killed = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await killed;
    const { stdout } = await labCommand('down');
    expect(stdout).toContain('The naat lab is down');
    await expectNothingLeft(pids);
  }, 200_000);
});
