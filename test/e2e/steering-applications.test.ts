// Applications of a pod on a worker node, end to end: the Pod is scheduled on worker-a, and its
// real sidecar dials a node agent's NAA relay (dataplane/naa/relay.ts), which carries the stream
// to the real agent of gateway node gateway-a; the agent takes it only because it comes from the
// address the Pod reports for its node, and checks the Pod's own token against the real apiserver.
// Per-application deny and routing, attribution (pod, container, application), the association's
// trace with its flow span, and strict mode (a flow classified by its first packet's stamp) must
// work as for a pod on the gateway node. The flows themselves reach the gateway namespace
// directly here: the tunnel between nodes is tested in steering.test.ts.
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { AttributionRecord } from '../../dataplane/attribution.ts';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import { exportTo, startOtlpReceiver, type OtlpReceiver } from '../cluster/otlp.ts';
import { applicationRules, NaaGateway } from './naa-harness.ts';
import { server, stopProcess, until, uplinkAddress } from './topology.ts';
import { curlConnects, pythonConnects, startStreamServer, startWhoami, type Server } from './traffic.ts';

const ports = { stream: 9300, allowed: 9301, denied: 9302 };

/** Rules for the Pod: python3 leaves through isp2 only; curl may not reach the denied port. */
const rules = (namespace: string) => applicationRules(namespace, ports.denied);

/** Runs a shell script in the Pod's namespace with `env`; resolves with its output. */
async function inPod(gateway: NaaGateway, script: string, env: Record<string, string> = {}): Promise<string> {
  const assignments = Object.entries(env).map(([name, value]) => `${name}=${value}`);
  const { stdout } = await gateway.topology.exec(gateway.pod.netns, ['env', ...assignments, 'sh', '-c', script], {
    timeoutMs: 120_000,
  });
  return stdout;
}

describe('a pod on a worker node, in Hold mode, with telemetry', () => {
  const namespace = `steer-apps-${process.pid}`;
  let otlp: OtlpReceiver;
  let gateway: NaaGateway;
  let sidecar: ChildProcess | undefined;
  const servers: Server[] = [];

  beforeAll(async () => {
    otlp = await startOtlpReceiver();
    gateway = new NaaGateway({
      kubeconfig: process.env.KUBECONFIG!,
      namespace,
      node: 'gateway-a',
      relayedFrom: 'worker-a',
      uplinks: 2,
      unassociatedFlows: 'Hold',
      rules: rules(namespace),
      // The shortest the API allows: a closed connection leaves conntrack (DESTROY) within seconds.
      timeouts: { tcpTransitorySeconds: 10 },
      hostServices: [otlp.endpoint],
      agentEnv: exportTo(otlp.endpoint),
    });
    await gateway.start();
    servers.push(await startStreamServer(gateway.topology, ports.stream));
    for (const port of [ports.allowed, ports.denied]) servers.push(await startWhoami(gateway.topology, port));
    const endpoint = await gateway.relayIntoPod('otlp-pod', otlp.endpoint);
    sidecar = await gateway.startSidecar({ log: 'sidecar.log', scanIntervalMs: 50, env: exportTo(endpoint) });
  }, 120_000);

  afterAll(async () => {
    await stopProcess(sidecar);
    for (const s of servers) await s.stop();
    await gateway?.printErrorsLogged(['agent.log', 'sidecar.log', 'relay.log']);
    await gateway?.stop();
    await otlp?.close();
  }, 60_000);

  it('was accepted by the gateway node only through the relay on its own node', async () => {
    // The relay logs the stream once it is open, which may be after the sidecar started.
    await until('the relayed stream in the log', async () =>
      (await gateway.log('relay.log')).includes('"msg":"Relayed NAA stream"') ? true : undefined,
    );
    expect(await gateway.log('agent.log')).toContain(`"pod":"${namespace}/app"`);
  });

  it('routes python3 through isp2 only, and denies curl, from the first packet on', async () => {
    const seen = (await inPod(gateway, pythonConnects(ports.allowed, 5))).trim().split('\n');
    expect(seen).toEqual(Array(5).fill(uplinkAddress(2).v4));
    expect((await inPod(gateway, curlConnects(ports.denied, 3))).trim().split('\n')).toEqual(['x', 'x', 'x']);
    const said = (await gateway.log('sidecar.log'))
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line));
    expect(said.find((entry) => entry.msg === 'Gateway denied flow')?.rule).toBe(`${namespace}/apps#no-curl`);
  });

  it('attributes a flow to its pod, container and application, and traces it from the sidecar’s association', async () => {
    const { pod, topology } = gateway;
    const download = topology.spawn(
      pod.netns,
      [
        'env',
        'NAAT_CONTAINER_NAME=web',
        'python3',
        '-c',
        `import socket
s=socket.create_connection(('${server.v4}',${ports.stream}),timeout=10,source_address=('${pod.ip}',0))
print(s.getsockname()[1],flush=True)
s.sendall(b'3 10000\\n')
while s.recv(65536): pass
s.close()`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const lines = createInterface({ input: download.stdout! })[Symbol.asyncIterator]();
    const sourcePort = Number((await lines.next()).value);
    const flow = await until('the flow, known to be python3', async () =>
      (await gateway.agentGet<AttributedFlow[]>('/flows')).find(
        (f) => f.source === pod.ip && f.sourcePort === sourcePort && f.application?.processName === 'python3',
      ),
    );
    const at = encodeURIComponent(new Date().toISOString());
    const records = await gateway.agentGet<AttributionRecord[]>(
      `/attribution?address=${flow.mappedAddress}&port=${flow.mappedPort}&at=${at}`,
    );
    expect(records).toMatchObject([
      {
        source: pod.ip,
        sourcePort,
        mappedAddress: uplinkAddress(2).v4,
        uplink: 'isp2',
        pod: { namespace, name: 'app' },
        container: 'web',
        application: { processName: 'python3' },
        verdict: 'Allow',
      },
    ]);
    await stopProcess(download);

    const associate = await until('the sidecar’s span', async () =>
      otlp.spans.find((s) => s.name === 'associate' && s.attributes['source.port'] === sourcePort),
    );
    const apply = await until('the gateway’s span', async () =>
      otlp.spans.find((s) => s.name === 'apply association' && s.traceId === associate.traceId),
    );
    expect(apply).toMatchObject({ parentSpanId: associate.spanId });
    expect(apply.resource).toMatchObject({ 'service.name': 'naat-dataplane', 'k8s.node.name': 'gateway-a' });
    expect(apply.attributes).toMatchObject({ 'k8s.pod.name': 'app', 'naat.uplink': 'isp2' });
    // The flow's span comes when its flow ends (conntrack's DESTROY, after the 10 s TIME_WAIT).
    const span = await until(
      'the flow span',
      async () => otlp.spans.find((s) => s.name === 'nat flow' && s.attributes['source.port'] === sourcePort),
      45_000,
    );
    expect(span).toMatchObject({ traceId: associate.traceId, parentSpanId: associate.spanId });
    expect(span.attributes).toMatchObject({ 'process.executable.name': 'python3', 'naat.uplink': 'isp2' });
  }, 90_000);
});

describe('a pod on a worker node, in strict mode', () => {
  const namespace = `steer-strict-${process.pid}`;
  const connections = 200;
  let gateway: NaaGateway;
  let sidecar: ChildProcess | undefined;
  let preloaded: Record<string, string>;
  const servers: Server[] = [];

  beforeAll(async () => {
    gateway = new NaaGateway({
      kubeconfig: process.env.KUBECONFIG!,
      namespace,
      node: 'gateway-a',
      relayedFrom: 'worker-a',
      uplinks: 2,
      // An unclassified flow would take either uplink and pass the denied port.
      unassociatedFlows: 'PodRules',
      strict: true,
      rules: rules(namespace),
    });
    await gateway.start();
    for (const port of [ports.allowed, ports.denied]) servers.push(await startWhoami(gateway.topology, port));
    const strict = await gateway.startStampingSidecar({ log: 'sidecar.log' });
    sidecar = strict.sidecar;
    preloaded = strict.env;
  }, 120_000);

  afterAll(async () => {
    await stopProcess(sidecar);
    for (const s of servers) await s.stop();
    await gateway?.printErrorsLogged(['agent.log', 'sidecar.log', 'relay.log']);
    await gateway?.stop();
  }, 60_000);

  it('classifies every new flow by the stamp its first packet carries, announced through the relay', async () => {
    const seen = (await inPod(gateway, pythonConnects(ports.allowed, connections), preloaded)).trim().split('\n');
    expect(seen).toEqual(Array(connections).fill(uplinkAddress(2).v4));
    const denied = (await inPod(gateway, curlConnects(ports.denied, 10), preloaded)).trim().split('\n');
    expect(denied).toEqual(Array(10).fill('x'));
    // Every new-flow packet of the Pod arrived stamped.
    const counters = await gateway.strictCounters();
    expect(counters.newFlows).toBeGreaterThanOrEqual(connections + 10);
    expect(counters.stamped).toBe(counters.newFlows);
  }, 180_000);
});
