import {
  assembleConfig,
  configIndexKey,
  configSliceKey,
  configSliceLabel,
  gatewayLabels,
  sliceConfig,
  type GatewayConfig,
} from '../contracts/gateway/index.ts';
import { validate, type EgressGateway } from '../crds/index.ts';
import { operatorSettings } from '../test/cluster/operator.ts';
import type { Compiled } from './compile.ts';
import {
  agentAttributionRecords,
  agentHeapMiB,
  agentNodeOptions,
  desiredGatewayObjects,
  type ApiObject,
  desiredNodeObjects,
} from './desired.ts';
import { parseSettings } from './settings.ts';

const settings = parseSettings(operatorSettings('naat', { metrics: 8080, health: 8081, webhook: 9443 }));

function gateway(spec: Record<string, unknown> = {}): EgressGateway {
  const result = validate('EgressGateway', {
    apiVersion: 'naat.dev/v1alpha1',
    kind: 'EgressGateway',
    metadata: { name: 'egress', uid: 'uid-1' },
    spec: { nodeSelector: { role: 'gateway' }, uplinks: { names: ['isp'] }, namespaceSelector: {}, ...spec },
  });
  if (!result.ok) throw new Error(result.errors.join('; '));
  return result.value as EgressGateway;
}

/** Only the config's text goes into the objects, as an index and slices. */
const compiled = {
  config: { gateway: 'egress', hash: 'sha256:0', timeouts: { icmpSeconds: 45 }, sources: [], pods: [], rules: [] },
} as unknown as Compiled;

/** The gateway agent's pod as the DaemonSet runs it. */
function podSpec(g: EgressGateway, s = settings, c = compiled) {
  const daemonSet = desiredGatewayObjects(g, c, s, 'naat-system').find((o) => o.kind === 'DaemonSet');
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
  return (daemonSet as any).spec.template.spec;
}

function container(g: EgressGateway) {
  return podSpec(g).containers[0] as { args: string[]; ports: unknown[] };
}

describe('desiredGatewayObjects', () => {
  it('nodes another gateway holds are left out one requirement each: the apiserver takes one name per requirement', () => {
    const excluded = { ...compiled, excludedNodes: ['gw-2', 'gw-3'] } as unknown as Compiled;
    const daemonSet = desiredGatewayObjects(gateway(), excluded, settings, 'naat-system').find(
      (o) => o.kind === 'DaemonSet',
    );
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
    const pod = (daemonSet as any).spec.template.spec;
    expect(pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution).toEqual({
      nodeSelectorTerms: [
        {
          matchFields: [
            { key: 'metadata.name', operator: 'NotIn', values: ['gw-2'] },
            { key: 'metadata.name', operator: 'NotIn', values: ['gw-3'] },
          ],
        },
      ],
    });
  });

  it("listens on every address of both families at the chart's ports, so nodes of an IPv6-only cluster reach it", () => {
    const { args, ports } = container(gateway({ association: { port: 7750 } }));
    expect(args).toEqual([
      'run',
      '--config-map',
      'naat-system/naat-gw-egress',
      '--state-dir',
      '/run/naat',
      '--listen',
      ':9091',
      '--metrics-listen',
      ':9090',
      // Flow data on the node's loopback alone, for the CLI's port-forward; no container port.
      '--local-listen',
      '127.0.0.1:9095',
      '--report',
      '--attribution-records',
      '100000',
    ]);
    // The association server follows the config's port, on both families (the agent's default).
    expect(ports).toEqual([
      { name: 'health', containerPort: 9091 },
      { name: 'metrics', containerPort: 9090 },
      { name: 'naa', containerPort: 7750 },
    ]);
  });

  it("bounds the gateway agent's heap to what its attribution log needs, and the node agent's not", () => {
    const env = (pod: { containers: Array<{ env: Array<{ name: string; value?: string }> }> }) =>
      pod.containers[0]!.env.find((e) => e.name === 'NODE_OPTIONS')?.value;
    const options = env(podSpec(gateway()));
    expect(options).toBe(agentNodeOptions);
    const bound = Number(/^--max-old-space-size=(\d+)$/.exec(options ?? '')?.[1]);
    expect(bound).toBe(agentHeapMiB(agentAttributionRecords));
    // A log twice as long needs a higher bound, and the agent's heap fits in its memory limit.
    expect(agentHeapMiB(2 * agentAttributionRecords)).toBeGreaterThan(bound);
    expect(bound).toBeLessThan(512);
    const nodeAgent = desiredNodeObjects(
      [{ version: 1, node: 'worker-a', hash: 'sha256:0', markMask: 0xe0, gateways: [] }],
      settings,
      'naat-system',
    ).find((o) => o.kind === 'DaemonSet');
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
    expect(env((nodeAgent as any).spec.template.spec)).toBeUndefined();
  });

  it("writes the node's kernel settings from a privileged init container, and runs the agent without privilege", () => {
    const spec = podSpec(gateway());
    expect(spec.initContainers).toEqual([
      {
        name: 'sysctls',
        image: settings.dataplane.image,
        imagePullPolicy: settings.dataplane.pullPolicy,
        // src_valid_mark for every device, and the gateway's compiled ICMP timeout.
        args: ['sysctls', '--icmp-seconds', '45'],
        resources: settings.dataplane.resources,
        securityContext: { privileged: true, runAsUser: 0, readOnlyRootFilesystem: true },
      },
    ]);
    expect(spec.containers[0].securityContext).toEqual({
      runAsUser: 0,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] },
    });
  });

  it("drives the Node-driven pods of the gateway's nodes with the host's processes and the capabilities to read their sockets, only while there are some", () => {
    const withPod = (association?: object) =>
      ({
        config: {
          ...compiled.config,
          pods: [
            {
              namespace: 'shop',
              name: 'web',
              addresses: ['10.0.0.1'],
              node: 'gw-1',
              ...(association && { association }),
            },
          ],
        },
      }) as unknown as Compiled;
    const driving = podSpec(gateway(), settings, withPod({ uid: 'uid-web', containers: [] }));
    expect(driving.hostPID).toBe(true);
    expect(driving.containers[0].args).toContain('--associate-pods');
    expect(driving.containers[0].securityContext.capabilities).toEqual({
      drop: ['ALL'],
      add: ['NET_ADMIN', 'NET_RAW', 'DAC_READ_SEARCH', 'SYS_PTRACE'],
    });
    // No pod's token: only the state folder it had already.
    expect(driving.containers[0].volumeMounts).toEqual([{ name: 'state', mountPath: '/run/naat' }]);

    const sidecarsOnly = podSpec(gateway(), settings, withPod());
    expect(sidecarsOnly.hostPID).toBeUndefined();
    expect(sidecarsOnly.containers[0].args).not.toContain('--associate-pods');
    expect(sidecarsOnly.containers[0].securityContext.capabilities.add).toEqual(['NET_ADMIN', 'NET_RAW']);
  });

  it('leaves the init container out when the chart says the nodes have their settings already', () => {
    const without = { ...settings, dataplane: { ...settings.dataplane, setNodeSysctls: false } };
    expect(podSpec(gateway(), without).initContainers).toBeUndefined();
  });

  it('runs the agents at the configured priority and pod securityContext', () => {
    expect(podSpec(gateway()).priorityClassName).toBe('system-node-critical');
    expect(podSpec(gateway()).securityContext).toBeUndefined();
    const chosen = {
      ...settings,
      dataplane: {
        ...settings.dataplane,
        priorityClassName: '',
        podSecurityContext: { seLinuxOptions: { type: 'spc_t' } },
      },
    };
    expect(podSpec(gateway(), chosen).priorityClassName).toBeUndefined();
    expect(podSpec(gateway(), chosen).securityContext).toEqual({ seLinuxOptions: { type: 'spc_t' } });
  });

  it("gives both roles their node's identity: a certificate asked for with the pod's token, kept in memory", () => {
    const withCa = { ...settings, dataplane: { ...settings.dataplane, caConfigMapName: 'naat-ca' } };
    const nodeAgent = desiredNodeObjects(
      [{ version: 1, node: 'worker-a', hash: 'sha256:0', markMask: 0xe0, gateways: [] }],
      withCa,
      'naat-system',
    ).find((o) => o.kind === 'DaemonSet');
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
    const pods = [podSpec(gateway(), withCa), (nodeAgent as any).spec.template.spec];
    for (const pod of pods) {
      const { args, volumeMounts } = pod.containers[0];
      expect(args.slice(-4)).toEqual(['--tls-dir', '/etc/naat/tls', '--csr', '/etc/naat/ca/ca.crt']);
      expect(volumeMounts).toEqual(
        expect.arrayContaining([
          { name: 'tls', mountPath: '/etc/naat/tls' },
          { name: 'ca', mountPath: '/etc/naat/ca', readOnly: true },
        ]),
      );
      expect(pod.volumes).toEqual(
        expect.arrayContaining([
          { name: 'tls', emptyDir: { medium: 'Memory', sizeLimit: '1Mi' } },
          { name: 'ca', configMap: { name: 'naat-ca' } },
        ]),
      );
      // No Secret: the key never leaves the agent's pod.
      expect(JSON.stringify(pod.volumes)).not.toContain('secret');
    }
    // The gateway agent serves flow data with it.
    expect(pods[0].containers[0].args).toEqual(expect.arrayContaining(['--secure-listen', ':9094']));
    expect(pods[0].containers[0].ports).toContainEqual({ name: 'flows', containerPort: 9094 });
  });

  it('stores the config as an index and slices, each slice granted to the agents before the index names it', () => {
    const pods = Array.from({ length: 400 }, (_, i) => ({
      namespace: 'shop',
      name: `pod-${String(i).padStart(3, '0')}`,
      addresses: [`10.1.${i >> 8}.${i & 255}`],
    }));
    const config = { ...compiled.config, pods, sources: pods.flatMap((p) => p.addresses) };
    const sliced = sliceConfig(config as unknown as GatewayConfig, 8 * 1024);
    const objects = desiredGatewayObjects(
      gateway(),
      { config } as unknown as Compiled,
      settings,
      'naat-system',
      sliced,
      ['naat-gws-9-egress'],
    );
    const order = objects.map((o) => `${o.kind} ${o.metadata.name}`);
    const slices = [...sliced.slices.keys()];
    expect(slices.length).toBeGreaterThan(2);
    expect(order).toEqual([
      'ServiceAccount naat-gw-egress',
      'ClusterRoleBinding naat-gw-egress',
      'Role naat-gw-egress',
      'RoleBinding naat-gw-egress',
      ...slices.map((name) => `ConfigMap ${name}`),
      'ConfigMap naat-gw-egress',
      'DaemonSet naat-gw-egress',
    ]);
    const role = objects.find((o) => o.kind === 'Role')! as unknown as { rules: Array<{ resourceNames: string[] }> };
    // The slices the index being replaced still names, until they are deleted.
    expect(role.rules[0]!.resourceNames).toEqual(['naat-gw-egress', ...slices, 'naat-gws-9-egress']);
    const data = (o: ApiObject) => o.data as Record<string, string>;
    const index = JSON.parse(
      data(objects.find((o) => o.metadata.name === 'naat-gw-egress' && o.kind === 'ConfigMap')!)[configIndexKey]!,
    );
    const texts = new Map(
      objects
        .filter((o) => o.metadata.labels?.[configSliceLabel])
        .map((o) => [o.metadata.name, data(o)[configSliceKey]!]),
    );
    expect(assembleConfig(index, texts)).toEqual(config);
    expect(objects.find((o) => o.metadata.name === slices[1])!.metadata.labels).toEqual({
      ...gatewayLabels('egress'),
      [configSliceLabel]: '1',
    });
  });

  it("lets the agents hold failover Leases only with failover addresses, renewing only their nodes'", () => {
    const rules = (config: Record<string, unknown>) =>
      desiredGatewayObjects(gateway(), { config } as unknown as Compiled, settings, 'naat-system').find(
        (o) => o.kind === 'Role',
      )!.rules;
    const configMap = {
      apiGroups: [''],
      resources: ['configmaps'],
      resourceNames: ['naat-gw-egress', 'naat-gws-0-egress'],
      verbs: ['get', 'watch'],
    };
    expect(rules(compiled.config as unknown as Record<string, unknown>)).toEqual([configMap]);
    const failover = (nodes: string[]) => ({
      ...(compiled.config as unknown as Record<string, unknown>),
      failover: {
        addresses: [{ address: '203.0.113.10', uplink: 'isp' }],
        leaseDurationMs: 600,
        failback: false,
        failbackDelaySeconds: 30,
        nodes: nodes.map((node) => ({ node, addresses: ['10.0.0.1'] })),
        draining: [],
      },
    });
    const leases = { apiGroups: ['coordination.k8s.io'], resources: ['leases'] };
    expect(rules(failover(['gw-a', 'gw-b']))).toEqual([
      configMap,
      { ...leases, verbs: ['create'] },
      { ...leases, resourceNames: ['naat-fo-egress-gw-a', 'naat-fo-egress-gw-b'], verbs: ['patch'] },
      { ...leases, verbs: ['list', 'watch'] },
    ]);
    // No node with an address: no rule naming none, which RBAC would read as every Lease.
    expect(rules(failover([]))).toEqual([
      configMap,
      { ...leases, verbs: ['create'] },
      { ...leases, verbs: ['list', 'watch'] },
    ]);
  });
});

describe('the node agent as association driver', () => {
  const nodeConfig = (association?: { uid: string; containers: [] }) => ({
    version: 1 as const,
    node: 'worker-a',
    hash: 'sha256:0',
    markMask: 0xe0,
    gateways: [
      {
        gateway: 'egress',
        tunnel: { vni: 7, port: 4789 },
        selection: 'Pod' as const,
        associationPort: 7740,
        healthPort: 7741,
        bypass: [],
        pods: [{ namespace: 'shop', name: 'web', addresses: ['10.244.1.10'], ...(association && { association }) }],
        peers: [],
      },
    ],
  });
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
  const agentPod = (config: ReturnType<typeof nodeConfig>): any =>
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a DaemonSet walked field by field
    (desiredNodeObjects([config], settings, 'naat-system').find((o) => o.kind === 'DaemonSet') as any).spec.template
      .spec;

  it("gets the host's processes and the capabilities to read their sockets only while a pod needs it, and no pod's token", () => {
    const driving = agentPod(nodeConfig({ uid: 'uid-web', containers: [] }));
    expect(driving.hostPID).toBe(true);
    const [agent] = driving.containers;
    expect(agent.args.at(-1)).toBe('--associate-pods');
    expect(agent.securityContext.capabilities).toEqual({
      drop: ['ALL'],
      add: ['NET_ADMIN', 'NET_RAW', 'DAC_READ_SEARCH', 'SYS_PTRACE'],
    });
    // Only the host folder of the strict pods' stamps, which outlive a restart of the node agent.
    expect(agent.volumeMounts).toEqual([{ name: 'stamps', mountPath: '/run/naat-node/stamps' }]);
    expect(driving.volumes).toEqual([
      { name: 'stamps', hostPath: { path: '/run/naat-node/stamps', type: 'DirectoryOrCreate' } },
    ]);

    const steeringOnly = agentPod(nodeConfig());
    expect(steeringOnly.hostPID).toBeUndefined();
    expect(steeringOnly.volumes).toBeUndefined();
    expect(steeringOnly.containers[0].args).not.toContain('--associate-pods');
    expect(steeringOnly.containers[0].securityContext.capabilities.add).toEqual(['NET_ADMIN', 'NET_RAW']);
  });

  it("adds no right in the apiserver: the node's config and its node's certificate are all it needs", () => {
    const rules = (config: ReturnType<typeof nodeConfig>) =>
      desiredNodeObjects([config], settings, 'naat-system').filter((o) => /Role/.test(o.kind));
    expect(rules(nodeConfig({ uid: 'uid-web', containers: [] }))).toEqual(rules(nodeConfig()));
  });
});
