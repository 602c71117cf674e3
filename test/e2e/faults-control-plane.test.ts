// The control plane crashes while traffic flows: the lab (real etcd and apiserver, the operator,
// the dataplane agent following its ConfigMap, sidecars, programs in network namespaces) loses
// etcd and the apiserver to SIGKILL in the middle of a long transfer. The established flow goes
// on, the agent keeps serving its last good config (new flows still classified and translated),
// and once the control plane is back the operator's informers and the agent's watch resume: a
// policy applied with kubectl reaches the kernel.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { freePortRange } from '../cluster/cluster.ts';
import { agentPortCount, namespaceNames, startLab, type Lab } from '../lab/lab.ts';
import { server, until } from './topology.ts';
import { startTransfer } from './traffic.ts';

let lab: Lab | undefined;
let dir: string;

const status = async () => (await (await fetch(`${lab!.state.agentUrl}/status`)).json()) as AgentReport;

/** One connection from the pod's python3 to the lab's whoami server; what the server saw, or undefined. */
async function connectFrom(ns: string): Promise<string | undefined> {
  const { stdout } = await lab!.topology
    .exec(ns, [
      'python3',
      '-c',
      `import socket
s=socket.create_connection(('${server.v4}',9000),timeout=6)
print(s.recv(100).decode().strip())`,
    ])
    .catch(() => ({ stdout: '' }));
  return stdout.trim() || undefined;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-faults-cp-'));
  const agentPort = await freePortRange(agentPortCount);
  lab = await startLab(
    { dir: join(dir, 'lab'), prefix: `fc${process.pid % 100_000}-`, agentPort },
    { progress: () => {} },
  );
}, 240_000);

afterAll(async () => {
  await lab?.stop();
  await rm(dir, { recursive: true, force: true });
}, 60_000);

test('etcd and the apiserver crash mid-transfer: the flow and the dataplane carry on, and all converges after', async () => {
  const { pods } = namespaceNames(lab!.state.prefix);
  const transfer = startTransfer(lab!.topology, pods[0]!, server.v4, 9100, { seconds: 25, bytesPerSecond: 40_000 });
  await transfer.receiving;
  const before = await status();
  expect(before.appliedHash).toBeDefined();

  await lab!.cluster.crashControlPlane();
  const crashedAt = Date.now();
  // Away: the agent keeps its last good config and keeps serving new flows.
  await new Promise((r) => setTimeout(r, 3000));
  const during = await status();
  expect(during.appliedHash).toBe(before.appliedHash);
  expect(during.lastSync?.error).toBeUndefined();
  expect(await connectFrom(pods[1]!)).toMatch(/^100\.64\.\d+\.\d+ \d+$/);
  await new Promise((r) => setTimeout(r, Math.max(0, 8000 - (Date.now() - crashedAt))));

  await lab!.cluster.restartControlPlane();
  const back = Date.now();
  // The apiserver's watch cache starts afresh, after the agent's ConfigMaps last changed: a watch
  // from their versions is refused (410 Gone) once, and not asked for again and again.
  const expired = async () =>
    (await readFile(join(dir, 'lab', 'logs', 'agent.log'), 'utf8'))
      .split('\n')
      .filter((line) => line.includes('Watch expired')).length;
  await until('the agent told its watch expired', async () => ((await expired()) > 0 ? true : undefined), 40_000);
  await new Promise((r) => setTimeout(r, 3000));
  expect(await expired()).toBeLessThanOrEqual(10);
  // Everything resumes: a policy applied now is compiled by the operator and applied by the agent.
  await lab!.cluster.kubectl(['apply', '-f', join(import.meta.dirname, '..', 'lab', 'scenarios', 'deny-curl.yaml')]);
  const converged = await until(
    'the new policy in the kernel',
    async () => {
      const now = await status();
      return now.appliedHash && now.appliedHash !== before.appliedHash ? now : undefined;
    },
    60_000,
  ).catch(async (error: Error) => {
    // What the operator and the agent said last tells why.
    const tail = async (name: string) =>
      (await readFile(join(dir, 'lab', 'logs', `${name}.log`), 'utf8').catch(() => ''))
        .split('\n')
        .slice(-25)
        .join('\n');
    const cm = await lab!.cluster.kubectl(['get', 'cm', '-A', '-o', 'name']).catch((e: Error) => e.message);
    throw new Error(
      `${error.message}\n${cm}\n--- operator\n${await tail('operator')}\n--- agent\n${await tail('agent')}`,
    );
  });
  expect(converged.lastSync?.error).toBeUndefined();
  const result = await transfer.result;
  expect(result).toMatchObject({ ok: true, bytes: result.expected });
  console.log(
    `control plane down ${((back - crashedAt) / 1000).toFixed(1)} s; the transfer kept all ${result.bytes} bytes; ` +
      `a policy applied after the restart reached the kernel in ${((Date.now() - back) / 1000).toFixed(1)} s`,
  );
}, 120_000);
