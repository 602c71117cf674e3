// Every benchmark in its smoke form (`npm run bench -- --smoke`: seconds each), so that none can
// break, or measure nothing, unnoticed: each exits 0 and writes finite figures under the keys it
// is known by. The figures themselves are not judged here (a shared CI machine is no place to).
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BenchReport } from '../bench/harness.ts';

const scans = (key: string) => ['table-read', 'first', 'after-new', 'quiet'].map((k) => `${key}.${k}`);
const percentiles = (key: string) => [`${key}.p50`, `${key}.p99`];
const operatorSeries = (key: string) =>
  ['return-to-policy', 'return-to-config', 'start-to-policy', 'start-to-config', 'policy-to-config', 'return-to-status']
    .map((k) => `${key}.${k}`)
    .flatMap(percentiles);
const gatewayRun = (key: string) => [
  `${key}.delivery-period`,
  ...percentiles(`${key}.connect-to-held`),
  ...percentiles(`${key}.connect-to-kernel`),
  `${key}.syncs`,
  `${key}.early`,
];
const scaleSize = (pods: number) =>
  [
    ...['gateway-nodes', 'nodes', 'gateway-node-received', 'node-received'].map((k) => `resync.${k}`),
    ...['largest', 'gateway-config', 'gateway-slice', 'node-config', 'node-role', 'node-daemonset', 'gateway'].map(
      (k) => `objects.${k}`,
    ),
    ...percentiles('apply.to-nodes'),
    ...['gateway-needed', 'gateway-received', 'operator-cpu'].map((k) => `apply.${k}`),
    ...[
      'settle',
      'settle-gateway-nodes',
      'settle-nodes',
      'gateway-versions',
      'gateway-needed',
      'gateway-received',
      'nodes-needed',
      'nodes-received',
    ].map((k) => `churn.${k}`),
    'churn.operator-cpu',
    'operator.rss-resync',
    'operator.rss-end',
  ].map((k) => `${pods}-pods.${k}`);
const trends = (...keys: string[]) => keys.flatMap((key) => [`${key}.warm`, `${key}.end`]);
const setups = ['plain', 'masquerade', 'naat-1-uplink', 'naat-3-uplinks'];

const expectedKeys: Record<string, string[]> = {
  naa: [
    'stream.plain',
    'stream.naat',
    'stream.naat-tls',
    ...scans('scan-small'),
    ...scans('scan-large'),
    ...percentiles('sidecar.connect-to-applied'),
    ...percentiles('sidecar-tls.connect-to-applied'),
    'node.rss',
    'node-http2.rss',
    'sidecar.rss',
    'sidecar.rss-anonymous',
    'node.idle-cpu',
    'sidecar.idle-cpu',
  ],
  'naa-gateway': [
    ...gatewayRun('scan-default'),
    ...gatewayRun('scan-50ms'),
    'memory.idle-node',
    'memory.agent-idle',
    'memory.scan-default.agent',
    'memory.scan-default.sidecar',
    'memory.scan-50ms.agent',
    'memory.scan-50ms.sidecar',
    ...percentiles('tls.connect-to-held'),
    ...percentiles('tls.connect-to-kernel'),
    'memory.tls.agent',
    'memory.tls.sidecar',
    ...percentiles('node-driver.sidecar.connect-to-kernel'),
    ...percentiles('node-driver.connect-to-kernel'),
    // The smoke form's two numbers of node-driven pods.
    ...[1, 2].flatMap((pods) => ['base', 'added'].map((k) => `node-driver.memory.${pods}-pods.${k}`)),
    'node-driver.memory.per-pod',
    'node-driver.memory.same-sockets.added',
    'node-driver.memory.per-pod.same-sockets',
    'node-driver.idle-cpu',
    'node-driver.idle-cpu.serving',
    'node-driver.idle-cpu.warm',
    'node-driver.idle-cpu.serving.warm',
  ],
  dataplane: [
    ...setups.map((s) => `throughput.${s}`),
    ...[...setups, 'naat-3-uplinks-kernel'].map((s) => `connections.${s}`),
    ...['naat-one-rule', 'naat-one-rule-kernel', 'naat-rules', 'naat-rules-kernel'].map((s) => `connections.${s}`),
    ...['naat-1-uplink', 'naat-3-uplinks', 'naat-one-rule', 'naat-rules', 'idle'].map((s) => `agent-cpu.${s}`),
    'config.json-parse',
    'config.yaml-parse',
    'config.check',
    'sync.render',
    'sync.first-full',
    'sync.new-class',
    'sync.association',
    'sync.policy-edit',
    'sync.pod-change',
    'sync.resync',
    'sync.hundred-associations',
    'sync.remove',
    'memory.idle-node',
    'memory.agent-small',
    'memory.agent-scale',
    'memory.agent-goal',
    'startup.small',
    'startup.scale',
  ],
  operator: [
    ...[
      'lister',
      'started',
      'ready',
      'leading',
      'workers',
      'first-config',
      'complete-config',
      'settled',
      'compile',
      'workers-to-complete',
    ].map((k) => `resync.${k}`),
    ...operatorSeries('changes'),
    ...operatorSeries('idle-changes'),
    'memory.idle-node',
    'memory.complete',
    'memory.resync',
    'memory.after-changes',
    'memory.after-idle-changes',
    'config.bytes',
  ],
  strict: [
    ...percentiles('connect.unstamped'),
    ...percentiles('connect.stamped'),
    'connect.stamped.first',
    'throughput.unstamped',
    'throughput.stamped',
    'flows.new',
    'flows.stamped',
  ],
  steering: [
    ...['hand-tunnel', 'steered', 'steered-kernel', 'local'].flatMap((s) => [`throughput.${s}`, `connections.${s}`]),
    ...['hand-tunnel', 'steered'].flatMap((s) => [`mtu.${s}.ipv4`, `mtu.${s}.ipv6`]),
    'node-agent.rss',
    'node-agent.idle-cpu',
    'node-agent.idle-cpu-4-peers',
  ],
  failover: ['power-off', 'drain'].flatMap((fault) => [
    ...['new-connection', 'udp-gap'].flatMap((k) => ['p50', 'p99', 'max'].map((q) => `${fault}.${k}.${q}`)),
    `${fault}.streams-survived`,
    `${fault}.double-ownership`,
    `${fault}.double-answering`,
  ]),
  // The smoke form's two sizes.
  scale: [...scaleSize(100), ...scaleSize(200)],
  soak: [
    ...trends('agent-rss', 'sidecar-rss', 'agent-fds', 'sidecar-fds', 'chains', 'sets'),
    'short-flows',
    'short-flows.failed',
    'config-rewrites',
    'long-flow.expected',
    'long-flow.received',
  ],
};

interface AllReport {
  form: string;
  ok: boolean;
  failed: string[];
  benchmarks: Record<string, BenchReport>;
}

let dir: string;
let run: { code: number; output: string; report?: AllReport };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-bench-test-'));
  const file = join(dir, 'all.json');
  let output = '';
  const code = await new Promise<number>((resolve) => {
    const child = spawn(
      process.execPath,
      [join(import.meta.dirname, '..', 'bench', 'all.ts'), '--smoke', '--json', file],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    child.stdout.on('data', (d: Buffer) => (output += d));
    child.stderr.on('data', (d: Buffer) => (output += d));
    child.on('exit', (status) => resolve(status ?? 1));
  });
  const report = await readFile(file, 'utf8').then(
    (text) => JSON.parse(text) as AllReport,
    () => undefined,
  );
  run = { code, output, ...(report ? { report } : {}) };
}, 460_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('npm run bench -- --smoke runs every benchmark and exits 0', () => {
  if (run.code !== 0) console.log(run.output.split('\n').slice(-80).join('\n'));
  expect(run.report).toMatchObject({ form: 'smoke', ok: true, failed: [] });
  expect(Object.keys(run.report!.benchmarks).sort()).toEqual(Object.keys(expectedKeys).sort());
  expect(run.code).toBe(0);
});

test.each(Object.keys(expectedKeys))('%s: every figure measured, finite, under its known key', (name) => {
  const report = run.report?.benchmarks[name];
  expect(report).toMatchObject({ benchmark: name, form: 'smoke', ok: true, error: null, notMeasured: [] });
  expect(Object.keys(report!.figures).sort()).toEqual([...expectedKeys[name]!].sort());
  for (const [key, figure] of Object.entries(report!.figures)) {
    expect([key, Number.isFinite(figure.value)]).toEqual([key, true]);
    if (figure.baseline !== null) expect([key, Number.isFinite(figure.ratio)]).toEqual([key, true]);
  }
});
