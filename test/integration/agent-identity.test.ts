// Each agent's certificate for its own node, against the real apiserver: the chart's objects and
// the operator as a process with exactly the chart's RBAC (the signer naat.dev/agent), and the
// agent's identity code (dataplane/identity.ts) with a token bound to a pod on a Node of the
// test's own, as the kubelet would give it. It gets a certificate naming exactly that node's name
// and InternalIPs, chaining to the CA the operator publishes, good for TLS both ways; requests from
// another ServiceAccount, with a token bound to no pod, or for another node are Denied with the
// signer's message; and with a short lifetime the pair is renewed before it expires, which a TLS
// server built from the directory serves.
import { X509Certificate } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, createServer, type Server } from 'node:tls';
import { parseAllDocuments } from 'yaml';
import { jsonLogger as log } from '../../common/index.ts';
import { root } from '../../crds/generate.ts';
import { ClusterIdentity } from '../../dataplane/identity.ts';
import { readTlsDir, type TlsMaterial } from '../../dataplane/link-tls.ts';
import { objectName } from '../../operator/desired.ts';
import { askForCertificate, kubeConfigOf, podBoundKubeconfig } from '../cluster/agent-identity.ts';
import { kubectl, serviceAccountKubeconfig } from '../cluster/cluster.ts';
import { buildHelm, helm } from '../cluster/helm.ts';
import { gatewayWithUplink, problemLines, startReleaseOperator, type ReleaseOperator } from '../cluster/operator.ts';

const kubeconfig = process.env.KUBECONFIG!;
const k = (args: string[], input?: string) => kubectl(kubeconfig, args, input);
// Tests share one apiserver: the release, its namespace, gateway and nodes are this run's own.
const release = `naat-id${process.pid}`;
const namespace = `naat-identity${process.pid}`;
const gateway = `id-${process.pid}`;
const node = `identity-${process.pid}`;
const otherNode = `identity-other-${process.pid}`;
const addresses = ['10.254.0.7', 'fd00:254::7'];
const lifetimeSeconds = 15;

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
}

let dir: string;
let operator: ReleaseOperator | undefined;
let caBundle: string;

const podBound = (account: string, pod: string, onNode: string) =>
  podBoundKubeconfig(kubeconfig, { namespace, account, pod, node: onNode, dir });

/** The certificate a TLS client sees from a server built from `material`, the client verifying it. */
async function handshake(material: TlsMaterial): Promise<X509Certificate> {
  // Mutual: the server asks for the client's certificate and checks it against the same bundle.
  const server: Server = createServer({
    cert: material.cert,
    key: material.key,
    ca: material.ca,
    requestCert: true,
    rejectUnauthorized: true,
  });
  server.on('secureConnection', (socket) => socket.end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  try {
    return await new Promise<X509Certificate>((resolve, reject) => {
      const socket = connect(
        { host: '127.0.0.1', port, servername: node, ca: material.ca, cert: material.cert, key: material.key },
        () => {
          resolve(socket.getPeerX509Certificate()!);
          socket.end();
        },
      );
      socket.on('error', reject);
    });
  } finally {
    server.close();
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'naat-identity-'));
  const rendered = await helm(await buildHelm(), [
    ...['template', release, join(root, 'charts/naat'), '--namespace', namespace],
    ...['--set', `dataplane.certificateLifetimeSeconds=${lifetimeSeconds}`],
  ]);
  const applied = parseAllDocuments(rendered)
    .map((document) => document.toJS() as Manifest | null)
    .filter((m): m is Manifest => m !== null && m.kind !== 'Deployment');
  await k(['create', 'namespace', namespace]);
  await k(['apply', '-n', namespace, '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: applied }));
  // Nodes no kubelet runs: only their objects matter here.
  for (const name of [node, otherNode]) {
    await k(['create', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name } }));
  }
  await k(
    ['patch', 'node', node, '--subresource=status', '--type=merge', '-p'].concat(
      JSON.stringify({ status: { addresses: addresses.map((address) => ({ type: 'InternalIP', address })) } }),
    ),
  );
  operator = await startReleaseOperator({ kubeconfig, release, namespace, dir });
  await operator.ready();
  // The operator puts naat's CRDs in place as it starts.
  await k(['wait', '--for=condition=Established', 'crd/uplinks.naat.dev', 'crd/egressgateways.naat.dev']);
  await k(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: gatewayWithUplink(gateway) }));
  caBundle = await operator.eventually('the CA bundle', async () => {
    const configMap = JSON.parse(await k(['get', 'configmap', `${release}-ca`, '-n', namespace, '-o', 'json']));
    return configMap.data?.['ca.crt'] as string | undefined;
  });
  await writeFile(join(dir, 'ca.crt'), caBundle);
  await operator.eventually("the gateway's ServiceAccount", () =>
    k(['get', 'serviceaccount', objectName(gateway), '-n', namespace]).then(() => true),
  );
}, 180_000);

afterAll(async () => {
  operator?.child.kill('SIGTERM');
  await k(['delete', 'egressgateway', gateway, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'uplink', gateway, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'node', node, otherNode, '--ignore-not-found', '--wait=false']);
  await k(['delete', 'clusterrole,clusterrolebinding', `${namespace}-requester`, '--ignore-not-found']);
  await k(['delete', 'namespace', namespace, '--ignore-not-found', '--wait=false']);
  await rm(dir, { recursive: true, force: true });
});

test("an agent gets its own node's certificate, and renews it before it expires", async () => {
  const tls = join(dir, 'tls');
  await mkdir(tls);
  const identity = new ClusterIdentity({
    kubeConfig: kubeConfigOf(await podBound(objectName(gateway), 'agent', node)),
    node,
    dir: tls,
    caFile: join(dir, 'ca.crt'),
    log,
    pollMs: 500,
  });
  identity.start();
  try {
    const first = await operator!.eventually('the first certificate', () => readTlsDir(tls).catch(() => undefined));
    expect(first.ca).toBe(caBundle);
    const cert = new X509Certificate(first.cert);
    expect(cert.subject).toBe(`CN=${node}`);
    expect(cert.subjectAltName).toBe(`DNS:${node}, IP Address:10.254.0.7, IP Address:FD00:254:0:0:0:0:0:7`);
    expect(cert.keyUsage?.sort()).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    expect(cert.verify(new X509Certificate(caBundle).publicKey)).toBe(true);
    const lifetime = new Date(cert.validTo).getTime() - Date.now();
    expect(lifetime).toBeLessThanOrEqual(lifetimeSeconds * 1000);
    expect((await handshake(first)).serialNumber).toBe(cert.serialNumber);

    // Renewed with a new key once two thirds of its life have passed, before it expires.
    const second = await operator!.eventually('the renewed certificate', async () => {
      const material = await readTlsDir(tls).catch(() => undefined);
      return material && material.cert !== first.cert ? material : undefined;
    });
    expect(Date.now()).toBeLessThan(new Date(cert.validTo).getTime());
    expect(second.key).not.toBe(first.key);
    const renewed = await handshake(second);
    expect(renewed.serialNumber).toBe(new X509Certificate(second.cert).serialNumber);
    expect(renewed.serialNumber).not.toBe(cert.serialNumber);
    expect(renewed.subject).toBe(`CN=${node}`);
  } finally {
    await identity.stop();
  }
  expect(problemLines(operator!.output())).toEqual([]);
}, 120_000);

test('requests from another ServiceAccount, from a token bound to no pod, or for another node are denied', async () => {
  // A ServiceAccount that may create requests but is no agent.
  await k(['create', 'serviceaccount', 'requester', '-n', namespace]);
  await k([
    ...['create', 'clusterrole', `${namespace}-requester`, '--verb=create,get'],
    '--resource=certificatesigningrequests.certificates.k8s.io',
  ]);
  await k([
    ...['create', 'clusterrolebinding', `${namespace}-requester`, `--clusterrole=${namespace}-requester`],
    `--serviceaccount=${namespace}:requester`,
  ]);
  const stranger = await podBound('requester', 'stranger', node);
  expect(await askForCertificate(stranger, node)).toEqual({
    refused: `Denied (NotAnAgent): the requester system:serviceaccount:${namespace}:requester is not one of naat's agent ServiceAccounts`,
  });

  const unbound = await serviceAccountKubeconfig(
    kubeconfig,
    namespace,
    objectName(gateway),
    join(dir, 'unbound.kubeconfig'),
  );
  expect(await askForCertificate(unbound, node)).toEqual({
    refused:
      "Denied (NotBoundToNode): the requester's token is not bound to a pod on a node (no authentication.kubernetes.io/node-name)",
  });

  const agent = await podBound(objectName(gateway), 'agent-elsewhere', otherNode);
  expect(await askForCertificate(agent, node)).toEqual({
    refused: `Denied (WrongNode): the request's subject is "CN=${node}", not "CN=${otherNode}", the node of the requester's pod`,
  });
  // The same agent asking for its own node is signed, for the names of that node alone.
  const own = await askForCertificate(agent, otherNode);
  expect('certificate' in own && new X509Certificate(own.certificate).subjectAltName).toBe(`DNS:${otherNode}`);
}, 120_000);
