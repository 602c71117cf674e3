// The NAT attribution log and the flow telemetry end to end: a program in the pod namespace
// downloads from the server through the gateway while the real sidecar reports it; the agent,
// started with OTEL_* variables pointing at a receiver the test runs, answers who held the
// flow's public address and port (API and CLI) while the flow is open and after it ended, and
// exports the ended flow as a span and a log record.
import type { ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import type { AttributionRecord } from '../../dataplane/attribution.ts';
import { startOtlpReceiver, type OtlpReceiver } from '../cluster/otlp.ts';
import { NaaGateway } from './naa-harness.ts';
import { server, stopProcess, until } from './topology.ts';
import { pythonDownload, startStreamServer, type Server } from './traffic.ts';

const namespace = `attribution-${process.pid}`;
const streamPort = 9100;
const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');

/** A record as the API answers it, in JSON. */
type Answer = Omit<AttributionRecord, 'start' | 'end'> & { start: string; end?: string };

let otlp: OtlpReceiver;
let gateway: NaaGateway;
let stream: Server | undefined;
let sidecar: ChildProcess | undefined;

/** Runs the attribution command in the gateway namespace, where the agent listens. */
async function cli(mapped: { address: string; port: number }, at: Date, ...flags: string[]): Promise<string> {
  const argv = ['attribution', '--address', mapped.address, '--port', String(mapped.port), '--at', at.toISOString()];
  const { stdout } = await gateway.topology.exec(gateway.topology.ns.gw, [process.execPath, main, ...argv, ...flags]);
  return stdout;
}

const ask = (mapped: { address: string; port: number }, at: Date) =>
  gateway.agentGet<Answer[]>(
    `/attribution?address=${mapped.address}&port=${mapped.port}&at=${encodeURIComponent(at.toISOString())}`,
  );

beforeAll(async () => {
  otlp = await startOtlpReceiver();
  gateway = new NaaGateway({
    kubeconfig: process.env.KUBECONFIG!,
    namespace,
    node: 'gateway-a',
    uplinks: 2,
    unassociatedFlows: 'PodRules',
    rules: () => [],
    // The shortest the API allows: a closed connection leaves conntrack (DESTROY) within seconds.
    timeouts: { tcpTransitorySeconds: 10 },
    hostServices: [otlp.endpoint],
    agentEnv: {
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.endpoint,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_BSP_SCHEDULE_DELAY: '200',
      OTEL_BLRP_SCHEDULE_DELAY: '200',
    },
  });
  await gateway.start();
  stream = await startStreamServer(gateway.topology, streamPort);
  sidecar = await gateway.startSidecar({ log: 'sidecar.log', scanIntervalMs: 50 });
}, 90_000);

afterAll(async () => {
  await stopProcess(sidecar);
  await stream?.stop();
  await gateway.printErrorsLogged(['agent.log', 'sidecar.log']);
  await gateway.stop();
  await otlp.close();
}, 60_000);

describe('the NAT attribution log', () => {
  it('answers who held a public address and port, while the flow is open and after it ended, and exports it', async () => {
    const { pod, topology } = gateway;
    const before = new Date();
    // Six seconds of 10 kB/s: long enough to be asked about while open, and for the sidecar to report it.
    const download = topology.spawn(
      pod.netns,
      ['python3', '-c', pythonDownload(server.v4, streamPort, 6, 10_000, pod.ip)],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const lines = createInterface({ input: download.stdout! })[Symbol.asyncIterator]();
    const sourcePort = Number((await lines.next()).value);
    const flow = await until('the flow, known to be python3', async () =>
      (await gateway.agentGet<AttributedFlow[]>('/flows')).find(
        (f) => f.source === pod.ip && f.sourcePort === sourcePort && f.application?.processName === 'python3',
      ),
    );
    const mapped = { address: flow.mappedAddress, port: flow.mappedPort! };
    const expected = {
      source: pod.ip,
      sourcePort,
      mappedAddress: mapped.address,
      mappedPort: mapped.port,
      uplink: flow.uplinkName,
      pod: { namespace, name: 'app' },
      application: { processName: 'python3' },
      verdict: 'Allow',
    };

    const open = await ask(mapped, new Date());
    expect(open).toMatchObject([expected]);
    expect(open[0]!.end).toBeUndefined();
    const openText = await cli(mapped, new Date());
    expect(openText).toContain(`pod ${namespace}/app`);
    expect(openText).toContain('application python3');
    expect(openText).toContain(`via ${flow.uplinkName}`);
    expect(openText).toContain('now (open)');

    expect(Number((await lines.next()).value)).toBe(60_000);
    await stopProcess(download);
    const [ended] = await until(
      'the end of the flow',
      async () => {
        const records = await ask(mapped, new Date(Date.parse(open[0]!.start) + 1000));
        return records[0]?.end ? records : undefined;
      },
      45_000,
    );
    expect(ended).toMatchObject(expected);
    // With conntrack accounting on, the kernel counted what went each way.
    expect(ended!.counters!.bytesReceived).toBeGreaterThan(60_000);
    expect(ended!.counters!.packetsSent).toBeGreaterThan(0);
    const endedText = await cli(mapped, new Date(ended!.end!));
    expect(endedText).toContain(`pod ${namespace}/app`);
    expect(endedText).toContain('application python3');
    expect(JSON.parse(await cli(mapped, new Date(ended!.end!), '--json'))).toMatchObject([expected]);

    expect(await ask(mapped, before)).toEqual([]);
    expect(await cli(mapped, before)).toContain('No translation held');

    const span = await until('the flow span', async () =>
      otlp.spans.find((s) => s.name === 'nat flow' && s.attributes['naat.mapped.port'] === mapped.port),
    );
    expect(span.attributes).toMatchObject({
      'naat.uplink': flow.uplinkName,
      'naat.mapped.address': mapped.address,
      'naat.verdict': 'Allow',
      'network.transport': 'tcp',
      'source.address': pod.ip,
      'source.port': sourcePort,
      'network.peer.address': server.v4,
      'network.peer.port': streamPort,
      'k8s.namespace.name': namespace,
      'k8s.pod.name': 'app',
      'process.executable.name': 'python3',
    });
    expect(span.attributes['naat.bytes.received']).toBeGreaterThan(60_000);
    expect(span.resource).toMatchObject({ 'service.name': 'naat-dataplane', 'k8s.node.name': 'gateway-a' });
    expect(BigInt(span.endTimeUnixNano!) - BigInt(span.startTimeUnixNano!)).toBeGreaterThan(5_000_000_000n);

    const log = await until('the attribution log record', async () =>
      otlp.logs.find((l) => l.attributes['naat.mapped.port'] === mapped.port),
    );
    expect(log).toMatchObject({ eventName: 'naat.nat.translation', spanId: span.spanId, traceId: span.traceId });
    expect(log.attributes).toMatchObject({ 'k8s.pod.name': 'app', 'naat.uplink': flow.uplinkName });
    expect(log.attributes['naat.bytes.sent']).toBeGreaterThan(0);
  });

  it('keeps the log through a restart of the agent: an ended flow is still answered, an open one stays one record', async () => {
    const { pod, topology } = gateway;
    /** A download from the pod by python3, once the agent knows its flow as python3's. */
    const download = async (seconds: number) => {
      const child = topology.spawn(
        pod.netns,
        ['python3', '-c', pythonDownload(server.v4, streamPort, seconds, 10_000, pod.ip)],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      const sourcePort = Number((await lines.next()).value);
      const flow = await until(`the flow from port ${sourcePort}, known to be python3`, async () =>
        (await gateway.agentGet<AttributedFlow[]>('/flows')).find(
          (f) => f.sourcePort === sourcePort && f.application?.processName === 'python3',
        ),
      );
      return { child, lines, mapped: { address: flow.mappedAddress, port: flow.mappedPort! } };
    };
    const short = await download(1);
    const long = await download(60);
    const [shortOpen] = await ask(short.mapped, new Date());
    const [longOpen] = await ask(long.mapped, new Date());
    expect(longOpen).toMatchObject({ application: { processName: 'python3' } });
    // Asked at a moment each flow held its port: just after its start.
    const during = (record: Answer) => new Date(Date.parse(record.start) + 500);
    expect(Number((await short.lines.next()).value)).toBe(10_000);
    /** The records of a flow once it ended. */
    const ended = (mapped: { address: string; port: number }, open: Answer) =>
      until(
        `the end of the flow at port ${mapped.port}`,
        async () => {
          const records = await ask(mapped, during(open));
          return records[0]?.end ? records : undefined;
        },
        45_000,
      );
    const [shortEnded] = await ended(short.mapped, shortOpen!);

    // A restart as a rolling update makes it: SIGTERM, and a new agent on the same state folder.
    const stopped = new Promise((resolve) => gateway.agent.once('exit', resolve));
    gateway.agent.kill('SIGTERM');
    await stopped;
    await gateway.startAgent();

    expect(await gateway.log('agent.log')).toMatch(
      /"msg":"Took back the attribution log of the former run","records":\d+/,
    );
    // The flow that stayed open is still the one record, from its start, with its application.
    const [longAfter] = await ask(long.mapped, new Date());
    expect(longAfter).toMatchObject({ start: longOpen!.start, application: { processName: 'python3' } });
    expect(longAfter!.end).toBeUndefined();
    // The flow that ended before is answered as it was.
    expect(await ask(short.mapped, during(shortOpen!))).toEqual([shortEnded]);
    await stopProcess(long.child);
    const [longEnded] = await ended(long.mapped, longOpen!);
    expect(longEnded).toMatchObject({ start: longOpen!.start, pod: { namespace, name: 'app' } });
  });

  it('counts flows by uplink and application, their bytes, association latency and ruleset applies in /metrics', async () => {
    const { pod, topology } = gateway;
    const uplinks = (await gateway.agentGet<AgentReport>('/status')).uplinks.map((u) => u.name);
    const perUplink = (name: string) => Promise.all(uplinks.map((uplink) => gateway.metric(name, { uplink })));
    const newBefore = await perUplink('naat_uplink_new_flows_total');
    const receivedBefore = await gateway.metric('naat_uplink_bytes_total', { direction: 'received' });
    const python = { application: 'python3', verdict: 'Allow' };
    const pythonBefore = await gateway.metric('naat_application_flows_total', python);
    // Three downloads of 2,000 bytes over a second, at once: long enough for the sidecar to see them.
    const flows = 3;
    const { stdout } = await topology.exec(pod.netns, [
      'python3',
      '-c',
      `import socket
ss=[socket.create_connection(('${server.v4}',${streamPort}),timeout=10,source_address=('${pod.ip}',0)) for _ in range(${flows})]
print(' '.join(str(s.getsockname()[1]) for s in ss),flush=True)
for s in ss: s.sendall(b'1 2000\\n')
for s in ss:
  while s.recv(65536): pass
  s.close()`,
    ]);
    const ports = stdout.trim().split(' ').map(Number);
    // Closed flows stay in conntrack (TIME_WAIT) until their DESTROY event, so /flows still has them.
    const used = await until('the uplinks of the flows', async () => {
      const open = await gateway.agentGet<AttributedFlow[]>('/flows');
      const mine = ports.map((port) => open.find((f) => f.source === pod.ip && f.sourcePort === port)?.uplinkName);
      return mine.every(Boolean) ? (mine as string[]) : undefined;
    });
    const newAfter = await perUplink('naat_uplink_new_flows_total');
    const started = Object.fromEntries(uplinks.map((uplink, i) => [uplink, newAfter[i]! - newBefore[i]!]));
    for (const uplink of used) expect(started[uplink]).toBeGreaterThanOrEqual(used.filter((u) => u === uplink).length);
    expect(await gateway.metric('naat_application_flows_total', python)).toBeGreaterThan(pythonBefore);
    expect(await gateway.metric('naat_association_latency_seconds_count')).toBeGreaterThan(0);
    expect(await gateway.metric('naat_ruleset_apply_duration_seconds_count', { full: 'true' })).toBeGreaterThan(0);
    // Bytes are counted as the flows end (conntrack's DESTROY, after the 10 s TIME_WAIT).
    const received = await until(
      'the bytes of the ended flows',
      async () => {
        const now = await gateway.metric('naat_uplink_bytes_total', { direction: 'received' });
        return now - receivedBefore >= flows * 2000 ? now : undefined;
      },
      45_000,
    );
    expect(received).toBeGreaterThan(receivedBefore);
    expect(await gateway.metric('naat_uplink_bytes_total', { direction: 'sent' })).toBeGreaterThan(0);
  }, 90_000);

  it('answers a bad query with 400 naming the parameter', async () => {
    const { topology } = gateway;
    const { stdout } = await topology.exec(topology.ns.gw, [
      'curl',
      '-s',
      '-w',
      ' %{http_code}',
      'http://127.0.0.1:7741/attribution?address=100.64.1.2&port=80&at=yesterday',
    ]);
    expect(stdout).toMatch(/"at: \\"yesterday\\" is not an ISO 8601 time"\}\n 400$/);
  });
});
