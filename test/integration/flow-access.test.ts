// Who may read a gateway agent's flow data, against the real apiserver: the agent (the real
// program, in a network namespace of its own that reaches the apiserver through a relay, with a
// ServiceAccount bound to the chart's dataplane ClusterRole) serves /flows and /attribution on its
// secure listener only, to callers whose token the apiserver accepts for naat-flows and who hold
// the chart's flow reader ClusterRole; its health listener serves health, steering, status and
// metrics to anyone, and no flow data.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { root } from '../../crds/generate.ts';
import { makeCa, makeServing } from '../../operator/certificates.ts';
import { kubectl, serviceAccountKubeconfig } from '../cluster/cluster.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { until } from '../e2e/topology.ts';
import { LoggedProcesses } from '../e2e/logged-processes.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const release = `flows${process.pid}`;
const namespace = `flow-access-${process.pid}`;
const gateway = 'flow-access';
const netns = `naat-flows-${process.pid}`;
const secure = 'https://127.0.0.1:7743';
const plain = 'http://127.0.0.1:7741';
/** A non-loopback address of the namespace: the health listener as a pod would reach it. */
const outside = '192.0.2.1';

let dir: string;
const processes = new LoggedProcesses();
let roles: Array<{ metadata: { name: string } }> = [];

function run(argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

const inNetns = (argv: string[]) => ['ip', 'netns', 'exec', netns, ...argv];

/** GETs `url` from inside the agent's namespace: status and body. */
async function get(url: string, token?: string): Promise<{ status: number; body: string }> {
  const header = join(dir, 'header');
  await writeFile(header, token ? `Authorization: Bearer ${token}\n` : '\n');
  const { stdout, stderr, code } = await run(
    inNetns(['curl', '-sS', '--cacert', join(dir, 'ca.crt'), '-H', `@${header}`, '-w', '\n%{http_code}', url]),
  );
  if (code !== 0) throw new Error(`curl ${url} exited with ${code}: ${stderr}`);
  const at = stdout.lastIndexOf('\n');
  return { status: Number(stdout.slice(at + 1)), body: stdout.slice(0, at) };
}

/** The dataplane's attribution command, asking the secure listener from inside the namespace. */
const attributionCommand = (options: string[]) =>
  run(
    inNetns([
      process.execPath,
      join(root, 'dataplane', 'main.ts'),
      'attribution',
      '--agent',
      secure,
      '--ca-file',
      join(dir, 'ca.crt'),
      ...['--address', '100.64.1.2', '--port', '20000', '--at', '2026-12-04T10:00:00Z'],
      ...options,
    ]),
  );

const token = async (account: string, audience = 'naat-flows') =>
  (await k(['create', 'token', account, '-n', namespace, '--audience', audience, '--duration=1h'])).trim();

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-flow-access-'));
  // The chart's dataplane and flow reader ClusterRoles, as helm renders them.
  const rendered = await helm(await buildHelm(), [
    'template',
    release,
    join(root, 'charts/naat'),
    '--show-only',
    'templates/rbac.yaml',
  ]);
  roles = parseAllDocuments(rendered)
    .map((d) => d.toJS() as { kind: string; metadata: { name: string } } | null)
    .filter((m) => m?.kind === 'ClusterRole' && /-(dataplane|flow-reader)$/.test(m.metadata.name)) as typeof roles;
  expect(roles.map((r) => r.metadata.name).sort()).toEqual([
    `${release}-naat-dataplane`,
    `${release}-naat-flow-reader`,
  ]);
  await k(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: roles }));
  await k(['create', 'namespace', namespace]);
  for (const account of ['agent', 'nobody', 'reader']) await k(['create', 'serviceaccount', account, '-n', namespace]);
  await k([
    'create',
    'clusterrolebinding',
    `${release}-agent`,
    `--clusterrole=${release}-naat-dataplane`,
    `--serviceaccount=${namespace}:agent`,
  ]);
  await k([
    'create',
    'clusterrolebinding',
    `${release}-reader`,
    `--clusterrole=${release}-naat-flow-reader`,
    `--serviceaccount=${namespace}:reader`,
  ]);

  const validity = { notBefore: new Date(Date.now() - 3_600_000), notAfter: new Date(Date.now() + 86_400_000) };
  const ca = makeCa('flow-access-ca', validity);
  const serving = makeServing(ca, ['127.0.0.1'], validity);
  await writeFile(join(dir, 'ca.crt'), ca.cert);
  await writeFile(join(dir, 'tls.crt'), serving.cert);
  await writeFile(join(dir, 'tls.key'), serving.key);
  await writeFile(
    join(dir, 'gateway.json'),
    JSON.stringify({ version: 1, gateway, uplinks: [], sources: [], pods: [], bypass: [], rules: [] }),
  );

  for (const argv of [
    ['ip', 'netns', 'add', netns],
    ['ip', '-n', netns, 'link', 'set', 'lo', 'up'],
    ['ip', '-n', netns, 'address', 'add', `${outside}/32`, 'dev', 'lo'],
  ]) {
    const { code, stderr } = await run(argv);
    if (code !== 0) throw new Error(`${argv.join(' ')}: ${stderr}`);
  }
  const relay = join(root, 'test/e2e/programs/relay.ts');
  const socket = join(dir, 'apiserver.sock');
  const server = JSON.parse(await k(['config', 'view', '--raw', '--minify', '-o', 'json'])).clusters[0].cluster.server;
  const { hostname, port } = new URL(server);
  processes.capture('relay', [process.execPath, relay, 'from-unix', socket, hostname, port]);
  processes.capture('relay-ns', inNetns([process.execPath, relay, 'to-unix', hostname, port, socket]));
  await until('the relays', async () =>
    processes.output('relay').includes('listening') && processes.output('relay-ns').includes('listening')
      ? true
      : undefined,
  );
  processes.capture(
    'agent',
    inNetns([
      process.execPath,
      join(root, 'dataplane', 'main.ts'),
      'run',
      '--config',
      join(dir, 'gateway.json'),
      '--node',
      'gateway-a',
      '--state-dir',
      join(dir, 'state'),
      '--listen',
      '0.0.0.0:7741',
      '--secure-listen',
      '127.0.0.1:7743',
      '--tls-dir',
      dir,
    ]),
    {
      KUBECONFIG: await serviceAccountKubeconfig(process.env.KUBECONFIG!, namespace, 'agent', join(dir, 'kubeconfig')),
    },
  );
  await until('the agent serving flow data', async () =>
    processes.output('agent').includes('Serving flow data to authorized callers') ? true : undefined,
  ).catch((error: Error) => {
    throw new Error(`${error.message}\nagent:\n${processes.output('agent').slice(-3000)}`);
  });
}, 120_000);

afterAll(async () => {
  await processes.stopAll();
  await run(['ip', 'netns', 'del', netns]);
  await k(['delete', 'namespace', namespace, '--wait=false']).catch(() => '');
  await k(['delete', 'clusterrolebinding', `${release}-agent`, `${release}-reader`, '--ignore-not-found']);
  for (const role of roles) await k(['delete', 'clusterrole', role.metadata.name, '--ignore-not-found']);
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the secure listener', () => {
  test('refuses a caller without a token, or with one the apiserver does not accept for naat-flows', async () => {
    expect(await get(`${secure}/flows`)).toEqual({ status: 401, body: expect.stringContaining('no bearer token') });
    expect(await get(`${secure}/flows`, 'not-a-token')).toMatchObject({ status: 401 });
    // The reader's token, but meant for the apiserver: replayed here, it is refused.
    expect(await get(`${secure}/flows`, await token('reader', 'https://kubernetes.default.svc'))).toMatchObject({
      status: 401,
    });
  });

  test('refuses a ServiceAccount without the flow reader role', async () => {
    const nobody = await token('nobody');
    for (const path of ['/flows', '/attribution?address=100.64.1.2&port=20000&at=2026-12-04T10:00:00Z', '/status']) {
      expect(await get(`${secure}${path}`, nobody)).toEqual({
        status: 403,
        body: expect.stringContaining(
          `system:serviceaccount:${namespace}:nobody may not get egressgateways/flows of gateway ${gateway}`,
        ),
      });
    }
  });

  test('serves the ServiceAccount with the flow reader role, and so does the attribution command', async () => {
    const reader = await token('reader');
    const flows = await get(`${secure}/flows`, reader);
    expect(flows.status).toBe(200);
    expect(JSON.parse(flows.body)).toEqual([]);
    const attribution = await get(
      `${secure}/attribution?address=100.64.1.2&port=20000&at=2026-12-04T10:00:00Z`,
      reader,
    );
    expect({ status: attribution.status, records: JSON.parse(attribution.body) }).toEqual({ status: 200, records: [] });

    await writeFile(join(dir, 'reader-token'), reader);
    const command = await attributionCommand(['--token-file', join(dir, 'reader-token'), '--json']);
    expect({ code: command.code, stderr: command.stderr, records: JSON.parse(command.stdout || 'null') }).toEqual({
      code: 0,
      stderr: '',
      records: [],
    });
    // Without the token, the command says why.
    const refused = await attributionCommand([]);
    expect(refused.code).toBe(1);
    expect(refused.stdout + refused.stderr).toContain('the agent answered 401');
  });
});

describe('the health listener', () => {
  test('serves health, status and metrics to anyone, and no flow data, from outside or on loopback', async () => {
    for (const base of [`http://${outside}:7741`, plain]) {
      expect((await get(`${base}/healthz`)).status).toBe(200);
      expect(JSON.parse((await get(`${base}/status`)).body)).toMatchObject({ node: 'gateway-a', gateway });
      const metrics = (await get(`${base}/metrics`)).body;
      expect(metrics).toContain('naat_flows ');
      expect(metrics).toMatch(
        /^naat_build_info\{version="[^"]+",component="gateway-agent",node_version="v[^"]+"\} 1$/m,
      );
      expect(metrics).toMatch(/^process_cpu_seconds_total [\d.e+-]+$/m);
      for (const path of ['/flows', '/attribution?address=100.64.1.2&port=20000&at=2026-12-04T10:00:00Z']) {
        expect(await get(`${base}${path}`)).toEqual({
          status: 404,
          body: expect.stringContaining('flow data is served on the secure listener only'),
        });
      }
    }
  });
});
