// What the operator makes for a gateway, against the real apiserver: the chart's operator
// configuration is what the operator reads, the compiled config and objects of a sample gateway
// are accepted by server-side apply, the dataplane pods land on the gateway's nodes only, the
// ConfigMaps (index and slices) hold a config the dataplane accepts, and deleting the gateway takes it all away.
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { apiVersion, type EgressGateway, type Uplink } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { gatewaySliceName, parseGatewayConfig } from '../../contracts/gateway/index.ts';
import { compileGateway } from '../../operator/compile.ts';
import { desiredGatewayObjects, labelsOf, objectName, ownedByConfig } from '../../operator/desired.ts';
import { parseSettings } from '../../operator/settings.ts';
import { kubectl } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { storedGatewayConfig } from '../cluster/operator.ts';
import { testNodes } from './global-setup.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
const namespace = `naat-objects-${process.pid}`;
const gatewayName = `objects-${process.pid}`;
let dataplaneRole: string | undefined;

interface Manifest {
  kind: string;
  metadata: { name: string };
  data?: Record<string, string>;
}

/** The operator's settings as the chart writes them; the chart's dataplane ClusterRole is applied. */
async function chartSettings() {
  const out = await helm(await buildHelm(), [
    'template',
    'naat',
    join(root, 'charts', 'naat'),
    '--namespace',
    namespace,
  ]);
  const manifests = parseAllDocuments(out).map((d) => d.toJS() as Manifest | null);
  const configMap = manifests.find((m) => m?.kind === 'ConfigMap' && m.metadata.name.endsWith('-operator'))!;
  const settings = parseSettings(JSON.parse(configMap.data!['config.json']!));
  const role = manifests.find(
    (m) => m?.kind === 'ClusterRole' && m.metadata.name === settings.dataplane.clusterRoleName,
  );
  await k(['apply', '--server-side', '-f', '-'], JSON.stringify(role));
  dataplaneRole = settings.dataplane.clusterRoleName;
  return settings;
}

beforeAll(async () => {
  await installCrds(process.env.KUBECONFIG!);
  await k(['create', 'namespace', namespace]);
}, 600_000);

afterAll(async () => {
  await k(['delete', 'egressgateway', gatewayName, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', `${gatewayName}-isp`, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'namespace', namespace, '--wait=false']);
  if (dataplaneRole) await k(['delete', 'clusterrole', dataplaneRole, '--ignore-not-found']);
});

test('a gateway becomes a ServiceAccount, binding, ConfigMap and DaemonSet on its nodes, removed with it', async () => {
  const settings = await chartSettings();
  const uplink = {
    apiVersion,
    kind: 'Uplink',
    metadata: { name: `${gatewayName}-isp` },
    spec: { interface: 'eth1', nextHop: { ipv4: '192.0.2.1' }, snat: {} },
  };
  const gateway = {
    apiVersion,
    kind: 'EgressGateway',
    metadata: { name: gatewayName },
    spec: {
      nodeSelector: { 'naat.dev/gateway': 'true' },
      uplinks: { names: [uplink.metadata.name] },
      namespaceSelector: {},
    },
  };
  await k(['apply', '--server-side', '-f', '-'], JSON.stringify(uplink));
  await k(['apply', '--server-side', '-f', '-'], JSON.stringify(gateway));
  // As the operator's caches hold them: defaulted and with their uid.
  const stored = JSON.parse(await k(['get', 'egressgateway', gatewayName, '-o', 'json'])) as EgressGateway;
  const storedUplink = JSON.parse(await k(['get', 'uplink', uplink.metadata.name, '-o', 'json'])) as Uplink;
  const compiled = compileGateway({
    gateway: stored,
    uplinks: [storedUplink],
    policies: [],
    pods: [],
    namespaces: new Map(),
    nodes: testNodes,
    bypass: ['10.96.0.0/12'],
  });
  expect(compiled.nodes).toEqual(['gateway-a', 'gateway-b']);

  // As the operator applies them: the ConfigMap first, whose uid then also owns the DaemonSet.
  let configUid: string | undefined;
  for (const object of desiredGatewayObjects(stored, compiled, settings, namespace)) {
    const owned = object.kind === 'DaemonSet' && configUid ? ownedByConfig(object, configUid) : object;
    const applied = JSON.parse(
      await k(
        ['apply', '--server-side', '--field-manager=naat-operator', '-o', 'json', '-f', '-'],
        JSON.stringify(owned),
      ),
    ) as { metadata: { uid: string } };
    if (object.kind === 'ConfigMap' && object.metadata.name === objectName(gatewayName))
      configUid = applied.metadata.uid;
  }
  const selector = Object.entries(labelsOf(gatewayName))
    .map(([key, value]) => `${key}=${value}`)
    .join(',');
  const podNodes = async () => {
    const pods = JSON.parse(await k(['get', 'pods', '-n', namespace, '-l', selector, '-o', 'json'])) as {
      items: Array<{ spec: { nodeName?: string }; status: { phase?: string } }>;
    };
    return pods.items
      .filter((p) => p.status.phase === 'Running')
      .map((p) => p.spec.nodeName)
      .sort();
  };
  let nodes: (string | undefined)[] = [];
  for (let i = 0; i < 150 && nodes.length < 2; i++) {
    nodes = await podNodes();
    if (nodes.length < 2) await new Promise((r) => setTimeout(r, 200));
  }
  expect(nodes).toEqual(['gateway-a', 'gateway-b']);

  // The index and its slices, which the agents assemble, give back the compiled config.
  expect(parseGatewayConfig(await storedGatewayConfig(k, namespace, gatewayName)).hash).toBe(compiled.config.hash);
  // The garbage collector takes the DaemonSet, and so the agents, only once the ConfigMap is gone.
  const daemonSet = JSON.parse(await k(['get', 'daemonset', objectName(gatewayName), '-n', namespace, '-o', 'json']));
  expect(daemonSet.metadata.ownerReferences.map((o: { kind: string; uid: string }) => [o.kind, o.uid])).toEqual([
    ['EgressGateway', stored.metadata.uid],
    ['ConfigMap', configUid],
  ]);
  const binding = JSON.parse(await k(['get', 'clusterrolebinding', objectName(gatewayName), '-o', 'json']));
  expect(binding.roleRef.name).toBe(settings.dataplane.clusterRoleName);
  // The dataplane may read its own config and nothing else there.
  const as = `--as=system:serviceaccount:${namespace}:${objectName(gatewayName)}`;
  const can = (args: string[]) =>
    k(['auth', 'can-i', ...args, '-n', namespace, as]).then(
      () => true,
      () => false,
    );
  expect(await can(['watch', `configmaps/${objectName(gatewayName)}`])).toBe(true);
  expect(await can(['watch', `configmaps/${gatewaySliceName(gatewayName, 0)}`])).toBe(true);
  expect(await can(['get', 'configmaps/other'])).toBe(false);
  expect(await can(['list', 'configmaps'])).toBe(false);
  expect(await can(['patch', 'uplinks.naat.dev/any', '--subresource=status'])).toBe(true);

  await k(['delete', 'egressgateway', gatewayName, '--wait=true']);
  for (let i = 0; i < 150; i++) {
    const left = await k([
      'get',
      'daemonset,configmap,serviceaccount,role,rolebinding',
      '-n',
      namespace,
      '-l',
      selector,
      '-o',
      'name',
    ]);
    const binding = await k(['get', 'clusterrolebinding', '-l', selector, '-o', 'name']);
    if (!left.trim() && !binding.trim()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error('the objects of the deleted gateway were not garbage-collected');
});
