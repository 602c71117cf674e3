import { parseNodeConfig } from '../contracts/gateway/index.ts';
import { maxVni, validate, type EgressGateway, type Uplink } from '../crds/index.ts';
import { compileGateway, type NodeFacts, type PodFacts, type Snapshot, type TunnelFacts } from './compile.ts';
import { desiredNodeObjects } from './desired.ts';
import { operatorSettings } from '../test/cluster/operator.ts';
import { parseSettings } from './settings.ts';
import { steeredPodConditions, steeringReadyCondition } from './status.ts';
import {
  derivedVni,
  desiredNodeConfigs,
  gatewayTunnels,
  nodeSteering,
  staleReports,
  type SteeringReport,
} from './steering.ts';

function gateway(name: string, role: string, steering: Record<string, unknown> = {}): EgressGateway {
  const result = validate('EgressGateway', {
    apiVersion: 'naat.dev/v1alpha1',
    kind: 'EgressGateway',
    metadata: { name },
    spec: {
      nodeSelector: { role },
      uplinks: { names: ['isp'] },
      namespaceSelector: { matchLabels: { egress: name } },
      steering,
    },
  });
  if (!result.ok) throw new Error(result.errors.join('; '));
  return result.value as EgressGateway;
}

const uplink = validate('Uplink', {
  apiVersion: 'naat.dev/v1alpha1',
  kind: 'Uplink',
  metadata: { name: 'isp' },
  spec: { interface: 'eth1', nextHop: { ipv4: '192.0.2.1' }, snat: {}, nodeSelector: { isp: 'yes' } },
});

const pod = (namespace: string, name: string, ip: string, node: string): PodFacts => ({
  namespace,
  name,
  ips: [ip],
  containers: ['app'],
  node,
});

const nodes: NodeFacts[] = [
  { name: 'gw-1', labels: { role: 'a', isp: 'yes' }, addresses: ['10.0.0.1', 'fd00::1'] },
  // A gateway node without the uplink: nowhere to send flows on.
  { name: 'gw-2', labels: { role: 'a' }, addresses: ['10.0.0.2'] },
  { name: 'gw-b', labels: { role: 'b', isp: 'yes' }, addresses: ['10.0.0.9'] },
  { name: 'worker-1', labels: {}, addresses: ['10.0.1.1', '10.0.1.2', 'fd00::11'] },
  { name: 'worker-2', labels: {}, addresses: ['10.0.2.1'] },
  { name: 'no-address', labels: {} },
];

const pods = [
  pod('a', 'web-1', '10.244.1.1', 'worker-1'),
  pod('a', 'web-2', '10.244.2.1', 'worker-2'),
  pod('a', 'local', '10.244.0.1', 'gw-1'),
  pod('a', 'lost', '10.244.9.1', 'no-address'),
  pod('b', 'api-1', '10.244.1.2', 'worker-1'),
  // On gateway a's node, away from gateway b's.
  pod('b', 'api-2', '10.244.0.2', 'gw-1'),
];

const tunnelOf = (vni: number): TunnelFacts => ({ tunnel: { vni, port: 7790 }, markMask: 0x10 });

function compile(g: EgressGateway, steering: TunnelFacts | undefined = tunnelOf(100)) {
  const snapshot: Snapshot = {
    gateway: g,
    uplinks: [uplink.ok ? (uplink.value as Uplink) : (undefined as never)],
    policies: [],
    pods,
    namespaces: new Map([
      ['a', { egress: 'a' }],
      ['b', { egress: 'b' }],
    ]),
    nodes,
    bypass: ['10.96.0.0/12'],
    steering,
  };
  return compileGateway(snapshot);
}

const agents = { markMask: 0xe0, healthPort: 9091 };
const since = '2026-12-04T12:00:00Z';

describe('derivedVni and gatewayTunnels', () => {
  it('derives a VNI in range from the name, the same every time', () => {
    for (const name of ['a', 'office', 'x'.repeat(253)]) {
      const vni = derivedVni(name);
      expect(vni).toBeGreaterThanOrEqual(1);
      expect(vni).toBeLessThanOrEqual(maxVni);
      expect(derivedVni(name)).toBe(vni);
    }
    expect(derivedVni('office')).not.toBe(derivedVni('lab'));
  });

  it('gives a shared VNI to the gateway that set it, else to the name that sorts first, and says so to the other', () => {
    const tunnels = gatewayTunnels(
      [gateway('b', 'b', { vni: 7 }), gateway('c', 'b', { vni: 7 }), gateway('a', 'a', { vni: 9 }), gateway('d', 'a')],
      7790,
      0x10,
    );
    expect(tunnels.get('b')).toEqual({ tunnel: { vni: 7, port: 7790 }, markMask: 0x10 });
    expect(tunnels.get('c')).toEqual({ vniTakenBy: 'b', vni: 7 });
    expect(tunnels.get('a')).toEqual({ tunnel: { vni: 9, port: 7790 }, markMask: 0x10 });
    expect(tunnels.get('d')).toEqual({ tunnel: { vni: derivedVni('d'), port: 7790 }, markMask: 0x10 });

    const derived = derivedVni('z');
    const clash = gatewayTunnels([gateway('z', 'a'), gateway('y', 'a', { vni: derived })], 7790, 0x10);
    expect(clash.get('y')).toMatchObject({ tunnel: { vni: derived } });
    expect(clash.get('z')).toEqual({ vniTakenBy: 'y', vni: derived });
  });
});

describe('compileGateway, steering', () => {
  it("records every served pod's node and tells the gateway which nodes tunnel to it", () => {
    const a = compile(gateway('a', 'a'));
    expect(a.config.pods.map((p) => [p.name, p.node])).toEqual([
      ['local', 'gw-1'],
      ['lost', 'no-address'],
      ['web-1', 'worker-1'],
      ['web-2', 'worker-2'],
    ]);
    expect(a.away.map((p) => p.name)).toEqual(['lost', 'web-1', 'web-2']);
    // One address per family; a node without any cannot be a tunnel's end.
    expect(a.config.steering).toEqual({
      tunnel: { vni: 100, port: 7790 },
      markMask: 0x10,
      sources: [
        { node: 'worker-1', addresses: ['10.0.1.1', 'fd00::11'] },
        { node: 'worker-2', addresses: ['10.0.2.1'] },
      ],
    });
    expect(a.steering?.peers).toEqual([{ node: 'gw-1', addresses: ['10.0.0.1', 'fd00::1'] }]);
  });

  it('has no steering when every served pod is on a gateway node or the gateway has no tunnel', () => {
    const onlyLocal = compileGateway({
      gateway: gateway('a', 'a'),
      uplinks: [],
      policies: [],
      pods: [pods[2]!],
      namespaces: new Map([['a', { egress: 'a' }]]),
      nodes,
      bypass: [],
      steering: tunnelOf(100),
    });
    expect(onlyLocal.away).toEqual([]);
    expect(onlyLocal.config.steering).toBeUndefined();
    const conflicting = compile(gateway('a', 'a'), { vniTakenBy: 'other', vni: 100 });
    expect(conflicting.away).toHaveLength(3);
    expect(conflicting.config.steering).toBeUndefined();
    expect(conflicting.steering).toBeUndefined();
  });
});

describe('desiredNodeConfigs', () => {
  const a = compile(gateway('a', 'a'), tunnelOf(100));
  const b = compile(gateway('b', 'b'), tunnelOf(200));
  const configs = desiredNodeConfigs([b, a], agents);

  it("holds, per node, only that node's served pods, per gateway, and nothing for a gateway's own nodes", () => {
    expect(configs.map((c) => c.node)).toEqual(['gw-1', 'worker-1', 'worker-2']);
    const [gw1, worker1, worker2] = configs;
    // gw-1 is gateway a's node: it steers only b's pod there.
    expect(gw1!.gateways.map((g) => [g.gateway, g.pods.map((p) => p.name)])).toEqual([['b', ['api-2']]]);
    expect(worker1!.gateways.map((g) => [g.gateway, g.pods.map((p) => p.name)])).toEqual([
      ['a', ['web-1']],
      ['b', ['api-1']],
    ]);
    expect(worker2!.gateways.map((g) => g.gateway)).toEqual(['a']);
    expect(worker1!.gateways[0]).toEqual({
      gateway: 'a',
      tunnel: { vni: 100, port: 7790 },
      selection: 'Pod',
      associationPort: 7740,
      healthPort: 9091,
      bypass: ['10.96.0.0/12'],
      pods: [{ namespace: 'a', name: 'web-1', addresses: ['10.244.1.1'] }],
      peers: [{ node: 'gw-1', addresses: ['10.0.0.1', 'fd00::1'] }],
    });
    for (const config of configs) {
      expect(config.markMask).toBe(0xe0);
      expect(parseNodeConfig(JSON.parse(JSON.stringify(config)))).toEqual(config);
    }
  });

  it('hashes the content: the same in any order, changed only when a node config changes', () => {
    expect(desiredNodeConfigs([a, b], agents)).toEqual(configs);
    const flow = compile(gateway('a', 'a', { selection: 'Flow' }), tunnelOf(100));
    const changed = desiredNodeConfigs([b, flow], agents);
    // worker-1 and worker-2 host a's pods; gw-1 only b's.
    expect(changed.map((c) => c.hash === configs.find((x) => x.node === c.node)!.hash)).toEqual([true, false, false]);
  });
});

describe('nodeSteering and the conditions made of it', () => {
  const a = compile(gateway('a', 'a'), tunnelOf(100));
  const configs = new Map(desiredNodeConfigs([a], agents).map((c) => [c.node, c]));
  const hash = (node: string) => configs.get(node)!.hash!;

  it('is ready on a node only when its agent reported ready with the current config', () => {
    const reports: SteeringReport[] = [
      { node: 'worker-1', since, ready: true, hash: 'sha256:old' },
      { node: 'worker-2', since, ready: false, reason: 'NoPeerUp', message: 'no gateway node answers' },
    ];
    expect(nodeSteering(a, tunnelOf(100), configs, reports).map((n) => [n.node, n.ready, n.reason])).toEqual([
      ['no-address', false, 'NodeAddressUnknown'],
      ['worker-1', false, 'ConfigPending'],
      ['worker-2', false, 'NoPeerUp'],
    ]);
    const ready = nodeSteering(a, tunnelOf(100), configs, [
      { node: 'worker-1', since, ready: true, hash: hash('worker-1') },
      { node: 'worker-2', since, ready: true, hash: hash('worker-2') },
    ]);
    expect(ready.map((n) => [n.node, n.ready, n.reason])).toEqual([
      ['no-address', false, 'NodeAddressUnknown'],
      ['worker-1', true, 'Steered'],
      ['worker-2', true, 'Steered'],
    ]);
    expect(nodeSteering(a, tunnelOf(100), configs, [])[1]).toMatchObject({ ready: false, reason: 'NotReported' });
    // A reason that is not a condition reason is not passed on.
    expect(
      nodeSteering(a, tunnelOf(100), configs, [{ node: 'worker-2', since, ready: false, reason: 'no peer!' }])[2],
    ).toMatchObject({ reason: 'NotReady' });
  });

  it("says PortConflict on a node where another gateway holds its association port, and leaves it out of that node's config", () => {
    const conflict = { node: 'worker-1', port: 7740, heldBy: 'b', holder: 'relay' as const };
    const without = new Map(desiredNodeConfigs([a], agents, new Map([['a', [conflict]]])).map((c) => [c.node, c]));
    expect([...without.keys()]).toEqual(['worker-2']);
    const nodes = nodeSteering(a, tunnelOf(100), without, [], [conflict]);
    expect(nodes[1]).toEqual({
      node: 'worker-1',
      ready: false,
      reason: 'PortConflict',
      message:
        "node worker-1 relays the association streams of EgressGateway b's pods at port 7740, the association port of this gateway too; give one of them another spec.association.port",
    });
  });

  it('finds the entries of nodes whose config no longer holds the gateway', () => {
    const reports: SteeringReport[] = [
      { node: 'worker-2', since, ready: true, hash: hash('worker-2') },
      { node: 'deleted-node', since, ready: true },
      { node: 'worker-1', since, ready: false },
      { node: 'gw-1', since, ready: true },
    ];
    expect(staleReports('a', reports, configs)).toEqual(['deleted-node', 'gw-1']);
    // gw-1 has a config, for gateway b only.
    const both = new Map(
      desiredNodeConfigs([a, compile(gateway('b', 'b'), tunnelOf(200))], agents).map((c) => [c.node, c]),
    );
    expect(both.get('gw-1')!.gateways.map((g) => g.gateway)).toEqual(['b']);
    expect(staleReports('a', reports, both)).toEqual(['deleted-node', 'gw-1']);
    expect(staleReports('b', reports, both)).toEqual(['deleted-node', 'worker-2']);
  });

  it('says VniConflict on every node of a gateway without a tunnel', () => {
    const conflicting = compile(gateway('a', 'a'), { vniTakenBy: 'b', vni: 100 });
    const nodes = nodeSteering(conflicting, { vniTakenBy: 'b', vni: 100 }, new Map(), []);
    expect(nodes.every((n) => n.reason === 'VniConflict' && /EgressGateway b/.test(n.message))).toBe(true);
    expect(steeringReadyCondition(nodes)).toMatchObject({ status: 'False', reason: 'VniConflict' });
  });

  it('keeps a pod told steered so while its node only has a newer config to apply, not once its agent fails', () => {
    const reported = (report: Omit<SteeringReport, 'node' | 'since'>) =>
      nodeSteering(
        a,
        tunnelOf(100),
        configs,
        ['worker-1', 'worker-2'].map((node) => ({ node, since, ...report })),
      );
    const current = steeredPodConditions([
      {
        compiled: a,
        steering: nodeSteering(a, tunnelOf(100), configs, [
          { node: 'worker-1', since, ready: true, hash: hash('worker-1') },
          { node: 'worker-2', since, ready: true, hash: hash('worker-2') },
        ]),
      },
    ]);
    const told = (key: string) => current.get(key);
    expect(current.get('a/web-1')).toMatchObject({ status: 'True', reason: 'Steered' });
    const pending = [{ compiled: a, steering: reported({ ready: true, hash: 'sha256:old' }) }];
    expect(steeredPodConditions(pending, told).get('a/web-1')).toEqual(current.get('a/web-1'));
    // A pod not told yet (new on the node), or told steered to other gateways, waits for the config.
    expect(steeredPodConditions(pending).get('a/web-1')).toMatchObject({ status: 'False', reason: 'ConfigPending' });
    const toOthers = () => ({ ...current.get('a/web-1')!, message: `${current.get('a/web-1')!.message}, b` });
    expect(steeredPodConditions(pending, toOthers).get('a/web-1')).toMatchObject({ reason: 'ConfigPending' });
    const failing = [{ compiled: a, steering: reported({ ready: false, reason: 'NoPeerUp' }) }];
    expect(steeredPodConditions(failing, told).get('a/web-1')).toMatchObject({ status: 'False', reason: 'NoPeerUp' });
    expect(
      steeredPodConditions([{ compiled: a, steering: nodeSteering(a, tunnelOf(100), configs, []) }], told).get(
        'a/web-1',
      ),
    ).toMatchObject({ status: 'False', reason: 'NotReported' });
  });

  it("gives the gateway SteeringReady and each away pod naat.dev/Steered, never true while a node isn't", () => {
    expect(steeringReadyCondition([])).toMatchObject({ status: 'True', reason: 'LocalOnly' });
    const reports = [
      { node: 'worker-1', since, ready: true, hash: hash('worker-1') },
      { node: 'worker-2', since, ready: true, hash: hash('worker-2') },
    ];
    const nodes = nodeSteering(a, tunnelOf(100), configs, reports);
    expect(steeringReadyCondition(nodes)).toMatchObject({
      status: 'False',
      reason: 'NodeAddressUnknown',
      message: expect.stringMatching(/^steering is not ready on 1 of 3 nodes: no-address \(NodeAddressUnknown\)/),
    });
    expect(steeringReadyCondition(nodes.slice(1))).toMatchObject({ status: 'True', reason: 'Ready' });

    const b = compile(gateway('b', 'b'), tunnelOf(200));
    const pods = steeredPodConditions([
      { compiled: a, steering: nodes },
      { compiled: b, steering: nodeSteering(b, tunnelOf(200), configs, []) },
    ]);
    expect([...pods.keys()].sort()).toEqual(['a/lost', 'a/web-1', 'a/web-2', 'b/api-1', 'b/api-2']);
    expect(pods.get('a/web-1')).toMatchObject({ type: 'naat.dev/Steered', status: 'True', reason: 'Steered' });
    expect(pods.get('a/lost')).toMatchObject({ status: 'False', reason: 'NodeAddressUnknown' });
    expect(pods.get('b/api-1')).toMatchObject({
      status: 'False',
      message: expect.stringMatching(/^flows are not steered to EgressGateway b: /),
    });
  });
});

describe('desiredNodeObjects', () => {
  const settings = parseSettings(operatorSettings('naat', { metrics: 8080, health: 8081, webhook: 9443 }));

  it('is nothing when no node needs a node agent', () => {
    expect(desiredNodeObjects([], settings, 'naat-system')).toEqual([]);
  });

  it('runs the node agent on exactly the nodes with a config, each reading only its own', () => {
    const configs = desiredNodeConfigs([compile(gateway('a', 'a'))], agents);
    const objects = desiredNodeObjects(configs, settings, 'naat-system');
    const of = (kind: string) => objects.filter((o) => o.kind === kind);
    expect(of('ConfigMap').map((o) => o.metadata.name)).toEqual(['naat-node-worker-1', 'naat-node-worker-2']);
    expect(JSON.parse((of('ConfigMap')[0]!.data as Record<string, string>)['config.json']!)).toEqual(configs[0]);
    expect(of('Role')[0]!.rules).toEqual([
      {
        apiGroups: [''],
        resources: ['configmaps'],
        resourceNames: ['naat-node-worker-1', 'naat-node-worker-2'],
        verbs: ['get', 'watch'],
      },
    ]);
    expect(of('ClusterRoleBinding')[0]).toMatchObject({
      metadata: { name: 'naat-node' },
      roleRef: { kind: 'ClusterRole', name: 'naat-node' },
      subjects: [{ kind: 'ServiceAccount', name: 'naat-node', namespace: 'naat-system' }],
    });
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
    const pod = (of('DaemonSet')[0] as any).spec.template.spec;
    expect(pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms).toEqual([
      { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['worker-1'] }] },
      { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['worker-2'] }] },
    ]);
    expect(pod.hostNetwork).toBe(true);
    const [container] = pod.containers;
    expect(container.args).toEqual(['node', '--config-map', 'naat-system/naat-node-$(NODE_NAME)', '--report']);
    expect(container.env).toContainEqual({
      name: 'NODE_NAME',
      valueFrom: { fieldRef: { fieldPath: 'spec.nodeName' } },
    });
    expect(container.securityContext.capabilities).toEqual({ drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] });
    // The node's src_valid_mark, for replies from the tunnels under strict reverse-path filtering.
    expect(pod.initContainers.map((c: { args: string[] }) => c.args)).toEqual([['sysctls']]);
    expect(pod.initContainers[0].securityContext.privileged).toBe(true);
    expect(container.env).toContainEqual({ name: 'NAAT_LOG_LEVEL', value: 'info' });
    const debug = desiredNodeObjects(configs, { ...settings, logLevel: 'debug' }, 'naat-system');
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
    const [debugContainer] = (debug.find((o) => o.kind === 'DaemonSet') as any).spec.template.spec.containers;
    expect(debugContainer.env).toContainEqual({ name: 'NAAT_LOG_LEVEL', value: 'debug' });
    // Added before removed: the ServiceAccount and configs come before the Role that names them and the agents.
    expect(objects.map((o) => o.kind)).toEqual([
      'ServiceAccount',
      'Role',
      'RoleBinding',
      'ClusterRoleBinding',
      'ConfigMap',
      'ConfigMap',
      'DaemonSet',
    ]);
  });
});
