// Flow data from real pods on a real node (test/cluster/node.ts), with naat installed by helm as a
// user would: the operator issues the gateway agents' certificate for the node, the DaemonSet
// mounts it and the agent's secure listener asks the apiserver about each caller. Pods of the
// cluster dial the node's address: without a token they are refused, with a ServiceAccount that
// lacks the chart's flow reader role too, and with it they read; the health port gives none of it.
import { join } from 'node:path';
import { apiVersion } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { startCluster, type Cluster } from '../cluster/cluster.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { buildImages, helmImageValues, imageRepository, imageTag } from '../cluster/images.ts';
import { realNode } from '../cluster/node.ts';
import { until } from './topology.ts';

const chart = join(root, 'charts/naat');
const release = 'naat';
const namespace = 'naat-system';
const gateway = 'flows';
const readers = 'flow-readers';
/** The chart's defaults: dataplane.healthPort and dataplane.flowPort. */
const healthPort = 9091;
const flowPort = 9094;
/**
 * The uplink's address, a second address of the node's link: with the node's own, the uplink's
 * source rule would route the node's replies to pods out of the uplink (see real-node.test.ts).
 */
const uplinkAddress = '172.30.250.3';

let cluster: Cluster;
const k = (args: string[], input?: string) => cluster.kubectl(args, input);
const apply = (items: object[]) => k(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items }));

/** GETs each of URLS (space-separated) and prints `status body` per line; the token when there is one. */
const client = `
const https = require('node:https'), http = require('node:http'), fs = require('node:fs');
const token = fs.existsSync('/token/token') ? fs.readFileSync('/token/token', 'utf8') : '';
const get = (url) => new Promise((resolve) => {
  const lib = url.startsWith('https:') ? https : http;
  lib.get(url, { ca: fs.readFileSync('/ca/ca.crt'), headers: token ? { authorization: 'Bearer ' + token } : {} }, (res) => {
    let body = '';
    res.on('data', (d) => (body += d)).on('end', () => resolve(res.statusCode + ' ' + body.replace(/\\s+/g, ' ').trim().slice(0, 300)));
  }).on('error', (e) => resolve('error ' + e.message));
});
(async () => { for (const url of process.env.URLS.split(' ')) console.log(await get(url)); })();
`;

/** A pod that runs `client` once as `account`, with a naat-flows token unless `account` is undefined. */
function readerPod(name: string, account: string | undefined, urls: string[]) {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace: readers },
    spec: {
      restartPolicy: 'Never',
      ...(account ? { serviceAccountName: account } : {}),
      automountServiceAccountToken: false,
      containers: [
        {
          name: 'client',
          image: `${imageRepository('dataplane')}:${imageTag}`,
          imagePullPolicy: 'Never',
          command: ['node', '-e', client],
          env: [{ name: 'URLS', value: urls.join(' ') }],
          volumeMounts: [
            { name: 'ca', mountPath: '/ca' },
            ...(account ? [{ name: 'token', mountPath: '/token' }] : []),
          ],
        },
      ],
      volumes: [
        { name: 'ca', configMap: { name: 'agents-ca' } },
        ...(account
          ? [
              {
                name: 'token',
                projected: {
                  sources: [{ serviceAccountToken: { audience: 'naat-flows', path: 'token', expirationSeconds: 600 } }],
                },
              },
            ]
          : []),
      ],
    },
  };
}

beforeAll(async () => {
  const [images, helmBinary] = await Promise.all([buildImages(), buildHelm()]);
  cluster = await startCluster({ workloads: true, realNode: true });
  await cluster.node!.importImages(Object.values(images));
  await k(['label', 'node', realNode.name, 'naat.dev/gateway=true']);
  await helm(
    helmBinary,
    [
      'install',
      release,
      chart,
      '--create-namespace',
      ...helmImageValues,
      '--wait',
      '--timeout',
      '180s',
      '-n',
      namespace,
    ],
    cluster.kubeconfig,
  );
}, 20 * 60_000);

afterAll(async () => {
  await cluster?.stop();
});

test('pods read flow data from the secure listener only with a naat-flows token and the flow reader role', async () => {
  await cluster.node!.exec('ip', ['addr', 'add', `${uplinkAddress}/${realNode.linkPrefix}`, 'dev', 'eth0']);
  await apply([
    {
      apiVersion,
      kind: 'Uplink',
      metadata: { name: gateway },
      spec: { interface: 'eth0', nextHop: { ipv4: realNode.hostAddress }, snat: { addresses: [uplinkAddress] } },
    },
    {
      apiVersion,
      kind: 'EgressGateway',
      metadata: { name: gateway },
      spec: {
        nodeSelector: { 'naat.dev/gateway': 'true' },
        uplinks: { names: [gateway] },
        namespaceSelector: { matchLabels: { egress: gateway } },
      },
    },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: readers } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'nobody', namespace: readers } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'reader', namespace: readers } },
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: 'flow-readers' },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: `${release}-flow-reader` },
      subjects: [{ kind: 'ServiceAccount', name: 'reader', namespace: readers }],
    },
  ]);
  // The agent's certificate names its node's address; callers trust the CA bundle the operator publishes.
  const ca = await until(
    'the CA bundle',
    async () => {
      const bundle = JSON.parse(await k(['get', 'configmap', `${release}-ca`, '-n', namespace, '-o', 'json']));
      return bundle.data?.['ca.crt'] as string | undefined;
    },
    120_000,
  );
  await apply([
    {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name: 'agents-ca', namespace: readers },
      data: { 'ca.crt': ca },
    },
  ]);
  const secure = `https://${realNode.address}:${flowPort}/flows`;
  const plain = `http://${realNode.address}:${healthPort}`;
  // The secure listener opens once the agent has its node's certificate from the operator's signer.
  const reader = await until(
    'the flow reader pod served',
    async () => {
      await k(['delete', 'pod', 'reader', '-n', readers, '--ignore-not-found', '--wait']);
      await apply([readerPod('reader', 'reader', [secure])]);
      await k(['wait', '--for=jsonpath={.status.phase}=Succeeded', 'pod/reader', '-n', readers, '--timeout=60s']);
      const logs = await k(['logs', 'reader', '-n', readers]);
      return logs.startsWith('200 ') ? logs : undefined;
    },
    150_000,
  );
  expect(reader).toMatch(/^200 \[/);
  await apply([
    readerPod('nobody', 'nobody', [secure]),
    readerPod('anonymous', undefined, [secure, `${plain}/flows`, `${plain}/status`]),
  ]);
  for (const pod of ['nobody', 'anonymous']) {
    await k(['wait', '--for=jsonpath={.status.phase}=Succeeded', `pod/${pod}`, '-n', readers, '--timeout=60s']);
  }
  expect((await k(['logs', 'nobody', '-n', readers])).trim()).toBe(
    `403 {"error":"system:serviceaccount:${readers}:nobody may not get egressgateways/flows of gateway ${gateway}"}`,
  );
  const anonymous = (await k(['logs', 'anonymous', '-n', readers])).trim().split('\n');
  expect(anonymous[0]).toBe('401 {"error":"no bearer token"}');
  expect(anonymous[1]).toBe('404 {"error":"flow data is served on the secure listener only"}');
  expect(anonymous[2]).toMatch(/^200 \{ "node": "naat-node"/);
}, 600_000);
