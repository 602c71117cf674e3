// Who is on the other end of an NAA stream. A driver proves its pod with a projected
// service-account token bound to that pod and meant for naat; the apiserver's TokenReview says
// whether the token is good and which pod it is bound to, and the pod object gives the
// addresses the driver may speak for. Nothing the driver merely claims is trusted.
//
// A gateway agent serves the pods of its own node, and pods on other nodes through the node agent
// of their node (dataplane/naa/relay.ts), which forwards their streams unchanged: such a stream is
// accepted only when it comes from an address of the node the pod runs on and, over TLS, carries
// that node's agent certificate (its CN names the node, dataplane/link-tls.ts), so that a pod still
// speaks only to its own node and no other host can pose as that node's relay. The token remains
// what proves the pod.
//
// A node-driven stream (the agent of the pod's node drives the pod, docs/naa.md) carries no token:
// that agent speaks for the pods of its node. For a pod of another node it is accepted only from
// that node's agent, through its node's relay with its node's agent certificate (the relay forwards
// a node-driven hello only from the node agent's own drivers, in its process); for a pod of the
// gateway agent's own node, which the gateway agent drives itself, only from the gateway agent's
// own drivers, in its process, never from its network port, whatever certificate comes with it.
// Either way only for a pod that runs on that node and says it is node-driven (the annotation the
// webhook sets).
import { AuthenticationV1Api, CoreV1Api, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { isIP } from 'node:net';
import { driverAnnotation, tokenAudience } from '../../contracts/index.ts';
import { canonicalAddress } from '../../contracts/gateway/index.ts';
import type { PodRef } from '../../proto/index.ts';

export interface PodIdentity {
  pod: PodRef;
  /** The pod's addresses (IPv4 and IPv6); associations must start from one of them. */
  addresses: string[];
}

/** What the transport knows of a stream's other end. */
export interface StreamPeer {
  /** The address the stream comes from. */
  address?: string | undefined;
  /** The node named by the agent certificate the stream was made with (verified against the CA). */
  agentNode?: string | undefined;
  /** The agent's own driver opened the stream in its process (`NaaServer.openLocal`): it is the node's. */
  local?: boolean;
}

export interface Authenticator {
  /** Resolves with the pod the token proves, or rejects with an AuthenticationError. */
  authenticate(token: string, claimed: PodRef, peer?: StreamPeer): Promise<PodIdentity>;
  /**
   * Resolves with the pod a node-driven hello names when the stream comes from the node agent of
   * the pod's node and the pod is node-driven, or rejects with an AuthenticationError.
   */
  authenticateNodeDriven(claimed: PodRef, peer: StreamPeer): Promise<PodIdentity>;
}

export class AuthenticationError extends Error {
  /** 'unauthenticated': the token proves nothing; 'denied': it proves a pod that may not do this. */
  readonly kind: 'unauthenticated' | 'denied';
  constructor(kind: 'unauthenticated' | 'denied', message: string) {
    super(message);
    this.kind = kind;
  }
}

export class TokenReviewAuthenticator implements Authenticator {
  readonly #auth: AuthenticationV1Api;
  readonly #core: CoreV1Api;
  readonly #nodeName: string | undefined;
  readonly #relayCertificates: boolean;

  /**
   * @param nodeName when set, only pods scheduled on this node are accepted, and pods on another
   * node whose stream comes from an address of that node (its node agent's relay)
   * @param relayCertificates the server runs TLS: a relayed stream must also carry the agent
   * certificate of the pod's node
   */
  constructor(kubeConfig: KubeConfig, nodeName?: string, { relayCertificates = false } = {}) {
    this.#auth = kubeConfig.makeApiClient(AuthenticationV1Api);
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#nodeName = nodeName;
    this.#relayCertificates = relayCertificates;
  }

  async authenticate(token: string, claimed: PodRef, peer: StreamPeer = {}): Promise<PodIdentity> {
    const review = await this.#auth.createTokenReview({
      body: {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenReview',
        spec: { token, audiences: [tokenAudience] },
      },
    });
    const status = review.status;
    if (!status?.authenticated) {
      throw new AuthenticationError(
        'unauthenticated',
        `the token was not accepted: ${status?.error || 'no reason given'}`,
      );
    }
    const username = status.user?.username ?? '';
    const podName = status.user?.extra?.['authentication.kubernetes.io/pod-name']?.[0];
    const podUid = status.user?.extra?.['authentication.kubernetes.io/pod-uid']?.[0];
    const namespace = /^system:serviceaccount:([^:]+):[^:]+$/.exec(username)?.[1];
    if (!namespace || !podName || !podUid) {
      throw new AuthenticationError('denied', `the token of ${username || 'an unknown user'} is not bound to a pod`);
    }
    if (claimed.namespace !== namespace || claimed.name !== podName || claimed.uid !== podUid) {
      throw new AuthenticationError(
        'denied',
        `the hello names pod ${claimed.namespace}/${claimed.name} (${claimed.uid}) but the token is bound to ${namespace}/${podName} (${podUid})`,
      );
    }
    const pod = await this.#core.readNamespacedPod({ name: podName, namespace });
    if (pod.metadata?.uid !== podUid) {
      throw new AuthenticationError(
        'denied',
        `pod ${namespace}/${podName} is not the one the token is bound to any more`,
      );
    }
    const refused = this.#nodeName && nodeRefusal(pod, this.#nodeName, peer, this.#relayCertificates);
    if (refused) throw new AuthenticationError('denied', refused);
    return identityOf(pod, { namespace, name: podName, uid: podUid });
  }

  async authenticateNodeDriven(claimed: PodRef, peer: StreamPeer): Promise<PodIdentity> {
    const name = `${claimed.namespace}/${claimed.name}`;
    if (!this.#nodeName) {
      throw new AuthenticationError(
        'denied',
        `the hello of pod ${name} is node-driven, and this gateway agent knows no node name to judge where it comes from`,
      );
    }
    let pod: V1Pod;
    try {
      pod = await this.#core.readNamespacedPod({ name: claimed.name, namespace: claimed.namespace });
    } catch (error) {
      if ((error as { code?: number }).code !== 404) throw error;
      throw new AuthenticationError('denied', `the node-driven hello names pod ${name}, which does not exist`);
    }
    if (pod.metadata?.uid !== claimed.uid) {
      throw new AuthenticationError(
        'denied',
        `the node-driven hello names pod ${name} with uid ${claimed.uid}, but that pod is ${pod.metadata?.uid} now`,
      );
    }
    const refused = nodeDrivenRefusal(pod, this.#nodeName, peer);
    if (refused) throw new AuthenticationError('denied', refused);
    return identityOf(pod, claimed);
  }
}

/** The pod as a stream speaks for it: the addresses its associations must start from. */
function identityOf(pod: V1Pod, ref: PodRef): PodIdentity {
  const addresses = (pod.status?.podIPs ?? []).map((ip) => ip.ip).filter((ip): ip is string => !!ip);
  return { pod: ref, addresses };
}

/**
 * Why a gateway agent on `ownNode` does not take a node-driven stream of `pod` that comes from
 * `peer`, or undefined when it does: the pod is node-driven and runs on a node, and the stream
 * comes from that node's agent: this agent itself for a pod of this node; otherwise
 * from that node's relay, with its agent certificate (`nodeRefusal`).
 */
export function nodeDrivenRefusal(pod: V1Pod, ownNode: string, peer: StreamPeer): string | undefined {
  const name = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
  const driver = pod.metadata?.annotations?.[driverAnnotation];
  if (driver !== 'Node') {
    return (
      `pod ${name} is not node-driven (its annotation ${driverAnnotation} is ${driver ? `'${driver}'` : 'not set'}, ` +
      `not 'Node'), so only its own driver speaks for it, with its token`
    );
  }
  const node = pod.spec?.nodeName;
  if (!node) return `pod ${name} is not scheduled on a node, so no node agent drives it`;
  if (node === ownNode) {
    return peer.local
      ? undefined
      : `pod ${name} runs on this gateway node ${ownNode}, whose gateway agent drives it from within itself ` +
          `only, and this stream comes from ${peer.address ?? 'an unknown address'}`;
  }
  if (peer.local) {
    return `pod ${name} runs on node ${node}, and this stream comes from the gateway agent of node ${ownNode}`;
  }
  return nodeRefusal(pod, ownNode, peer, true);
}

/**
 * Why a gateway agent on `ownNode` does not take a stream of `pod` that comes from `peer`, or
 * undefined when it does: the pod runs on this node, or on another node and the stream comes from
 * one of that node's addresses (pod.status.hostIPs), where its node agent relays, and, when
 * `requireCertificate`, was made with that node's agent certificate.
 */
export function nodeRefusal(
  pod: V1Pod,
  ownNode: string,
  peer: StreamPeer,
  requireCertificate: boolean,
): string | undefined {
  const node = pod.spec?.nodeName;
  const name = `${pod.metadata?.namespace}/${pod.metadata?.name}`;
  if (node === ownNode) return undefined;
  if (!node) return `pod ${name} is not scheduled on a node, and this is ${ownNode}`;
  const nodeAddresses = new Set(
    [...(pod.status?.hostIPs ?? []).map((a) => a.ip), pod.status?.hostIP]
      .filter((a): a is string => !!a && isIP(a) !== 0)
      .map(canonicalAddress),
  );
  const from = peer.address && isIP(peer.address) ? canonicalAddress(peer.address) : undefined;
  const relay = `pod ${name} runs on node ${node}, not on ${ownNode}, so its stream must come through the node agent of ${node}`;
  if (!from || !nodeAddresses.has(from)) {
    return (
      `${relay} (from ${[...nodeAddresses].join(' or ') || 'an address the pod does not report yet'}), ` +
      `and this one comes from ${peer.address ?? 'an unknown address'}`
    );
  }
  if (!requireCertificate || peer.agentNode === node) return undefined;
  return (
    `${relay} (with its agent certificate), and this one was made with ` +
    (peer.agentNode ? `the certificate of node ${peer.agentNode}` : 'no agent certificate the CA issued')
  );
}

/**
 * The address of a stream's peer as gRPC gives it (`address:port`, an IPv6 address without
 * brackets, an IPv4 one possibly mapped into IPv6), or undefined when it is not an IP address.
 */
export function peerAddress(peer: string): string | undefined {
  // gRPC appends the port whenever there is one, so a trailing `:digits` is the port even where the
  // whole would also read as an IPv6 address (`::1:8080`).
  const head = /^\[?(.*?)\]?:\d+$/.exec(peer)?.[1];
  const address = head && isIP(head.replace(/^::ffff:/i, '')) ? head : peer;
  const unmapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1] ?? address;
  return isIP(unmapped) ? unmapped : undefined;
}
