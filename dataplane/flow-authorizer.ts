// The apiserver's side of flow access (flow-access.ts holds the decision): a TokenReview of the
// caller's bearer token, which must be meant for naat-flows, and once it is accepted, a
// SubjectAccessReview of its user. Decisions are
// kept for a few seconds by a hash of the token, so that a dashboard polling every second costs
// the apiserver two reviews per caller every `ttlMs`, as the kubelet's webhook authorizer caches.
import { AuthenticationV1Api, AuthorizationV1Api, type KubeConfig } from '@kubernetes/client-node';
import { createHash } from 'node:crypto';
import { flowsTokenAudience } from '../contracts/index.ts';
import { decideFlowAccess, flowAccessReview, type FlowAccess } from './flow-access.ts';

export interface FlowAuthorizer {
  /** Resolves with the decision; rejects only when the apiserver could not be asked. */
  authorize(token: string | undefined, gateway: string): Promise<FlowAccess>;
}

const defaultTtlMs = 10_000;
/** A cache past this size starts over rather than grow with every token ever seen. */
const maxEntries = 1000;

export class ApiserverFlowAuthorizer implements FlowAuthorizer {
  readonly #authn: AuthenticationV1Api;
  readonly #authz: AuthorizationV1Api;
  readonly #ttlMs: number;
  readonly #cache = new Map<string, { access: FlowAccess; until: number }>();

  constructor(kubeConfig: KubeConfig, ttlMs = defaultTtlMs) {
    this.#authn = kubeConfig.makeApiClient(AuthenticationV1Api);
    this.#authz = kubeConfig.makeApiClient(AuthorizationV1Api);
    this.#ttlMs = ttlMs;
  }

  async authorize(token: string | undefined, gateway: string): Promise<FlowAccess> {
    if (!token) return decideFlowAccess({ gateway, token });
    const key = `${gateway}\n${createHash('sha256').update(token).digest('hex')}`;
    const now = Date.now();
    const cached = this.#cache.get(key);
    if (cached && cached.until > now) return cached.access;
    const review = await this.#authn.createTokenReview({
      body: {
        apiVersion: 'authentication.k8s.io/v1',
        kind: 'TokenReview',
        spec: { token, audiences: [flowsTokenAudience] },
      },
    });
    const verdict = review.status ?? { authenticated: false };
    const access =
      verdict.authenticated && verdict.user
        ? (
            await this.#authz.createSubjectAccessReview({
              body: {
                apiVersion: 'authorization.k8s.io/v1',
                kind: 'SubjectAccessReview',
                spec: flowAccessReview(gateway, verdict.user),
              },
            })
          ).status
        : undefined;
    const decision = decideFlowAccess({
      gateway,
      token,
      review: { authenticated: Boolean(verdict.authenticated), ...verdict },
      ...(access ? { access } : {}),
    });
    if (this.#cache.size >= maxEntries) this.#cache.clear();
    this.#cache.set(key, { access: decision, until: now + this.#ttlMs });
    return decision;
  }
}
