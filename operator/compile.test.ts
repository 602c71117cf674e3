import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { validate, type EgressGateway, type EgressPolicy, type Kind, type Uplink } from '../crds/index.ts';
import { parseGatewayConfig } from '../contracts/gateway/index.ts';
import {
  compileGateway,
  sidecarContainerName,
  type Compiled,
  type NodeFacts,
  type PodFacts,
  type Snapshot,
} from './compile.ts';
import type { Labels } from './selector.ts';

const samples = join(import.meta.dirname, '..', 'crds', 'samples');

/** The samples as the apiserver would store them: defaulted by the schema. */
async function load(file: string) {
  const docs = parseAllDocuments(await readFile(join(samples, file), 'utf8')).map((d) => d.toJS());
  const of = <K extends Kind>(kind: K) =>
    docs
      .filter((d) => d.kind === kind)
      // Applied with `kubectl apply -n shop`, as the samples say.
      .map((d) => (kind === 'EgressPolicy' ? { ...d, metadata: { namespace: 'shop', ...d.metadata } } : d))
      .map((d) => {
        const result = validate(kind, d);
        if (!result.ok) throw new Error(result.errors.join('; '));
        return result.value;
      });
  return { uplinks: of('Uplink'), gateways: of('EgressGateway'), policies: of('EgressPolicy') };
}

const pod = (
  namespace: string,
  name: string,
  ips: string[],
  labels: Record<string, string> = {},
  sidecar = true,
): PodFacts => ({
  namespace,
  name,
  labels,
  ips,
  containers: sidecar ? ['app', sidecarContainerName] : ['app'],
});

async function snapshot(extra: Partial<Snapshot> = {}): Promise<Snapshot> {
  const office = await load('two-isps-balanced.yaml');
  const policies = [
    ...(await load('deny-application.yaml')).policies,
    ...(await load('route-application-via-uplink.yaml')).policies,
  ];
  return {
    gateway: office.gateways[0] as EgressGateway,
    uplinks: office.uplinks as Uplink[],
    policies: policies as EgressPolicy[],
    pods: [
      pod('shop', 'web-1', ['10.244.1.10', 'fd00::10'], { app: 'web' }),
      pod('shop', 'backup-1', ['10.244.1.11'], { app: 'backup' }, false),
      pod('other', 'db-1', ['10.244.2.10'], { app: 'db' }),
      { ...pod('shop', 'done', ['10.244.1.12']), phase: 'Succeeded' },
      pod('shop', 'pending', []),
    ],
    namespaces: new Map<string, Labels>([
      ['shop', { egress: 'office' }],
      ['other', {}],
    ]),
    nodes: [
      { name: 'gw-1', labels: { 'naat.dev/gateway': 'true' } },
      { name: 'gw-2', labels: { 'naat.dev/gateway': 'true' } },
      { name: 'worker', labels: {} },
    ],
    bypass: ['10.96.0.0/12'],
    ...extra,
  };
}

describe('compileGateway', () => {
  it("carries the operator's uplink mark bits into the config, which the dataplane accepts", async () => {
    const compiled = compileGateway(await snapshot({ marks: { uplinks: 0x00ff0000 } }));
    expect(compiled.config.marks).toEqual({ uplinks: 0x00ff0000 });
    expect(parseGatewayConfig(compiled.config).marks).toEqual({ uplinks: 0x00ff0000 });
    expect(compileGateway(await snapshot()).config.marks).toBeUndefined();
  });

  it("tells the agents which nodes are the gateway's: its nodeSelector and the nodes excluded from it", async () => {
    const compiled = compileGateway(await snapshot({ excludedNodes: ['gw-2', 'worker'] }));
    expect(compiled.nodes).toEqual(['gw-1']);
    // Only nodes nodeSelector matches are excluded from it.
    expect(compiled.config.placement).toEqual({
      nodeSelector: { 'naat.dev/gateway': 'true' },
      excludedNodes: ['gw-2'],
    });
    expect(parseGatewayConfig(compiled.config).placement).toEqual(compiled.config.placement);
  });

  it('compiles the samples into a config the dataplane accepts', async () => {
    const compiled = compileGateway(await snapshot());
    expect(() => parseGatewayConfig(compiled.config)).not.toThrow();
    expect(compiled.nodes).toEqual(['gw-1', 'gw-2']);
    expect(compiled.config.uplinks.map((u) => u.name)).toEqual(['isp-a', 'isp-b']);
    // Served: running pods with addresses in namespaces labelled egress=office.
    expect(compiled.servedPods).toBe(2);
    expect(compiled.config.sources).toEqual(['10.244.1.11', '10.244.1.10', 'fd00::10']);
    expect(compiled.config.association?.sidecarSources).toEqual(['10.244.1.10', 'fd00::10']);
    // Every served pod by address, sidecar or not, so that its flows are attributed to it.
    expect(compiled.config.pods).toEqual([
      { namespace: 'shop', name: 'backup-1', addresses: ['10.244.1.11'] },
      { namespace: 'shop', name: 'web-1', addresses: ['10.244.1.10', 'fd00::10'] },
    ]);
    expect(compiled.config.bypass).toEqual(['10.96.0.0/12']);
    expect(compiled.config.association?.strictSources).toEqual([]);
  });

  it("counts a Node-driven pod as associated, and gives its node agent the pod's uid and containers", async () => {
    const base = await snapshot();
    const containers = [{ id: 'c'.repeat(64), name: 'app' }];
    const pods = base.pods.map((p) =>
      p.name === 'backup-1' ? { ...p, node: 'worker', nodeAssociation: { uid: 'uid-backup', containers } } : p,
    );
    const compiled = compileGateway({
      ...base,
      pods,
      nodes: base.nodes.map((n) => ({ ...n, addresses: [n.name === 'worker' ? '192.0.2.9' : '192.0.2.1'] })),
      steering: { tunnel: { vni: 7, port: 4789 }, markMask: 0xe0 },
    });
    expect(compiled.config.association?.sidecarSources).toEqual(['10.244.1.11', '10.244.1.10', 'fd00::10']);
    expect(compiled.steering?.sources).toEqual([
      {
        node: 'worker',
        addresses: ['192.0.2.9'],
        pods: [
          {
            namespace: 'shop',
            name: 'backup-1',
            addresses: ['10.244.1.11'],
            association: { uid: 'uid-backup', containers },
          },
        ],
      },
    ]);
  });

  it("gives the gateway agents the uid and containers of the Node-driven pods of the gateway's nodes, and of no other", async () => {
    const base = await snapshot();
    const containers = [{ id: 'c'.repeat(64), name: 'app' }];
    const backupUid = '0b5e2d4c-0000-4000-8000-00000000000a';
    const pods = base.pods.map((p) =>
      p.name === 'backup-1'
        ? { ...p, node: 'gw-1', nodeAssociation: { uid: backupUid, containers } }
        : p.name === 'web-1'
          ? { ...p, node: 'worker', nodeAssociation: { uid: '0b5e2d4c-0000-4000-8000-00000000000b', containers: [] } }
          : p,
    );
    const compiled = compileGateway({ ...base, pods });
    expect(compiled.config.pods).toEqual([
      {
        namespace: 'shop',
        name: 'backup-1',
        addresses: ['10.244.1.11'],
        node: 'gw-1',
        association: { uid: backupUid, containers },
      },
      // Away: its node agent drives it, from its NodeConfig.
      { namespace: 'shop', name: 'web-1', addresses: ['10.244.1.10', 'fd00::10'], node: 'worker' },
    ]);
    expect(parseGatewayConfig(compiled.config).pods[0]!.association).toEqual({ uid: backupUid, containers });
    // A node excluded from the gateway (another gateway holds it) runs no agent of this gateway.
    const excluded = compileGateway({ ...base, pods, excludedNodes: ['gw-1'] });
    expect(excluded.config.pods[0]).not.toHaveProperty('association');
    expect(excluded.away.find((p) => p.name === 'backup-1')?.association).toEqual({ uid: backupUid, containers });
  });

  it('gives each away pod one failover address per family, the same on the gateway and in its node config', async () => {
    const base = await snapshot();
    const gateway = structuredClone(base.gateway);
    gateway.spec.failover = {
      addresses: [
        { address: '203.0.113.10', uplink: 'isp-a' },
        { address: '203.0.113.11', uplink: 'isp-a' },
        { address: '2001:DB8::a', uplink: 'isp-b' },
        { address: '198.51.100.9', uplink: 'gone' },
      ],
      leaseDurationMilliseconds: 600,
      failback: false,
      failbackDelaySeconds: 30,
      drainNodes: ['gw-2'],
    };
    const nodes: NodeFacts[] = [
      { name: 'gw-1', labels: { 'naat.dev/gateway': 'true' }, addresses: ['192.0.2.1'] },
      { name: 'gw-2', labels: { 'naat.dev/gateway': 'true' }, addresses: ['192.0.2.2'] },
      { name: 'gw-3', labels: { 'naat.dev/gateway': 'true' }, addresses: ['192.0.2.3'], unschedulable: true },
      { name: 'worker', labels: {}, addresses: ['192.0.2.9'] },
    ];
    const pods = base.pods.map((p) => ({ ...p, node: 'worker' }));
    const compiled = compileGateway({
      ...base,
      gateway,
      nodes,
      pods,
      steering: { tunnel: { vni: 7, port: 4789 }, markMask: 0xe0 },
    });
    const config = parseGatewayConfig(compiled.config);
    expect(config.failover).toEqual({
      addresses: [
        { address: '203.0.113.10', uplink: 'isp-a' },
        { address: '203.0.113.11', uplink: 'isp-a' },
        { address: '2001:db8::a', uplink: 'isp-b' },
      ],
      leaseDurationMs: 600,
      failback: false,
      failbackDelaySeconds: 30,
      nodes: ['gw-1', 'gw-2', 'gw-3'].map((node, i) => ({ node, addresses: [`192.0.2.${i + 1}`] })),
      draining: ['gw-2', 'gw-3'],
    });
    // An address on an uplink the gateway does not use is dropped and named.
    expect(compiled.missingUplinks).toContain('gone');
    const web = config.pods.find((p) => p.name === 'web-1')!;
    expect(web.egress).toHaveLength(2);
    expect(web.egress).toContain('2001:db8::a');
    expect(['203.0.113.10', '203.0.113.11']).toContain(web.egress![0]);
    expect(config.pods.find((p) => p.name === 'backup-1')!.egress).toHaveLength(1);
    expect(compiled.steering?.failover).toEqual({ addresses: ['203.0.113.10', '203.0.113.11', '2001:db8::a'] });
    expect(compiled.steering?.sources[0]!.pods.find((p) => p.name === 'web-1')!.egress).toEqual(web.egress);
    // Pods spread over the addresses of their family.
    const spread = {
      ...base,
      gateway,
      nodes,
      pods: Array.from({ length: 40 }, (_, i) => ({ ...pod('shop', `p-${i}`, [`10.244.3.${i}`]), node: 'worker' })),
      steering: { tunnel: { vni: 7, port: 4789 }, markMask: 0xe0 },
    };
    const used = (c: Compiled) => new Set(c.config.pods.map((p) => p.egress![0]));
    expect(used(compileGateway(spread))).toEqual(new Set(['203.0.113.10', '203.0.113.11']));
    // An address taken out moves its pods in the next compile of the very same pods.
    const fewer = structuredClone(gateway);
    fewer.spec.failover!.addresses = fewer.spec.failover!.addresses.filter((a) => a.address !== '203.0.113.11');
    expect(used(compileGateway({ ...spread, gateway: fewer }))).toEqual(new Set(['203.0.113.10']));
  });

  it('lists the pods in strict mode that run the sidecar; a strict annotation alone is not enough', async () => {
    const base = await snapshot();
    const compiled = compileGateway({
      ...base,
      pods: base.pods.map((p) => (p.name === 'web-1' || p.name === 'backup-1' ? { ...p, strict: true } : p)),
    });
    expect(compiled.config.association?.strictSources).toEqual(['10.244.1.10', 'fd00::10']);
  });

  it('orders rules by policy priority, then policy name, then rule order, each with its pods', async () => {
    const s = await snapshot();
    const compiled = compileGateway(s);
    const order = compiled.config.rules.map((r) => `${r.priority} ${r.policy}#${r.rule} ${r.sources.join(',')}`);
    const expected = [...s.policies]
      .sort((a, b) => a.spec.priority - b.spec.priority || a.metadata.name.localeCompare(b.metadata.name))
      .flatMap((p) =>
        p.spec.rules.map((r) => `${p.spec.priority} ${p.metadata.namespace}/${p.metadata.name}#${r.name}`),
      );
    expect(order.map((line) => line.split(' ').slice(0, 2).join(' '))).toEqual(expected);
    expect(compiled.config.rules.find((r) => r.policy === 'shop/no-tunnels')?.sources).toEqual([
      '10.244.1.10',
      'fd00::10',
    ]);
    for (const policy of s.policies) {
      expect(
        compiled.policies.get(`${policy.metadata.namespace}/${policy.metadata.name}`)?.matchedPods,
      ).toBeGreaterThan(0);
    }
  });

  it('gives the same bytes and hash for the same snapshot, whatever the order of its lists', async () => {
    const s = await snapshot();
    const a = compileGateway(s);
    const b = compileGateway({
      ...s,
      uplinks: [...s.uplinks].reverse(),
      policies: [...s.policies].reverse(),
      pods: [...s.pods].reverse(),
    });
    expect(JSON.stringify(b.config)).toBe(JSON.stringify(a.config));
    const changed = compileGateway({ ...s, pods: [...s.pods, pod('shop', 'web-2', ['10.244.1.20'], { app: 'web' })] });
    expect(changed.config.hash).not.toBe(a.config.hash);
  });

  it('names uplinks that do not exist, and denies flows whose only allowed uplinks are missing', async () => {
    const s = await snapshot();
    const policy = structuredClone(s.policies[0]!);
    policy.metadata.name = 'ghost';
    policy.spec.rules = [{ name: 'via-ghost', action: 'Allow', uplinks: { allowed: ['ghost'] } }];
    const compiled = compileGateway({ ...s, policies: [...s.policies, policy] });
    expect(compiled.policies.get(`${policy.metadata.namespace}/ghost`)?.missingUplinks).toEqual(['ghost']);
    expect(compiled.config.rules.find((r) => r.rule === 'via-ghost')?.action).toBe('Deny');
    expect(() => parseGatewayConfig(compiled.config)).not.toThrow();
  });

  it('reports two policies of equal priority that overlap and disagree, on both', async () => {
    const s = await snapshot();
    const base = s.policies[0]!;
    const allow = structuredClone(base);
    allow.metadata.name = 'a-allow';
    allow.spec.priority = 5;
    allow.spec.rules = [
      {
        name: 'web',
        action: 'Allow',
        destinations: [{ cidr: '192.0.2.0/24', protocol: 'TCP', ports: [{ port: 443 }] }],
      },
    ];
    const deny = structuredClone(allow);
    deny.metadata.name = 'b-deny';
    deny.spec.rules = [{ name: 'no-web', action: 'Deny', destinations: [{ cidr: '192.0.2.128/25', protocol: 'Any' }] }];
    const apart = structuredClone(deny);
    apart.metadata.name = 'c-apart';
    apart.spec.rules = [
      { name: 'other-net', action: 'Deny', destinations: [{ cidr: '198.51.100.0/24', protocol: 'Any' }] },
    ];
    const compiled = compileGateway({ ...s, policies: [allow, deny, apart] });
    const ns = base.metadata.namespace;
    expect(compiled.policies.get(`${ns}/a-allow`)?.conflicts).toEqual([
      `rule web overlaps ${ns}/b-deny#no-web, which it shadows`,
    ]);
    expect(compiled.policies.get(`${ns}/b-deny`)?.conflicts).toEqual([`rule no-web is shadowed by ${ns}/a-allow#web`]);
    expect(compiled.policies.get(`${ns}/c-apart`)?.conflicts).toEqual([]);
  });

  it('reports executable globs that one executable matches both of as a conflict', async () => {
    const s = await snapshot();
    const base = s.policies[0]!;
    const allow = structuredClone(base);
    allow.metadata.name = 'a-tools';
    allow.spec.priority = 5;
    allow.spec.rules = [{ name: 'tools', action: 'Allow', applications: [{ executable: '/usr/bin/*' }] }];
    const deny = structuredClone(allow);
    deny.metadata.name = 'b-no-curl';
    deny.spec.rules = [{ name: 'no-curl', action: 'Deny', applications: [{ executable: '/usr/bin/curl' }] }];
    const apart = structuredClone(deny);
    apart.metadata.name = 'c-opt';
    apart.spec.rules = [{ name: 'opt', action: 'Deny', applications: [{ executable: '/usr/bin/*/curl' }] }];
    const compiled = compileGateway({ ...s, policies: [allow, deny, apart] });
    const ns = base.metadata.namespace;
    expect(compiled.policies.get(`${ns}/a-tools`)?.conflicts).toEqual([
      `rule tools overlaps ${ns}/b-no-curl#no-curl, which it shadows`,
    ]);
    expect(compiled.policies.get(`${ns}/b-no-curl`)?.conflicts).toEqual([
      `rule no-curl is shadowed by ${ns}/a-tools#tools`,
    ]);
    expect(compiled.policies.get(`${ns}/c-opt`)?.conflicts).toEqual([]);
  });

  it('leaves out uplinks and rules that apply to nothing, and limits an uplink to its nodes', async () => {
    const s = await snapshot();
    const isp = structuredClone(s.uplinks[1]!);
    isp.spec.nodeSelector = { 'kubernetes.io/hostname': 'gw-2' };
    const nodes = s.nodes.map((n) => ({ ...n, labels: { ...n.labels, 'kubernetes.io/hostname': n.name } }));
    const compiled = compileGateway({ ...s, nodes, uplinks: [s.uplinks[0]!, isp], pods: [] });
    expect(compiled.config.uplinks.find((u) => u.name === 'isp-b')?.nodes).toEqual(['gw-2']);
    expect(compiled.config.uplinks.find((u) => u.name === 'isp-a')?.nodes).toBeUndefined();
    expect(compiled.config.rules).toEqual([]);
    expect(compiled.config.sources).toEqual([]);
  });
});
