// Strict association with the Node driver end to end, driven by the gateway agent: a node-driven
// strict pod on a gateway node (node-strict-pod.ts has its processes). The real gateway agent
// (`dataplane run --associate-pods`) finds it from the host's /proc, listens on the pod folder's
// stamp socket through the pod's process, and streams in strict mode to its own NAA server within
// its process. The same checks as with the node agent (strict-node.test.ts).
import { randomBytes } from 'node:crypto';
import { ContainerCgroup } from './node-driven.ts';
import { NodeStrictPod, strictScenario } from './node-strict-pod.ts';
import { strictGateway, strictPorts } from './strict-programs.ts';
import { startWhoami, type Server } from './traffic.ts';

const namespace = `naa-strict-gw-node-${process.pid}`;
const containerId = randomBytes(32).toString('hex');
const gateway = strictGateway(namespace, 'app', { nodeDriven: [{ id: containerId, name: 'app' }] });

const servers: Server[] = [];
let container: ContainerCgroup | undefined;
let pod: NodeStrictPod | undefined;

beforeAll(async () => {
  await gateway.start();
  for (const port of Object.values(strictPorts)) servers.push(await startWhoami(gateway.topology, port));
  container = new ContainerCgroup(gateway.pod.uid, containerId);
  pod = new NodeStrictPod(gateway, container);
  await pod.start();
}, 120_000);

afterAll(async () => {
  await pod?.stop();
  for (const s of servers) await s.stop();
  await gateway.printErrorsLogged(['agent.log']);
  await gateway.stop();
  await container?.remove();
}, 60_000);

test("a strict pod on a gateway node gets its programs' stamps from the gateway agent, every new flow classified from its first packet", async () => {
  // The gateway agent drives the pod from its start: the init container finds it answering.
  const { code, log } = await (await pod!.startInit()).exited;
  expect(code).toBe(0);
  expect(log).toContain('The agent answers for stamps');
  await strictScenario(gateway, pod!, 100, 'agent.log');
}, 300_000);
