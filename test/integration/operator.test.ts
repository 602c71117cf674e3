// The operator as it runs (`node operator/main.ts`), against the real apiserver: it compiles a
// gateway, its uplink, its policies and the pods they select into the dataplane's ConfigMap and
// DaemonSet, writes status, follows changes, reports conflicts, and of two replicas only the
// leader acts. The served pods run on worker-a, away from the gateway's nodes: node agents land
// there, and their reports decide the pods' Steered condition.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiVersion } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { KubeConfig } from '@kubernetes/client-node';
import type { GatewayConfig, NodeConfig } from '../../contracts/gateway/index.ts';
import { SteeringStatusReporter } from '../../dataplane/steering/report.ts';
import { nodeAgentName, nodeConfigName, objectName } from '../../operator/desired.ts';
import { kubectl } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { operatorSettings, servedGateway, storedGatewayConfig, webhookObjects } from '../cluster/operator.ts';
import { testNodes } from './global-setup.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const id = `op${process.pid}`;
const system = `naat-${id}`;
const apps = `apps-${id}`;
const operators: ChildProcess[] = [];
let dir: string;

const apply = (object: unknown) =>
  k(['apply', '--server-side', '--field-manager=test', '-f', '-'], JSON.stringify(object));

function pod(name: string, nodeName = 'worker-a') {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: apps, labels: { app: 'web' } },
    spec: { nodeName, containers: [{ name: 'app', image: 'app:test' }] },
  };
}

function policy(name: string, priority: number, action: 'Allow' | 'Deny') {
  return {
    apiVersion,
    kind: 'EgressPolicy',
    metadata: { name, namespace: apps },
    spec: {
      gateway: id,
      podSelector: { matchLabels: { app: 'web' } },
      priority,
      rules: [
        { name: 'https', action, destinations: [{ cidr: '192.0.2.0/24', protocol: 'TCP', ports: [{ port: 443 }] }] },
      ],
    },
  };
}

async function startOperator(name: string, port: number): Promise<ChildProcess> {
  const settings = operatorSettings(
    `naat-${id}`,
    { metrics: port, health: port + 1, webhook: port + 2 },
    {
      leaderElection: {
        enabled: true,
        leaseName: `naat-${id}`,
        leaseDurationSeconds: 4,
        renewDeadlineSeconds: 3,
        retryPeriodSeconds: 1,
      },
      bypass: ['10.96.0.0/12'],
    },
  );
  const file = join(dir, `${name}.json`);
  await writeFile(file, JSON.stringify(settings));
  const child = spawn(process.execPath, [join(root, 'operator', 'main.ts')], {
    env: {
      ...process.env,
      NAAT_CONFIG: file,
      NAAT_NAMESPACE: system,
      NAAT_POD_NAME: name,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  Object.defineProperty(child, 'output', { get: () => output });
  operators.push(child);
  return child;
}

async function eventually<T>(what: string, check: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > end) {
      const logs = operators.map((o) => (o as ChildProcess & { output: string }).output.slice(-3000)).join('\n---\n');
      throw new Error(`timed out waiting for ${what} (${String(last ?? '')})\n${logs}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

const config = (): Promise<GatewayConfig | undefined> => storedGatewayConfig(k, system, id);

async function status(kind: string, name: string, namespace?: string) {
  const object = JSON.parse(await k(['get', kind, name, ...(namespace ? ['-n', namespace] : []), '-o', 'json']));
  return object.status as Record<string, unknown> & {
    conditions?: Array<{ type: string; status: string; reason: string; message: string }>;
  };
}

const condition = (s: Awaited<ReturnType<typeof status>>, type: string) => s.conditions?.find((c) => c.type === type);

/** Whether the replica whose metrics are on this port leads. */
async function leaderOf(port: number): Promise<boolean> {
  const text = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
  return /naat_operator_leader 1/.test(text);
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-operator-'));
  await installCrds(process.env.KUBECONFIG!);
  await k(['create', 'namespace', system]);
  for (const object of webhookObjects(`naat-${id}`, system)) await apply(object);
  for (const object of servedGateway(id, apps)) await apply(object);
  await apply(pod('web-1'));
  await apply(policy('deny-https', 10, 'Deny'));
}, 120_000);

afterAll(async () => {
  for (const operator of operators) operator.kill('SIGTERM');
  await k(['delete', 'mutatingwebhookconfiguration', `naat-${id}`, '--ignore-not-found']);
  await k(['delete', 'egressgateway', id, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', `${id}-isp`, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'namespace', apps, system, '--wait=false']);
  await rm(dir, { recursive: true, force: true });
});

test('compiles the gateway into its ConfigMap and DaemonSet, writes status, and follows changes', async () => {
  await startOperator('operator-a', 19100);
  const ip = await eventually('the pod address', async () => {
    const p = JSON.parse(await k(['get', 'pod', 'web-1', '-n', apps, '-o', 'json']));
    return p.status?.podIP as string | undefined;
  });
  const first = await eventually('the compiled config', async () => {
    const c = await config();
    return c?.sources.includes(ip) ? c : undefined;
  });
  expect(first.uplinks.map((u) => u.name)).toEqual([`${id}-isp`]);
  expect(first.rules).toMatchObject([{ policy: `${apps}/deny-https`, rule: 'https', action: 'Deny', sources: [ip] }]);
  // The service network from the settings, then the nodes' pod networks.
  const podCidrs = JSON.parse(await k(['get', 'nodes', '-o', 'json'])).items.flatMap(
    (n: { spec: { podCIDRs?: string[] } }) => n.spec.podCIDRs ?? [],
  );
  expect(first.bypass).toEqual(['10.96.0.0/12', ...podCidrs]);

  const gateway = await eventually('the gateway status', async () => {
    const s = await status('egressgateway', id);
    return s.configHash === first.hash && condition(s, 'Accepted')?.status === 'True' ? s : undefined;
  });
  expect(gateway.desiredNodes).toBe(2);
  const deny = await eventually('the policy status', async () => {
    const s = await status('egresspolicy', 'deny-https', apps);
    return s.matchedPods === 1 ? s : undefined;
  });
  expect(condition(deny, 'Accepted')?.status).toBe('True');
  expect(condition(deny, 'Conflicting')?.status).toBe('False');
  await eventually('the dataplane pods on both gateway nodes', async () => {
    const s = await status('egressgateway', id);
    return s.readyNodes === 2 && condition(s, 'Ready')?.status === 'True' ? true : undefined;
  });
  // Every reconcile so far was timed and counted.
  const metrics = await fetch('http://127.0.0.1:19100/metrics').then((r) => r.text());
  const reconciled = (name: string) =>
    Number(new RegExp(`^${name}\\{controller="gateways",result="success"\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? 0);
  expect(metrics).toContain('# TYPE naat_operator_reconcile_duration_seconds histogram');
  expect(metrics).toMatch(
    /^naat_operator_reconcile_duration_seconds_bucket\{le="\+Inf",controller="gateways",result="success"\} \d+$/m,
  );
  expect(reconciled('naat_operator_reconcile_duration_seconds_count')).toBeGreaterThan(0);
  expect(reconciled('naat_operator_reconcile_total')).toBe(
    reconciled('naat_operator_reconcile_duration_seconds_count'),
  );
  expect(metrics).toMatch(/^naat_operator_queue_depth\{controller="gateways"\} \d+$/m);
  expect(metrics).toMatch(/^naat_build_info\{version="[^"]+",component="operator",node_version="v[^"]+"\} 1$/m);
  expect(metrics).toMatch(/^nodejs_eventloop_lag_seconds [\d.e+-]+$/m);

  // A new pod is in the config within moments of getting its address.
  const appliedAt = Date.now();
  await apply(pod('web-2'));
  const second = await eventually('the second pod in the config', async () => {
    const c = await config();
    return c && c.sources.length === 2 ? c : undefined;
  });
  console.log(`a new pod reached the compiled config ${Date.now() - appliedAt} ms after kubectl apply returned`);
  expect(second.rules[0]!.sources).toHaveLength(2);

  // A policy of equal priority that disagrees on the same flows is reported, on both policies.
  await apply(policy('allow-https', 10, 'Allow'));
  const conflict = await eventually('the conflict', async () => {
    const s = await status('egresspolicy', 'allow-https', apps);
    return condition(s, 'Conflicting')?.status === 'True' ? s : undefined;
  });
  // Equal priorities go by name: allow-https comes first and shadows deny-https.
  expect(condition(conflict, 'Conflicting')?.message).toMatch(/overlaps .*deny-https#https, which it shadows/);
  const shadowed = await status('egresspolicy', 'deny-https', apps);
  expect(condition(shadowed, 'Conflicting')?.message).toMatch(/is shadowed by .*allow-https#https/);

  // An uplink the gateway does not have is named in the policy's status.
  const bad = policy('via-nowhere', 20, 'Allow');
  (bad.spec.rules[0] as Record<string, unknown>).uplinks = { allowed: ['nowhere'] };
  await apply(bad);
  const refused = await eventually('the missing uplink', async () => {
    const s = await status('egresspolicy', 'via-nowhere', apps);
    return condition(s, 'Accepted')?.status === 'False' ? s : undefined;
  });
  expect(condition(refused, 'Accepted')?.message).toMatch(/nowhere/);

  // What a user should notice is also told as Events.
  const events = async (namespace: string, name: string) =>
    (
      JSON.parse(
        await k(['get', 'events', '-n', namespace, '--field-selector', `involvedObject.name=${name}`, '-o', 'json']),
      ).items as Array<{
        reason: string;
        message: string;
      }>
    ).map((e) => `${e.reason}: ${e.message}`);
  await eventually('the events', async () => ((await events('default', id)).length >= 2 ? true : undefined));
  expect((await events('default', id)).every((e) => /^ConfigCompiled: compiled config sha256:/.test(e))).toBe(true);
  expect(await events(apps, 'allow-https')).toEqual([expect.stringMatching(/^Conflicting: rule https overlaps/)]);

  // A policy moved to another gateway leaves this one's config, and no longer shadows anything here.
  const elsewhere = JSON.stringify({ spec: { gateway: `${id}-other` } });
  await k(['patch', 'egresspolicy', 'allow-https', '-n', apps, '--type=merge', '-p', elsewhere]);
  const moved = await eventually('the moved policy gone from the config', async () => {
    const c = await config();
    return c && !c.rules.some((r) => r.policy === `${apps}/allow-https`) ? c : undefined;
  });
  expect(moved.rules.map((r) => r.policy)).toEqual([`${apps}/deny-https`, `${apps}/via-nowhere`]);
  await eventually('the conflict gone', async () =>
    condition(await status('egresspolicy', 'deny-https', apps), 'Conflicting')?.status === 'False' ? true : undefined,
  );

  // A new config leaves the ServiceAccount, Role and RoleBinding alone (stored as written), and
  // another hand's edit or deletion of them is undone at once, though nothing compiled changed.
  const rbac = ['serviceaccount', 'role', 'rolebinding'];
  const versions = () =>
    Promise.all(
      rbac.map((kind) => k(['get', kind, objectName(id), '-n', system, '-o', 'jsonpath={.metadata.resourceVersion}'])),
    );
  const unchanged = await versions();
  const hash = (await config())?.hash;
  const later = JSON.stringify({ spec: { priority: 21 } });
  await k(['patch', 'egresspolicy', 'via-nowhere', '-n', apps, '--type=merge', '-p', later]);
  await eventually('the new config', async () => ((await config())?.hash !== hash ? true : undefined));
  expect(await versions()).toEqual(unchanged);
  const verbs = () =>
    k(['get', 'role', objectName(id), '-n', system, '-o', 'jsonpath={.rules[0].verbs}']).then(
      (text) => JSON.parse(text) as string[],
    );
  expect(await verbs()).toEqual(['get', 'watch']);
  const widened = [{ op: 'replace', path: '/rules/0/verbs', value: ['get', 'watch', 'list'] }];
  await k(['patch', 'role', objectName(id), '-n', system, '--type=json', '-p', JSON.stringify(widened)]);
  await k(['delete', 'rolebinding', objectName(id), '-n', system]);
  await eventually('the Role as compiled again', async () =>
    (await verbs()).join() === 'get,watch' ? true : undefined,
  );
  await eventually('the RoleBinding back', async () =>
    (await k(['get', 'rolebinding', '-n', system, '-o', 'name'])).includes(objectName(id)) ? true : undefined,
  );
});

test('restarting the operator changes nothing that was right', async () => {
  // What the operator last wrote to each object (its managed fields' times): other writers, such
  // as the DaemonSet controller updating the DaemonSet's status, change resourceVersions too.
  const written = '{.metadata.managedFields[?(@.manager=="naat-operator")].time}';
  const versions = async () =>
    Promise.all([
      k(['get', 'configmap', objectName(id), '-n', system, '-o', `jsonpath=${written}`]),
      k(['get', 'daemonset', objectName(id), '-n', system, '-o', `jsonpath=${written}`]),
      k(['get', 'egressgateway', id, '-o', `jsonpath=${written}`]),
      k(['get', 'egresspolicy', 'deny-https', '-n', apps, '-o', `jsonpath=${written}`]),
    ]);
  const before = await versions();
  expect(before.every((times) => times.length > 0)).toBe(true);
  const first = operators.shift()!;
  const exited = new Promise((resolve) => first.once('exit', resolve));
  first.kill('SIGTERM');
  await exited;
  await startOperator('operator-a2', 19100);
  await eventually('the restarted operator leading', async () => ((await leaderOf(19100)) ? true : undefined), 20_000);
  // Long enough for its first reconcile of everything.
  await new Promise((r) => setTimeout(r, 3000));
  expect(await versions()).toEqual(before);
});

test('of two replicas one leads; the other takes over when it stops and keeps the config current', async () => {
  const second = await startOperator('operator-b', 19200);
  await eventually('both replicas serving', async () =>
    (await leaderOf(19100)) !== undefined && (await leaderOf(19200)) !== undefined ? true : undefined,
  );
  expect([await leaderOf(19100), await leaderOf(19200)]).toEqual([true, false]);
  const first = operators[0]!;
  const exited = new Promise<number | null>((resolve) => first.once('exit', (code) => resolve(code)));
  first.kill('SIGTERM');
  // A leader told to stop stops cleanly and releases its Lease; it has not lost it.
  expect(await exited).toBe(0);
  expect(String((first as ChildProcess & { output: string }).output)).not.toContain('Lost the Lease');
  await eventually('the second replica leading', async () => ((await leaderOf(19200)) ? true : undefined), 20_000);
  // The new leader keeps the config current.
  await apply(pod('web-3'));
  await eventually('the third pod in the config', async () =>
    (await config())?.sources.length === 3 ? true : undefined,
  );
  second.kill('SIGTERM');
});

describe('cluster-wide egress', () => {
  // kwok gives its nodes no InternalIP unless they have one: what tunnels are addressed by.
  const internalIp = (node: string) => `192.0.2.${testNodes.findIndex((n) => n.name === node) + 1}`;
  const setAddresses = (node: string, addresses: unknown[]) =>
    k(['patch', 'node', node, '--subresource=status', '--type=merge', '-p', JSON.stringify({ status: { addresses } })]);
  beforeAll(async () => {
    for (const { name } of testNodes) await setAddresses(name, [{ type: 'InternalIP', address: internalIp(name) }]);
  });
  afterAll(async () => {
    for (const { name } of testNodes) await setAddresses(name, [{ type: 'Hostname', address: name }]);
  });

  const json = async (args: string[]) => JSON.parse(await k([...args, '-o', 'json']));
  /** The node agents' ConfigMaps, by node. */
  const nodeConfigs = async () => {
    const list = await json(['get', 'configmaps', '-n', system, '-l', `app.kubernetes.io/name=${nodeAgentName}`]);
    return new Map(
      (list.items as Array<{ metadata: { name: string }; data: Record<string, string> }>).map((cm) => {
        const config = JSON.parse(cm.data['config.json']!) as NodeConfig;
        expect(cm.metadata.name).toBe(nodeConfigName(config.node));
        return [config.node, config];
      }),
    );
  };
  const nodeAgents = async () => {
    const found = await json(['get', 'daemonsets', '-n', system, '--field-selector', `metadata.name=${nodeAgentName}`]);
    return found.items[0] as
      { spec: { template: { spec: { affinity: { nodeAffinity: Record<string, unknown> } } } } } | undefined;
  };
  const affinityOf = (ds: NonNullable<Awaited<ReturnType<typeof nodeAgents>>>) =>
    (
      ds.spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution as {
        nodeSelectorTerms: Array<{ matchFields: Array<{ values: string[] }> }>;
      }
    ).nodeSelectorTerms.flatMap((term) => term.matchFields[0]!.values);
  /** The nodes and the gateways as the operator reads them, for a failure's message. */
  const clusterFacts = async () => {
    const nodes = (await json(['get', 'nodes'])).items as Array<{
      metadata: { name: string; labels?: Record<string, string> };
      spec: { unschedulable?: boolean };
      status: { addresses?: unknown[] };
    }>;
    const gateways = (await json(['get', 'egressgateways'])).items as Array<{
      metadata: { name: string; creationTimestamp: string };
      spec: { nodeSelector?: unknown };
      status?: { conditions?: unknown[] };
    }>;
    return JSON.stringify({
      nodes: nodes.map((n) => [n.metadata.name, n.metadata.labels, n.spec.unschedulable, n.status.addresses]),
      gateways: gateways.map((g) => [
        g.metadata.name,
        g.metadata.creationTimestamp,
        g.spec.nodeSelector,
        g.status?.conditions,
      ]),
    });
  };
  const steered = async (name: string) =>
    ((await json(['get', 'pod', name, '-n', apps])).status.conditions as Array<Record<string, string>>).find(
      (c) => c.type === 'naat.dev/Steered',
    );
  const podEvents = async (name: string) =>
    (
      (await json(['get', 'events', '-n', apps, '--field-selector', `involvedObject.name=${name}`])).items as Array<{
        type: string;
        reason: string;
        message: string;
      }>
    ).map((e) => `${e.type} ${e.reason}: ${e.message}`);

  test('node agents land where served pods run, with only their pods, and leave when the pods or the gateway go', async () => {
    await startOperator('operator-c', 19300);
    // web-1, web-2 and web-3 run on worker-a; the gateway's nodes are gateway-a and gateway-b.
    // Both gateway nodes as peers too: should one be missing for good, the timeout says why.
    const configs = await eventually('the node config of worker-a', async () => {
      const c = await nodeConfigs();
      const gateway = c.get('worker-a')?.gateways[0];
      if (gateway?.pods.length !== 3) return undefined;
      if (gateway.peers.length === 2) return c;
      throw new Error(`peers ${JSON.stringify(gateway.peers)}; ${await clusterFacts()}`);
    });
    expect([...configs.keys()]).toEqual(['worker-a']);
    const worker = configs.get('worker-a')!;
    expect(worker.gateways.map((g) => g.gateway)).toEqual([id]);
    expect(worker.gateways[0]!.pods.map((p) => p.name)).toEqual(['web-1', 'web-2', 'web-3']);
    expect(worker.gateways[0]!.peers).toEqual([
      { node: 'gateway-a', addresses: [internalIp('gateway-a')] },
      { node: 'gateway-b', addresses: [internalIp('gateway-b')] },
    ]);
    const agents = await eventually('the node agents', nodeAgents);
    expect(affinityOf(agents)).toEqual(['worker-a']);
    // The gateway's own config names the nodes that tunnel to it and each pod's node.
    const gatewayConfig = (await config())!;
    expect(gatewayConfig.steering?.sources).toEqual([{ node: 'worker-a', addresses: [internalIp('worker-a')] }]);
    expect(gatewayConfig.pods.every((p) => p.node === 'worker-a')).toBe(true);

    // No node agent has reported: the pods say so, with an Event, and so does the gateway.
    const notSteered = await eventually('the Steered condition', async () => {
      const c = await steered('web-1');
      return c?.status === 'False' ? c : undefined;
    });
    expect(notSteered).toMatchObject({ reason: 'NotReported' });
    await eventually('the NotSteered Event', async () =>
      (await podEvents('web-1')).some((e) => /^Warning NotSteered: NotReported: /.test(e)) ? true : undefined,
    );
    expect(condition(await status('egressgateway', id), 'SteeringReady')).toMatchObject({
      status: 'False',
      reason: 'NotReported',
    });

    // The node agent of worker-a reports ready with its current config, as it would.
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(process.env.KUBECONFIG!);
    const reporter = new SteeringStatusReporter(kubeConfig, 'worker-a');
    await reporter.report([{ gateway: id, ready: true, reason: 'Applied', hash: worker.hash! }]);
    await eventually('the pods steered', async () =>
      (await steered('web-1'))?.status === 'True' && (await steered('web-3'))?.status === 'True' ? true : undefined,
    );
    await eventually('the Steered Event', async () =>
      (await podEvents('web-1')).some((e) => /^Normal Steered: /.test(e)) ? true : undefined,
    );
    // Each change told once, though the operator reconciled the pods many times in between.
    const told = await podEvents('web-1');
    expect(told).toEqual([...new Set(told)]);
    expect(condition(await status('egressgateway', id), 'SteeringReady')).toMatchObject({
      status: 'True',
      reason: 'Ready',
    });

    // A node config edited by another hand is written back as compiled, though nothing the
    // operator compiles from changed.
    const edited = JSON.stringify({ ...worker, gateways: [], hash: 'sha256:edited' });
    await k([
      'patch',
      'configmap',
      nodeConfigName('worker-a'),
      '-n',
      system,
      '--type=merge',
      '-p',
      JSON.stringify({ data: { 'config.json': edited } }),
    ]);
    await eventually('the node config written back', async () =>
      (await nodeConfigs()).get('worker-a')?.hash === worker.hash ? true : undefined,
    );
    expect((await nodeConfigs()).get('worker-a')).toEqual(worker);

    // A pod on a gateway node takes the local path: no node config for it; worker-a's changes and
    // is stale until its agent applies it.
    await apply(pod('local-1', 'gateway-a'));
    await eventually('the local pod in the gateway config', async () =>
      (await config())?.pods.some((p) => p.name === 'local-1') ? true : undefined,
    );
    await apply(pod('web-4'));
    const changed = await eventually('worker-a with a fourth pod', async () => {
      const c = (await nodeConfigs()).get('worker-a');
      return c?.gateways[0]?.pods.length === 4 ? c : undefined;
    });
    expect([...(await nodeConfigs()).keys()]).toEqual(['worker-a']);
    expect(changed.hash).not.toBe(worker.hash);
    await eventually('the stale config said', async () =>
      condition(await status('egressgateway', id), 'SteeringReady')?.reason === 'ConfigPending' ? true : undefined,
    );
    // The pods told steered stay so: the config worker-a's agent applied steers them.
    await new Promise((r) => setTimeout(r, 2000));
    expect(await steered('web-1')).toMatchObject({ status: 'True', reason: 'Steered' });
    expect((await podEvents('web-1')).filter((e) => /ConfigPending/.test(e))).toEqual([]);
    await reporter.report([{ gateway: id, ready: true, reason: 'Applied', hash: changed.hash! }]);
    await eventually('the new pod steered', async () =>
      (await steered('web-4'))?.status === 'True' ? true : undefined,
    );
    // Another hand's change of the condition alone is undone.
    const tampered = { type: 'naat.dev/Steered', status: 'False', reason: 'Tampered', message: 'by hand' };
    await k([
      'patch',
      'pod',
      'web-1',
      '-n',
      apps,
      '--subresource=status',
      '-p',
      JSON.stringify({ status: { conditions: [tampered] } }),
    ]);
    await eventually('the condition restored', async () =>
      (await steered('web-1'))?.reason === 'Steered' ? true : undefined,
    );

    // The served pods leave worker-a: its config and the node agents go.
    await k(['delete', 'pod', 'web-1', 'web-2', 'web-3', 'web-4', '-n', apps, '--grace-period=0', '--force']);
    await eventually('the node agents gone', async () =>
      !(await nodeAgents()) && !(await nodeConfigs()).size ? true : undefined,
    );
    expect(await k(['get', 'role,rolebinding,serviceaccount', '-n', system, '-o', 'name'])).not.toContain(
      nodeAgentName,
    );
    expect(condition(await status('egressgateway', id), 'SteeringReady')).toMatchObject({
      status: 'True',
      reason: 'LocalOnly',
    });

    // A served pod on worker-a again brings them back; removing the gateway takes them away.
    await apply(pod('web-5'));
    await eventually('the node agents back', async () =>
      (await nodeAgents()) && (await nodeConfigs()).has('worker-a') ? true : undefined,
    );
    await k(['delete', 'egressgateway', id]);
    await eventually('the node agents gone with the gateway', async () =>
      !(await nodeAgents()) && !(await nodeConfigs()).size ? true : undefined,
    );
    expect(await k(['get', 'clusterrolebinding', '-o', 'name'])).not.toContain(`naat-${id}-node`);
  });

  // Two gateways of one namespace: p1 (older) on gateway-a and gateway-b, p2 on gateway-b; the
  // pods of both on worker-a, where the node agent relays each gateway at its association port.
  const ports = `ports-${id}`;
  const portsLabel = 'naat.dev/ports-test';
  const gatewayOf = (name: string, app: string, nodeSelector: Record<string, string>) => ({
    apiVersion,
    kind: 'EgressGateway',
    metadata: { name },
    spec: {
      nodeSelector,
      uplinks: { names: [`${id}-isp`] },
      namespaceSelector: { matchLabels: { egress: ports } },
      podSelector: { matchLabels: { app } },
    },
  });
  const portsPod = (name: string, app: string) => ({
    ...pod(name),
    metadata: { name, namespace: ports, labels: { app } },
  });
  const p1 = `${id}-p1`;
  const p2 = `${id}-p2`;
  afterAll(async () => {
    await k(['delete', 'egressgateway', p1, p2, '--ignore-not-found', '--wait=false']);
    await k(['delete', 'namespace', ports, '--ignore-not-found', '--wait=false']);
  });
  const steeringReports = async (gateway: string) =>
    (
      ((await status('egressgateway', gateway)).steering as { nodes?: Array<{ node: string }> } | undefined)?.nodes ??
      []
    )
      .map((n) => n.node)
      .sort();

  test('refuses a gateway the ports another gateway holds on a node, naming both, until it has its own', async () => {
    await apply({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ports, labels: { egress: ports } } });
    await k(['label', 'node', 'gateway-b', `${portsLabel}=${id}`, '--overwrite']);
    try {
      await apply(gatewayOf(p1, 'one', { 'naat.dev/gateway': 'true' }));
      await apply(gatewayOf(p2, 'two', { [portsLabel]: id }));
      await apply(portsPod('one-1', 'one'));
      await apply(portsPod('two-1', 'two'));

      // gateway-b is p1's: p2's agent would listen at the same health, metrics and association ports.
      const accepted = await eventually('p2 refused on gateway-b', async () => {
        const c = condition(await status('egressgateway', p2), 'Accepted');
        return c?.status === 'False' ? c : undefined;
      });
      expect(accepted).toMatchObject({ reason: 'PortConflict' });
      expect(accepted.message).toContain(
        `node gateway-b runs the agent of EgressGateway ${p1}, which listens at port 9091`,
      );
      const daemonSet = await json(['get', 'daemonset', objectName(p2), '-n', system]);
      expect(daemonSet.spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution).toEqual(
        {
          nodeSelectorTerms: [{ matchFields: [{ key: 'metadata.name', operator: 'NotIn', values: ['gateway-b'] }] }],
        },
      );
      expect(condition(await status('egressgateway', p1), 'Accepted')).toMatchObject({ status: 'True' });

      // On worker-a both would be relayed at 7740: p1's pods are, p2's are not and say why.
      const twoSteered = await eventually('two-1 not steered for the port', async () => {
        const c = (
          (await json(['get', 'pod', 'two-1', '-n', ports])).status.conditions as Array<Record<string, string>>
        )?.find((c) => c.type === 'naat.dev/Steered');
        return c?.reason === 'PortConflict' ? c : undefined;
      });
      expect(twoSteered.message).toContain(
        `node worker-a relays the association streams of EgressGateway ${p1}'s pods at port 7740`,
      );
      expect(condition(await status('egressgateway', p2), 'SteeringReady')).toMatchObject({
        status: 'False',
        reason: 'PortConflict',
      });
      expect((await nodeConfigs()).get('worker-a')!.gateways.map((g) => g.gateway)).toEqual([p1]);

      // Its own association port: relayed beside p1 on worker-a.
      await k([
        'patch',
        'egressgateway',
        p2,
        '--type=merge',
        '-p',
        JSON.stringify({ spec: { association: { port: 7750 } } }),
      ]);
      const both = await eventually('worker-a relaying both', async () => {
        const gateways = (await nodeConfigs()).get('worker-a')?.gateways ?? [];
        return gateways.length === 2 ? gateways : undefined;
      });
      expect(both.map((g) => [g.gateway, g.associationPort])).toEqual([
        [p1, 7740],
        [p2, 7750],
      ]);
      await eventually('p2 waiting for its node agent', async () =>
        condition(await status('egressgateway', p2), 'SteeringReady')?.reason === 'NotReported' ? true : undefined,
      );
    } finally {
      await k(['label', 'node', 'gateway-b', `${portsLabel}-`]);
    }
  });

  test('removes the entries of node agents that are gone from the gateway status, and only those', async () => {
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(process.env.KUBECONFIG!);
    const worker = (await nodeConfigs()).get('worker-a')!;
    const current = new SteeringStatusReporter(kubeConfig, 'worker-a');
    await current.report([{ gateway: p1, ready: true, reason: 'Applied', hash: worker.hash! }]);
    // An agent on a node that was deleted reported before it went.
    const retired = new SteeringStatusReporter(kubeConfig, 'retired-node');
    await retired.report([{ gateway: p1, ready: true, reason: 'Applied', hash: 'sha256:old' }]);
    await eventually('the retired node pruned', async () =>
      JSON.stringify(await steeringReports(p1)) === JSON.stringify(['worker-a']) ? true : undefined,
    );
    await eventually('one-1 steered', async () =>
      condition(await status('egressgateway', p1), 'SteeringReady')?.status === 'True' ? true : undefined,
    );

    // worker-a no longer hosts p1's pods: its agent would leave, and so does its entry.
    await k(['delete', 'pod', 'one-1', '-n', ports, '--grace-period=0', '--force']);
    await eventually("worker-a's entry pruned", async () => ((await steeringReports(p1)).length ? undefined : true));
    expect(condition(await status('egressgateway', p1), 'SteeringReady')).toMatchObject({ reason: 'LocalOnly' });
  });
});
