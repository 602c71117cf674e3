// What the NAA server tests share: pods of the test apiserver with pod-bound tokens, and the
// association a driver would send for one of their flows.
import { addressToBytes } from '../../common/index.ts';
import { Protocol, type Association, type PodRef } from '../../proto/index.ts';
import { kubectl } from '../cluster/cluster.ts';

export interface TestPod {
  ref: PodRef;
  ip: string;
  /** A token for the audience naat, bound to the pod. */
  token: string;
}

/** kubectl against the test apiserver, or the control plane of `kubeconfig`. */
const kubectlOf =
  (kubeconfig = process.env.KUBECONFIG!) =>
  (args: string[], input?: string) =>
    kubectl(kubeconfig, args, input);

/** A token of the namespace's `app` service account for `audience`, bound to the pod. */
export async function podToken(pod: PodRef, audience: string, kubeconfig?: string): Promise<string> {
  const k = kubectlOf(kubeconfig);
  const args = ['create', 'token', 'app', '-n', pod.namespace, '--audience', audience, '--bound-object-kind', 'Pod'];
  return (await k([...args, '--bound-object-name', pod.name, '--bound-object-uid', pod.uid])).trim();
}

/**
 * Creates a pod of the service account `app` (which must exist), on `nodeName` when given, and
 * waits for its address.
 */
export async function makePod(
  namespace: string,
  name: string,
  nodeName?: string,
  kubeconfig?: string,
): Promise<TestPod> {
  const k = kubectlOf(kubeconfig);
  await k(
    ['apply', '-f', '-'],
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name, namespace },
      spec: {
        serviceAccountName: 'app',
        containers: [{ name: 'app', image: 'app:test' }],
        ...(nodeName && { nodeName }),
      },
    }),
  );
  for (let i = 0; i < 300; i++) {
    const pod = JSON.parse(await k(['get', 'pod', name, '-n', namespace, '-o', 'json']));
    if (pod.status?.podIP) {
      const ref = { namespace, name, uid: pod.metadata.uid as string };
      return { ref, ip: pod.status.podIP, token: await podToken(ref, 'naat', kubeconfig) };
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`pod ${name} got no IP`);
}

/** A TCP flow from `sourceAddress:sourcePort` to 203.0.113.10:443 of `processName`. */
export function association(sourceAddress: string, sourcePort: number, processName = 'curl') {
  return {
    flow: {
      protocol: Protocol.PROTOCOL_TCP,
      sourceAddress: addressToBytes(sourceAddress),
      sourcePort,
      destinationAddress: addressToBytes('203.0.113.10'),
      destinationPort: 443,
    },
    application: {
      processName,
      executable: '/usr/bin/curl',
      commandLine: ['curl'],
      containerName: 'app',
      containerId: '',
      uid: 0,
      pid: 7,
    },
    observedAt: new Date(),
    trace: undefined,
  } satisfies Association;
}
