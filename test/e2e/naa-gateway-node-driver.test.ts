// A pod with the Node driver on a gateway node: no sidecar in it, and no node agent on its node.
// The real gateway agent (`dataplane run --associate-pods`) finds the pod's programs from the
// host's /proc by the cgroup the kubelet would give its container (cgroup v1,
// /kubepods/besteffort/pod<uid>/<container id>), streams their sockets node-driven and without any
// token to its own NAA server within its process, which takes them because the real apiserver says the
// pod is node-driven and runs on this node, and applies them to the kernel: the rules that name a
// program decide for it (Hold mode: nothing leaves before the program is known), and the agent
// attributes each flow to its program, container and pod. A node-driven hello on the agent's
// network port is refused, even with the node's own agent certificate.
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import { applicationRules, connectionBy, NaaGateway } from './naa-harness.ts';
import { ContainerCgroup } from './node-driven.ts';
import { podGateway, server, stopProcess, until, uplinkAddress } from './topology.ts';
import { startWhoami, type Server } from './traffic.ts';

const namespace = `naa-gw-node-${process.pid}`;
const whoamiPort = 9000;
const naaPort = 7740;
const programs = join(import.meta.dirname, 'programs');
const containerId = randomBytes(32).toString('hex');
const gateway = new NaaGateway({
  kubeconfig: process.env.KUBECONFIG!,
  namespace,
  // A gateway node of the test cluster (test/integration/global-setup.ts), where the Pod runs.
  node: 'gateway-a',
  uplinks: 2,
  unassociatedFlows: 'Hold',
  nodeDriven: [{ id: containerId, name: 'app' }],
  rules: applicationRules(namespace, whoamiPort),
});

let whoami: Server | undefined;
let container: ContainerCgroup | undefined;

/**
 * Starts `argv` in the pod namespace as a program of the pod's container: it waits for a line on
 * its stdin, which it gets once it is in the container's cgroup, before it runs.
 */
function inContainer(argv: string[]): ChildProcess {
  const child = gateway.topology.spawn(gateway.pod.netns, ['sh', '-c', 'read go; exec "$@"', 'sh', ...argv], {
    stdio: ['pipe', 'pipe', 'ignore'],
  });
  container!.place(child.pid!);
  child.stdin!.end('\n');
  return child;
}

/**
 * In Hold mode a new program's first SYN waits until the agent has seen the program (at a look at
 * the pod after the SYN moved its counters, with the host's processes listed afresh) and its
 * association reached the kernel: often past the retransmission at 1 s, and on a loaded machine
 * past the one at 3 s. A connection that is let
 * through then still succeeds within 8 s (the retransmission at 7 s); a denied one never does.
 */
const connectSeconds = 8;

/** One connection from the pod's container, by a program; resolves with what the server saw, or undefined. */
async function fetchAs(program: 'python3' | 'curl'): Promise<string | undefined> {
  const child = inContainer(connectionBy(program, gateway.pod.ip, whoamiPort, connectSeconds));
  let stdout = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  await new Promise((resolve) => child.once('exit', resolve));
  return stdout.trim() || undefined;
}

beforeAll(async () => {
  await gateway.start();
  container = new ContainerCgroup(gateway.pod.uid, containerId);
  whoami = await startWhoami(gateway.topology, whoamiPort);
}, 90_000);

afterAll(async () => {
  await whoami?.stop();
  await gateway.printErrorsLogged(['agent.log']);
  await gateway.stop();
  await container?.remove();
}, 60_000);

describe('a node-driven pod on a gateway node', () => {
  it('is driven by the gateway agent, its stream handed to its own NAA server in its process', async () => {
    await until('the gateway agent’s own stream of the pod', async () =>
      (await gateway.log('agent.log')).includes(`"msg":"Accepted NAA stream","pod":"${namespace}/app"`)
        ? true
        : undefined,
    );
  });

  it('routes python3 through isp2 only, as its rule says: in Hold mode no packet leaves before it is known', async () => {
    const seen = [];
    for (let i = 0; i < 3; i++) seen.push(await fetchAs('python3'));
    expect(seen.map((answer) => answer?.split(' ')[0])).toEqual(Array(3).fill(uplinkAddress(2).v4));
  });

  it('denies curl the destination that python3 reaches', async () => {
    expect(await fetchAs('curl')).toBeUndefined();
    expect(await fetchAs('python3')).toMatch(new RegExp(`^${uplinkAddress(2).v4.replace(/\./g, '\\.')} `));
  });

  it('attributes the flows to their program, container and pod', async () => {
    const { pod } = gateway;
    const held = inContainer([
      'python3',
      '-c',
      `import socket,time
s=socket.create_connection(('${server.v4}',${whoamiPort}),timeout=${connectSeconds},source_address=('${pod.ip}',0))
time.sleep(30)`,
    ]);
    const flow = await until('the attributed flow', async () =>
      (await gateway.agentGet<AttributedFlow[]>('/flows')).find(
        (f) => f.source === pod.ip && f.destinationPort === whoamiPort && f.application?.pid === held.pid,
      ),
    );
    expect(flow).toMatchObject({
      uplinkName: 'isp2',
      mappedAddress: uplinkAddress(2).v4,
      pod: { namespace, name: 'app' },
      application: { processName: 'python3', containerName: 'app', containerId },
    });
    await stopProcess(held);
  });

  it("refuses a node-driven hello on the agent's network port, even with the node's own agent certificate", async () => {
    const { stdout } = await gateway.topology.exec(
      gateway.pod.netns,
      [
        process.execPath,
        join(programs, 'naa-client.ts'),
        JSON.stringify({
          target: `${podGateway(1).v4}:${naaPort}`,
          transport: 'mtls',
          tlsDir: gateway.tlsDir('gateway-a'),
          pod: { namespace, name: 'app', uid: gateway.pod.uid },
        }),
      ],
      { timeoutMs: 30_000 },
    );
    expect(JSON.parse(stdout.trim().split('\n').pop()!)).toEqual({
      helloAck: false,
      code: 7,
      details:
        `pod ${namespace}/app runs on this gateway node gateway-a, whose gateway agent drives it from within ` +
        `itself only, and this stream comes from ${gateway.pod.ip}`,
    });
  });
});
