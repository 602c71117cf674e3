// Who is on the other end of an NAA stream. A driver proves its pod with a projected
// service-account token bound to that pod and meant for naat; the apiserver's TokenReview says
// whether the token is good and which pod it is bound to, and the pod object gives the
// addresses the driver may speak for. Nothing the driver merely claims is trusted.
import { AuthenticationV1Api, CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { tokenAudience } from '../../contracts/index.ts';
import type { PodRef } from '../../proto/index.ts';

export interface PodIdentity {
  pod: PodRef;
  /** The pod's addresses (IPv4 and IPv6); associations must start from one of them. */
  addresses: string[];
}

export interface Authenticator {
  /** Resolves with the pod the token proves, or rejects with an AuthenticationError. */
  authenticate(token: string, claimed: PodRef): Promise<PodIdentity>;
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

  /** @param nodeName when set, only pods scheduled on this node are accepted */
  constructor(kubeConfig: KubeConfig, nodeName?: string) {
    this.#auth = kubeConfig.makeApiClient(AuthenticationV1Api);
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#nodeName = nodeName;
  }

  async authenticate(token: string, claimed: PodRef): Promise<PodIdentity> {
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
    if (this.#nodeName && pod.spec?.nodeName !== this.#nodeName) {
      throw new AuthenticationError(
        'denied',
        `pod ${namespace}/${podName} runs on node ${pod.spec?.nodeName ?? '(none)'}, not on ${this.#nodeName}`,
      );
    }
    const addresses = (pod.status?.podIPs ?? []).map((ip) => ip.ip).filter((ip): ip is string => !!ip);
    return { pod: { namespace, name: podName, uid: podUid }, addresses };
  }
}
