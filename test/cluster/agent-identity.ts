// What an agent does to get its node's certificate, by hand, for tests of the signer naat.dev/agent:
// a token of a ServiceAccount bound to a pod on a node (as the kubelet gives the agent's pod), and
// a CertificateSigningRequest made with it.
import { generateKeyPairSync } from 'node:crypto';
import { join } from 'node:path';
import { CertificatesV1Api, KubeConfig } from '@kubernetes/client-node';
import { certificationRequest } from '../../common/index.ts';
import { agentSignerName, agentUsages } from '../../contracts/index.ts';
import { requestOutcome } from '../../dataplane/identity.ts';
import { until } from '../e2e/topology.ts';
import { kubectl, serviceAccountKubeconfig } from './cluster.ts';

/**
 * Makes pod `namespace/pod` of ServiceAccount `account` on node `node` (no kubelet needs to run
 * it) and writes into `dir` a kubeconfig with a token of that account bound to it; its path.
 */
export async function podBoundKubeconfig(
  kubeconfig: string,
  o: { namespace: string; account: string; pod: string; node: string; dir: string },
): Promise<string> {
  const created = JSON.parse(
    await kubectl(
      kubeconfig,
      ['create', '-o', 'json', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name: o.pod, namespace: o.namespace },
        spec: { nodeName: o.node, serviceAccountName: o.account, containers: [{ name: 'agent', image: 'agent:test' }] },
      }),
    ),
  );
  const bound = [
    '--bound-object-kind',
    'Pod',
    '--bound-object-name',
    o.pod,
    '--bound-object-uid',
    created.metadata.uid,
  ];
  return serviceAccountKubeconfig(kubeconfig, o.namespace, o.account, join(o.dir, `${o.pod}.kubeconfig`), bound);
}

export function kubeConfigOf(file: string): KubeConfig {
  const config = new KubeConfig();
  config.loadFromFile(file);
  return config;
}

/**
 * Asks naat's signer for a certificate for `commonName` with the credentials of the kubeconfig
 * `file`, and waits up to a minute for the outcome: the certificate, or the refusal.
 */
export async function askForCertificate(file: string, commonName: string) {
  const api = kubeConfigOf(file).makeApiClient(CertificatesV1Api);
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const created = await api.createCertificateSigningRequest({
    body: {
      metadata: { generateName: 'naat-test-' },
      spec: {
        signerName: agentSignerName,
        usages: [...agentUsages],
        request: Buffer.from(certificationRequest(commonName, publicKey, privateKey)).toString('base64'),
      },
    },
  });
  const name = created.metadata!.name!;
  return until(
    `the outcome of ${name}`,
    async () => requestOutcome(await api.readCertificateSigningRequest({ name })),
    60_000,
  );
}
