// What the NAA server tests share: pods of the test apiserver with pod-bound tokens, the
// association a driver would send for one of their flows, and a stream that sends whatever a
// test writes.
import { Client, credentials, status, type ClientDuplexStream, type ServiceError } from '@grpc/grpc-js';
import { addressToBytes } from '../../common/index.ts';
import {
  AssociationServiceService,
  Protocol,
  type AssociateRequest,
  type AssociateResponse,
  type Association,
  type Hello,
  type PodRef,
} from '../../proto/index.ts';
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

/** The Hello of a driver of `pod`, with its token. */
export function helloOf(pod: TestPod): Hello {
  return { protocolVersion: 1, pod: pod.ref, token: pod.token, driverVersion: 'test', mode: 1, nodeDriven: false };
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

/**
 * An NAA stream to `target` on a connection of its own (as separate pods would have), that sends
 * what the test writes, message by message, and records the answers. `encode` replaces the
 * protobuf encoding, for bytes a well-behaved driver never sends.
 */
export function openRawStream(
  target: string,
  encode: (m: AssociateRequest) => Buffer = AssociationServiceService.associate.requestSerialize,
) {
  const client = new Client(target, credentials.createInsecure(), { 'grpc.naat_test_connection': Math.random() });
  const call: ClientDuplexStream<AssociateRequest, AssociateResponse> = client.makeBidiStreamRequest(
    AssociationServiceService.associate.path,
    encode,
    AssociationServiceService.associate.responseDeserialize,
  );
  const received: AssociateResponse[] = [];
  call.on('data', (m: AssociateResponse) => received.push(m));
  const ended = new Promise<{ code: status; details: string }>((resolve) => {
    call.on('error', (e: ServiceError) => resolve({ code: e.code, details: e.details }));
    call.on('end', () => resolve({ code: status.OK, details: '' }));
  });
  let sequence = 0;
  const send = (body: AssociateRequest['body'], seq = ++sequence) => call.write({ sequence: seq, body });
  const hello = (pod: TestPod, overrides: Partial<{ token: string; pod: PodRef; protocolVersion: number }> = {}) =>
    send({ $case: 'hello', value: { ...helloOf(pod), ...overrides } });
  /** Waits for the Ack of message `seq` (the HelloAck for 1). */
  const acked = async (seq: number) => {
    const has = () => received.some((m) => m.body?.$case === 'ack' && m.body.value.sequence === seq);
    const helloAcked = () => received.some((m) => m.body?.$case === 'helloAck');
    for (let i = 0; i < 200 && !(seq === 1 ? helloAcked() : has()); i++) {
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    expect(seq === 1 ? helloAcked() : has()).toBe(true);
  };
  return { call, client, send, hello, acked, helloAcked: () => acked(1), ended, received, next: () => sequence + 1 };
}
