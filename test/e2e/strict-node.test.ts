// Strict association with the Node driver end to end, driven by the node agent: no sidecar. The
// pod is a Pod on a worker node, node-driven and strict (node-strict-pod.ts has its processes);
// the real node agent (`node --associate-pods`, in the worker's namespace) finds it from the
// host's /proc, listens on the pod folder's stamp socket through the pod's process, and streams in
// strict mode, through its relay and with its node's certificate, to the real gateway agent.
// Under PodRules (an unclassified flow would take any uplink and pass any port), every flow must
// leave through its application's uplink, the denied program's SYNs must never get through, and
// the gateway's counters must show every new flow stamped; a process that reaches the socket but
// is not one of the pod's gets no stamp.
import { DriverNode, steeringListen, type DrivenPod } from '../bench/driver-node.ts';
import { NodeStrictPod, strictScenario } from './node-strict-pod.ts';
import { strictGateway, strictPorts } from './strict-programs.ts';
import { startWhoami, type Server } from './traffic.ts';

const namespace = `naa-strict-node-${process.pid}`;
const gateway = strictGateway(namespace, 'app', {
  // The worker's node agent asks the agent's /steering there.
  agentArgs: ['--metrics-listen', steeringListen],
});

const servers: Server[] = [];
let worker: DriverNode | undefined;
let driven: DrivenPod;
let pod: NodeStrictPod | undefined;

beforeAll(async () => {
  await gateway.start();
  for (const port of Object.values(strictPorts)) servers.push(await startWhoami(gateway.topology, port));
  worker = new DriverNode(gateway);
  await worker.start();
  // The Pod on the worker, node-driven, at the address of the gateway's pod namespace.
  driven = await worker.addPod('app-node', gateway.pod.ip);
  pod = new NodeStrictPod(gateway, driven.container);
  await pod.start();
}, 120_000);

afterAll(async () => {
  await pod?.stop();
  for (const s of servers) await s.stop();
  await gateway.printErrorsLogged(['agent.log', 'node-agent.log']);
  await worker?.stop();
  await gateway.stop();
}, 60_000);

test("a node-driven strict pod's programs get their stamps from the node agent, and every new flow is classified from its first packet", async () => {
  // The init container waits for the node agent, which starts after it.
  const init = await pod!.startInit();
  await new Promise((resolve) => setTimeout(resolve, 500));
  expect(init.child.exitCode).toBeNull();
  await worker!.writeConfig([driven], true, true);
  await worker!.startAgent();
  const { code, log } = await init.exited;
  expect(code).toBe(0);
  expect(log).toContain('The agent answers for stamps');

  await strictScenario(gateway, pod!, 100, 'node-agent.log');
}, 300_000);
