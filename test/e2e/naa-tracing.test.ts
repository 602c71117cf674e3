// An association's trace across sidecar → gateway, end to end: a real program in the pod
// namespace connects through the gateway while the real sidecar and the real agent both export to
// an OTLP receiver the test runs. The sidecar's `associate` span, the gateway's `apply association`
// span and the flow's `nat flow` span arrive in one trace, the gateway's as children of the
// sidecar's.
import type { ChildProcess } from 'node:child_process';
import { exportTo, startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../cluster/otlp.ts';
import { NaaGateway } from './naa-harness.ts';
import { server, stopProcess, until } from './topology.ts';
import { startStreamServer, type Server } from './traffic.ts';

const namespace = `naa-tracing-${process.pid}`;
const streamPort = 9100;

let otlp: OtlpReceiver;
let gateway: NaaGateway;
let stream: Server | undefined;
let sidecar: ChildProcess | undefined;

beforeAll(async () => {
  otlp = await startOtlpReceiver();
  gateway = new NaaGateway({
    kubeconfig: process.env.KUBECONFIG!,
    namespace,
    node: 'gateway-a',
    uplinks: 1,
    unassociatedFlows: 'PodRules',
    rules: () => [],
    // The shortest the API allows: a closed connection leaves conntrack (DESTROY) within seconds.
    timeouts: { tcpTransitorySeconds: 10 },
    hostServices: [otlp.endpoint],
    agentEnv: exportTo(otlp.endpoint),
  });
  await gateway.start();
  stream = await startStreamServer(gateway.topology, streamPort);
  const endpoint = await gateway.relayIntoPod('otlp-pod', otlp.endpoint);
  sidecar = await gateway.startSidecar({ log: 'sidecar.log', scanIntervalMs: 50, env: exportTo(endpoint) });
}, 90_000);

afterAll(async () => {
  await stopProcess(sidecar);
  await stream?.stop();
  await gateway.printErrorsLogged(['agent.log', 'sidecar.log']);
  await gateway.stop();
  await otlp.close();
}, 60_000);

test('an association’s spans arrive in one trace: the sidecar’s, the gateway’s as its child, and its flow’s', async () => {
  const { pod, topology } = gateway;
  // Two seconds of a download: long enough for the sidecar to see the socket.
  const { stdout } = await topology.exec(pod.netns, [
    'python3',
    '-c',
    `import socket
s=socket.create_connection(('${server.v4}',${streamPort}),timeout=10,source_address=('${pod.ip}',0))
print(s.getsockname()[1],flush=True)
s.sendall(b'2 5000\\n')
while s.recv(65536): pass
s.close()`,
  ]);
  const sourcePort = Number(stdout.trim());
  const find = (name: string, also: (s: ReceivedSpan) => boolean = () => true) =>
    until(`the span ${name}`, async () =>
      otlp.spans.find((s) => s.name === name && s.attributes['source.port'] === sourcePort && also(s)),
    );

  const associate = await find('associate');
  expect(associate.resource).toMatchObject({
    'service.name': 'naat-sidecar',
    'k8s.namespace.name': namespace,
    'k8s.pod.name': 'app',
    'k8s.pod.uid': pod.uid,
  });
  expect(associate.kind).toBe(4);
  expect(associate.parentSpanId ?? '').toBe('');
  expect(associate.attributes).toMatchObject({
    'network.transport': 'tcp',
    'source.address': pod.ip,
    'network.peer.address': server.v4,
    'network.peer.port': streamPort,
    'process.executable.name': 'python3',
  });
  expect(associate.attributes['process.pid']).toBeGreaterThan(0);
  expect(associate.status?.code ?? 0).toBe(0);

  const apply = await find('apply association', (s) => s.traceId === associate.traceId);
  expect(apply).toMatchObject({ parentSpanId: associate.spanId, kind: 5 });
  expect(apply.resource).toMatchObject({ 'service.name': 'naat-dataplane', 'k8s.node.name': 'gateway-a' });
  expect(apply.attributes).toMatchObject({
    'k8s.namespace.name': namespace,
    'k8s.pod.name': 'app',
    'process.executable.name': 'python3',
    'network.peer.port': streamPort,
    'naat.verdict': 'Allow',
    'naat.uplink': 'isp1',
  });
  // The sidecar's span runs from when it saw the socket to the gateway's Ack, so it holds the gateway's.
  expect(BigInt(apply.startTimeUnixNano!)).toBeGreaterThanOrEqual(BigInt(associate.startTimeUnixNano!));
  expect(BigInt(apply.endTimeUnixNano!)).toBeLessThanOrEqual(BigInt(associate.endTimeUnixNano!));

  // The flow's span comes when its flow ends (conntrack's DESTROY, after the 10 s TIME_WAIT).
  const flow = await until(
    'the flow span',
    async () => otlp.spans.find((s) => s.name === 'nat flow' && s.attributes['source.port'] === sourcePort),
    45_000,
  );
  expect(flow).toMatchObject({ traceId: associate.traceId, parentSpanId: associate.spanId });
  expect(flow.attributes).toMatchObject({ 'process.executable.name': 'python3', 'naat.uplink': 'isp1' });
}, 90_000);
