// Application-aware egress end to end: a pod namespace runs two real programs and the real
// sidecar; the sidecar streams its pod's sockets to the dataplane agent on the gateway node, which
// authenticates it against the real apiserver and applies its associations to the kernel. Rules
// that name applications then deny one program and route the other, from the first packet on
// (Hold mode), and the agent attributes each flow to its program and pod.
import type { ChildProcess } from 'node:child_process';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import { applicationRules, connectionBy, NaaGateway } from './naa-harness.ts';
import { server, stopProcess, until, uplinkAddress } from './topology.ts';
import { startWhoami, type Server } from './traffic.ts';

const namespace = `naa-gw-${process.pid}`;
const whoamiPort = 9000;
const gateway = new NaaGateway({
  kubeconfig: process.env.KUBECONFIG!,
  namespace,
  // A gateway node of the test cluster (test/integration/global-setup.ts): the agent accepts only
  // pods scheduled on its own node.
  node: 'gateway-a',
  uplinks: 2,
  unassociatedFlows: 'Hold',
  rules: applicationRules(namespace, whoamiPort),
});

const sidecarOptions = { log: 'sidecar.log', scanIntervalMs: 50 };
let whoami: Server | undefined;
let sidecar: ChildProcess;

/** One connection from the pod, by a program; resolves with what the server saw, or undefined. */
async function fetchAs(program: 'python3' | 'curl' | 'node'): Promise<string | undefined> {
  const { pod, topology } = gateway;
  const node = `require('net').connect(${whoamiPort}, '${server.v4}').setTimeout(4000, () => process.exit(1)).on('data', (d) => console.log(String(d)))`;
  const argv = program === 'node' ? [process.execPath, '-e', node] : connectionBy(program, pod.ip, whoamiPort);
  try {
    const { stdout } = await topology.exec(pod.netns, argv, { timeoutMs: 10_000, input: '' });
    return stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}

beforeAll(async () => {
  await gateway.start();
  whoami = await startWhoami(gateway.topology, whoamiPort);
  sidecar = await gateway.startSidecar(sidecarOptions);
}, 90_000);

afterAll(async () => {
  await whoami?.stop();
  await gateway.printErrorsLogged(['agent.log', 'sidecar.log']);
  await gateway.stop();
}, 60_000);

describe('applications behind the gateway', () => {
  it('routes python3 through isp2 only, as its rule says: in Hold mode no packet leaves before it is known', async () => {
    const seen = [];
    for (let i = 0; i < 5; i++) seen.push(await fetchAs('python3'));
    expect(seen.map((answer) => answer?.split(' ')[0])).toEqual(Array(5).fill(uplinkAddress(2).v4));
  });

  it('denies curl the destination that python3 reaches, and tells the sidecar which rule did', async () => {
    expect(await fetchAs('curl')).toBeUndefined();
    const said = (await gateway.log('sidecar.log'))
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
    const { pod, topology } = gateway;
    const held = topology.spawn(pod.netns, [
      'python3',
      '-c',
      `import socket,time
s=socket.create_connection(('${server.v4}',${whoamiPort}),timeout=4,source_address=('${pod.ip}',0))
time.sleep(30)`,
    ]);
    const flow = await until('the attributed flow', async () =>
      (await gateway.agentGet<AttributedFlow[]>('/flows')).find(
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
    const impostor = gateway.spawnSidecar({
      log: 'impostor.log',
      claim: { name: 'other', uid: '00000000-0000-0000-0000-000000000000' },
    });
    await until('the refusal', async () =>
      (await gateway.log('agent.log')).includes('but the token is bound to') ? true : undefined,
    );
    await stopProcess(impostor);
  });

  it('resyncs after the sidecar and then the agent restart', async () => {
    await stopProcess(sidecar);
    sidecar = gateway.spawnSidecar(sidecarOptions);
    expect(await fetchAs('python3')).toMatch(/^100\.64\.2\.2 /);
    await stopProcess(gateway.agent);
    // The sidecar retries with a growing backoff while the agent is away; its first flows after
    // the restart are decided once its stream is back and its snapshot applied.
    const accepted = async () => (await gateway.log('agent.log')).split('"msg":"Accepted NAA stream"').length;
    const before = await accepted();
    await gateway.startAgent();
    await until('the sidecar back on the restarted agent', async () =>
      (await accepted()) > before ? true : undefined,
    );
    expect(await fetchAs('python3')).toMatch(/^100\.64\.2\.2 /);
    expect(await fetchAs('curl')).toBeUndefined();
  });
});
