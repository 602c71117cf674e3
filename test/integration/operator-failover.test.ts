// Gateway-node high availability in the EgressGateway's status, with the operator as it runs
// (`node operator/main.ts`) against the real apiserver. The test writes the gateway nodes'
// failover Leases itself, exactly as their agents do (contracts/gateway/failover.ts): each node
// renews its own every third of the lease duration with the addresses it owns and its last claim.
// The status says who owns each address, which nodes are healthy and the last failover; an owner
// that stops renewing drops out after the lease duration; each claim is told by one Event, once,
// even across a restart of the operator; a drained node is not healthy.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CoordinationV1Api, KubeConfig, V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import {
  failoverAnnotations,
  failoverLeaseLabels,
  failoverLeaseName,
  type FailoverClaim,
} from '../../contracts/gateway/index.ts';
import { root } from '../../crds/generate.ts';
import { kubectl } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { gatewayWithUplink, operatorSettings, webhookObjects } from '../cluster/operator.ts';
import { until } from '../e2e/topology.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const id = `fo${process.pid}`;
const system = `naat-${id}`;
const leaseDurationMs = 1000;
const [first, second] = ['192.0.2.30', '192.0.2.31'] as const;
// The gateway nodes, as Node objects its nodeSelector matches, named for this run.
const [nodeA, nodeB, nodeC] = ['a', 'b', 'c'].map((n) => `${id}-gateway-${n}`) as [string, string, string];
let dir: string;
let operator: (ChildProcess & { output: string }) | undefined;
let leases: CoordinationV1Api;

const apply = (object: unknown) =>
  k(['apply', '--server-side', '--field-manager=test', '-f', '-'], JSON.stringify(object));

async function startOperator(name: string): Promise<void> {
  const settings = operatorSettings(
    system,
    { metrics: 19400, health: 19401, webhook: 19402 },
    {
      leaderElection: {
        enabled: true,
        leaseName: system,
        leaseDurationSeconds: 4,
        renewDeadlineSeconds: 3,
        retryPeriodSeconds: 1,
      },
    },
  );
  const file = join(dir, `${name}.json`);
  await writeFile(file, JSON.stringify(settings));
  const child = spawn(process.execPath, [join(root, 'operator', 'main.ts')], {
    env: { ...process.env, NAAT_CONFIG: file, NAAT_NAMESPACE: system, NAAT_POD_NAME: name },
    stdio: ['ignore', 'pipe', 'pipe'],
  }) as ChildProcess & { output: string };
  child.output = '';
  child.stdout!.on('data', (d) => (child.output += d));
  child.stderr!.on('data', (d) => (child.output += d));
  operator = child;
}

async function stopOperator(): Promise<void> {
  const child = operator!;
  operator = undefined;
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

/** Polls `check`; a timeout shows the end of what the operator printed. */
const eventually = <T>(what: string, check: () => Promise<T | undefined>, ms = 20_000) =>
  until(what, check, ms).catch((error: Error) => {
    throw new Error(`${error.message}\n${operator?.output.slice(-3000)}`);
  });

/** One gateway node's agent as far as its Lease goes: it renews it while alive. */
class GatewayNode {
  addresses: string[] = [];
  draining = false;
  lastClaim: FailoverClaim | undefined;
  #lease: V1Lease | undefined;
  #timer: NodeJS.Timeout | undefined;
  #writing: Promise<void> = Promise.resolve();
  /** When the last renewal was written. */
  renewedAt = 0;

  readonly node: string;

  constructor(node: string) {
    this.node = node;
  }

  /** Starts renewing every third of the lease duration, with a renewal now. */
  async start(): Promise<void> {
    await this.renew();
    this.#timer = setInterval(() => void this.renew(), leaseDurationMs / 3);
  }

  /** Stops renewing, as a node that lost power: its Lease stays as it was. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#writing;
  }

  /** Takes an address over, recording the claim in the Lease at once. */
  async claim(address: string, reason: FailoverClaim['reason'], from?: string, milliseconds?: number): Promise<void> {
    this.addresses = [...this.addresses, address].sort();
    this.lastClaim = {
      address,
      ...(from ? { from } : {}),
      at: new Date().toISOString(),
      reason,
      ...(milliseconds !== undefined ? { milliseconds } : {}),
    };
    await this.renew();
  }

  async release(address: string): Promise<void> {
    this.addresses = this.addresses.filter((a) => a !== address);
    await this.renew();
  }

  /** One renewal: the Lease with the node's current state, written in turn with the others. */
  renew(): Promise<void> {
    this.#writing = this.#writing.then(() => this.#write());
    return this.#writing;
  }

  async #write(): Promise<void> {
    const name = failoverLeaseName(id, this.node);
    const body: V1Lease = {
      metadata: {
        name,
        namespace: system,
        labels: failoverLeaseLabels(id, this.node),
        annotations: {
          [failoverAnnotations.addresses]: this.addresses.join(','),
          [failoverAnnotations.uplinks]: id,
          [failoverAnnotations.draining]: String(this.draining),
          [failoverAnnotations.durationMs]: String(leaseDurationMs),
          ...(this.lastClaim ? { [failoverAnnotations.lastClaim]: JSON.stringify(this.lastClaim) } : {}),
        },
        ...(this.#lease ? { resourceVersion: this.#lease.metadata!.resourceVersion! } : {}),
      },
      spec: {
        holderIdentity: this.node,
        leaseDurationSeconds: Math.ceil(leaseDurationMs / 1000),
        renewTime: new V1MicroTime(),
      },
    };
    this.#lease = this.#lease
      ? await leases.replaceNamespacedLease({ name, namespace: system, body })
      : await leases.createNamespacedLease({ namespace: system, body });
    this.renewedAt = Date.now();
  }
}

type Failover = {
  addresses?: Array<{ address: string; node?: string }>;
  healthyNodes?: string[];
  lastFailover?: Record<string, unknown>;
};

async function gatewayStatus(): Promise<Record<string, unknown> & { failover?: Failover; conditions?: unknown[] }> {
  return JSON.parse(await k(['get', 'egressgateway', id, '-o', 'json'])).status ?? {};
}
const failover = async () => (await gatewayStatus()).failover;
const owners = (f: Failover | undefined) => Object.fromEntries((f?.addresses ?? []).map((a) => [a.address, a.node]));

/** The notes of the gateway's FailoverClaimed Events, one per Event. */
async function claimEvents(): Promise<Array<{ type: string; note: string }>> {
  const list = JSON.parse(
    await k(['get', 'events.events.k8s.io', '-n', 'default', '--field-selector', `regarding.name=${id}`, '-o', 'json']),
  ) as { items: Array<{ reason: string; type: string; note: string }> };
  return list.items.filter((e) => e.reason === 'FailoverClaimed').map(({ type, note }) => ({ type, note }));
}

const nodes = {
  a: new GatewayNode(nodeA),
  b: new GatewayNode(nodeB),
  c: new GatewayNode(nodeC),
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-failover-'));
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromFile(process.env.KUBECONFIG!);
  leases = kubeConfig.makeApiClient(CoordinationV1Api);
  await installCrds(process.env.KUBECONFIG!);
  await k(['create', 'namespace', system]);
  for (const object of webhookObjects(system, system)) await apply(object);
  // The gateway and its uplink as other operator tests have them, with two failover addresses.
  const [uplink, gateway] = gatewayWithUplink(id) as [unknown, { spec: Record<string, unknown> }];
  gateway.spec.failover = {
    addresses: [first, second].map((address) => ({ address, uplink: id })),
    leaseDurationMilliseconds: leaseDurationMs,
  };
  for (const object of [uplink, gateway]) await apply(object);
  for (const name of [nodeA, nodeB, nodeC]) {
    await apply({ apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { 'naat.dev/gateway': 'true' } } });
  }
  await startOperator('operator-a');
}, 120_000);

afterAll(async () => {
  for (const node of Object.values(nodes)) await node.stop();
  if (operator) await stopOperator();
  await k(['delete', 'mutatingwebhookconfiguration', system, '--ignore-not-found']);
  await k(['delete', 'egressgateway', id, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', id, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'namespace', system, '--wait=false']);
  await k(['delete', 'node', nodeA, nodeB, nodeC, '--ignore-not-found', '--wait=false']);
  await rm(dir, { recursive: true, force: true });
});

test('the status names each address’s owner and the healthy nodes, and an Event tells each claim', async () => {
  await nodes.a.start();
  await nodes.b.start();
  await nodes.a.claim(first, 'Unowned');
  await nodes.b.claim(second, 'Unowned', undefined, 0);
  const status = await eventually('both addresses owned', async () => {
    const f = await failover();
    return f?.healthyNodes?.length === 2 && owners(f)[second] ? f : undefined;
  });
  expect(status).toEqual({
    addresses: [
      { address: first, node: nodeA },
      { address: second, node: nodeB },
    ],
    healthyNodes: [nodeA, nodeB],
    // The later of the two claims.
    lastFailover: { address: second, to: nodeB, at: nodes.b.lastClaim!.at, reason: 'Unowned', milliseconds: 0 },
  });
  await eventually('the claims told', async () => ((await claimEvents()).length === 2 ? true : undefined));
  expect((await claimEvents()).sort((x, y) => x.note.localeCompare(y.note))).toEqual([
    { type: 'Normal', note: `address ${first} claimed by ${nodeA} (Unowned)` },
    { type: 'Normal', note: `address ${second} claimed by ${nodeB} (Unowned) after 0 ms` },
  ]);
  // The gateway controller's part of the status stays beside it.
  const whole = await gatewayStatus();
  expect(whole.conditions).toEqual(expect.arrayContaining([expect.objectContaining({ type: 'Accepted' })]));
});

test('an owner that stops renewing drops out after the lease duration; the node that takes its address over is the last failover, told once', async () => {
  await nodes.a.stop();
  const stoppedAt = nodes.a.renewedAt;
  const dropped = await eventually('gateway-a out of the healthy nodes', async () => {
    const f = await failover();
    return f?.healthyNodes?.length === 1 ? f : undefined;
  });
  const after = Date.now() - stoppedAt;
  console.log(`a node that stopped renewing left healthyNodes ${after} ms after its last renewal`);
  // Not before the lease duration from the operator's sighting of that renewal, and soon after.
  expect(after).toBeGreaterThanOrEqual(leaseDurationMs);
  expect(after).toBeLessThan(leaseDurationMs + 3000);
  expect(dropped.healthyNodes).toEqual([nodeB]);
  // Its Lease still lists the address, but is out of date: nobody owns it.
  expect(owners(dropped)).toEqual({ [first]: undefined, [second]: nodeB });

  await nodes.b.claim(first, 'LeaseExpired', nodeA, 1040);
  const moved = await eventually('the address taken over', async () => {
    const f = await failover();
    return owners(f)[first] === nodeB ? f : undefined;
  });
  expect(moved.lastFailover).toEqual({
    address: first,
    from: nodeA,
    to: nodeB,
    at: nodes.b.lastClaim!.at,
    reason: 'LeaseExpired',
    milliseconds: 1040,
  });
  const note = `address ${first} moved from ${nodeA} to ${nodeB} (LeaseExpired) after 1040 ms`;
  await eventually('the failover told', async () =>
    (await claimEvents()).some((e) => e.note === note) ? true : undefined,
  );
  // gateway-b keeps renewing with that claim: still one Event for it.
  await new Promise((r) => setTimeout(r, 3 * leaseDurationMs));
  expect((await claimEvents()).filter((e) => e.note === note)).toEqual([{ type: 'Warning', note }]);
  expect(await claimEvents()).toHaveLength(3);

  // Counted once each by the operator that told them, and the status's figures read at the scrape.
  const metrics = await fetch('http://127.0.0.1:19400/metrics').then((r) => r.text());
  const sample = (name: string, labels: string) =>
    Number(new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, 'm').exec(metrics)?.[1]);
  expect(sample('naat_operator_failovers_total', `gateway="${id}",reason="Unowned"`)).toBe(2);
  expect(sample('naat_operator_failovers_total', `gateway="${id}",reason="LeaseExpired"`)).toBe(1);
  expect(sample('naat_operator_failover_duration_seconds_bucket', `le="1.5",gateway="${id}"`)).toBe(2);
  expect(sample('naat_operator_failover_duration_seconds_bucket', `le="1",gateway="${id}"`)).toBe(1);
  expect(sample('naat_operator_failover_healthy_nodes', `gateway="${id}"`)).toBe(1);
  expect(sample('naat_operator_failover_unowned_addresses', `gateway="${id}"`)).toBe(0);
});

test('a restarted operator tells no claim again and rewrites nothing', async () => {
  const written = async () =>
    k([
      'get',
      'egressgateway',
      id,
      '-o',
      'jsonpath={.metadata.managedFields[?(@.manager=="naat-operator-failover")].time}',
    ]);
  const before = { written: await written(), failover: await failover() };
  await stopOperator();
  await startOperator('operator-b');
  await eventually('the new operator leading', async () => {
    const text = await fetch('http://127.0.0.1:19400/metrics').then((r) => r.text());
    return /^naat_operator_leader 1$/m.test(text) ? true : undefined;
  });
  // Long enough for it to see every node renew, and to find out that gateway-a does not.
  await new Promise((r) => setTimeout(r, 2 * leaseDurationMs + 1000));
  expect(await claimEvents()).toHaveLength(3);
  expect({ written: await written(), failover: await failover() }).toEqual(before);
});

/** The names of the gateway's failover Leases there are. */
const leaseNames = async () =>
  (await leases.listNamespacedLease({ namespace: system, labelSelector: `naat.dev/gateway=${id}` })).items
    .map((l) => l.metadata!.name!)
    .sort();

test('a gateway node’s Lease stays however long it is not renewed; a node relabelled out of the gateway loses its Lease', async () => {
  // gateway-a stopped renewing several lease durations ago, but is still a gateway node.
  expect(Date.now() - nodes.a.renewedAt).toBeGreaterThan(3 * leaseDurationMs);
  expect(await leaseNames()).toEqual([nodeA, nodeB].map((n) => failoverLeaseName(id, n)).sort());
  const relabelled = Date.now();
  await k(['label', 'node', nodeA, 'naat.dev/gateway-']);
  await eventually('the Lease of the node out of the gateway deleted', async () =>
    (await leaseNames()).includes(failoverLeaseName(id, nodeA)) ? undefined : true,
  );
  console.log(`a stopped node's Lease was deleted ${Date.now() - relabelled} ms after its node left the gateway`);
  expect(await leaseNames()).toEqual([failoverLeaseName(id, nodeB)]);
});

test('a drained node is not healthy; the node that takes over what it released is the last failover', async () => {
  await nodes.c.start();
  await eventually('gateway-c healthy', async () =>
    (await failover())?.healthyNodes?.includes(nodeC) ? true : undefined,
  );
  // Drained by the gateway: not a candidate any more, though it still owns its addresses.
  await k([
    'patch',
    'egressgateway',
    id,
    '--type=merge',
    '-p',
    JSON.stringify({ spec: { failover: { drainNodes: [nodeB] } } }),
  ]);
  const drained = await eventually('gateway-b drained', async () => {
    const f = await failover();
    return f?.healthyNodes?.join() === nodeC ? f : undefined;
  });
  expect(owners(drained)).toEqual({ [first]: nodeB, [second]: nodeB });
  // Its agent gives the address up and another takes it; its own flag says it drains too.
  nodes.b.draining = true;
  await nodes.b.release(second);
  await nodes.c.claim(second, 'Released', nodeB, 12);
  const taken = await eventually('the released address taken over', async () => {
    const f = await failover();
    return owners(f)[second] === nodeC ? f : undefined;
  });
  expect(taken.healthyNodes).toEqual([nodeC]);
  expect(taken.lastFailover).toMatchObject({ address: second, from: nodeB, to: nodeC, reason: 'Released' });
  await eventually('the release told', async () =>
    (await claimEvents()).some(
      (e) =>
        e.type === 'Normal' && e.note === `address ${second} moved from ${nodeB} to ${nodeC} (Released) after 12 ms`,
    )
      ? true
      : undefined,
  );
  // Without failover addresses, the gateway's status says nothing of failover.
  await k([
    'patch',
    'egressgateway',
    id,
    '--type=json',
    '-p',
    JSON.stringify([{ op: 'remove', path: '/spec/failover' }]),
  ]);
  await eventually('status.failover removed', async () => ((await gatewayStatus()).failover ? undefined : true));
  expect((await gatewayStatus()).conditions).toEqual(
    expect.arrayContaining([expect.objectContaining({ type: 'Accepted' })]),
  );
});

test('once the gateway has no failover, its nodes’ Leases are deleted when they stop renewing them', async () => {
  // Still renewed: kept.
  await new Promise((r) => setTimeout(r, 3 * leaseDurationMs));
  expect(await leaseNames()).toEqual([nodeB, nodeC].map((n) => failoverLeaseName(id, n)).sort());
  await nodes.b.stop();
  await nodes.c.stop();
  await eventually('no failover Lease left', async () => ((await leaseNames()).length ? undefined : true));
});
