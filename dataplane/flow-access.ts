// Who may read the gateway agent's flow data: every flow's pod, container, process, executable
// and uid, and who was behind a public address at a time (/flows, /attribution).
//
// A plain listener serves them only when it is bound to a loopback address: a standalone gateway's
// own host, where whoever can connect could as well read the kernel's tables. Everywhere else they
// are served on the secure listener only, over TLS, to a caller whose bearer token the apiserver
// accepts for the audience naat-flows (TokenReview) and who may `get` the `flows` subresource of the agent's EgressGateway
// (SubjectAccessReview), as the kubelet authorizes `nodes/stats` and kube-rbac-proxy `/metrics`.
// The chart's `naat-flow-reader` ClusterRole grants that; a RoleBinding cannot (the EgressGateway
// is cluster-scoped), a ClusterRoleBinding to a role naming resourceNames narrows it to gateways.
import { isIP } from 'node:net';

/** The paths that reveal flows or pods; everything else an agent serves is counts and health. */
export const flowPaths: ReadonlySet<string> = new Set(['/flows', '/attribution']);

/** What the SubjectAccessReview asks: `get` on `egressgateways/flows` named after the gateway. */
export const flowResource = { group: 'naat.dev', resource: 'egressgateways', subresource: 'flows', verb: 'get' };

/** Whether a plain listener bound to `host` may serve flow data: only on loopback. */
export function servesFlowsUnauthenticated(host: string): boolean {
  const address = host.replace(/^\[|\]$/g, '').replace(/^::ffff:/i, '');
  if (isIP(address) === 4) return address.startsWith('127.');
  return address === '::1' || address === 'localhost';
}

/** The token of an `Authorization: Bearer …` header, if there is one. */
export function bearerToken(authorization: string | undefined): string | undefined {
  const token = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '')?.[1];
  return token || undefined;
}

/** What the apiserver said of the token (TokenReview status). */
export interface TokenVerdict {
  authenticated: boolean;
  user?: { username?: string; uid?: string; groups?: string[]; extra?: Record<string, string[]> };
  error?: string;
}

/** What the apiserver said of the user's rights (SubjectAccessReview status). */
export interface AccessVerdict {
  allowed: boolean;
  reason?: string;
  evaluationError?: string;
}

export type FlowAccess =
  | { allowed: true; user: string }
  /** 401: the caller is not known; 403: known, and not allowed. */
  | { allowed: false; status: 401 | 403; reason: string };

/**
 * The decision on one request to the secure listener, from what the apiserver answered so far:
 * without a token, or with one it did not accept, the caller is unauthenticated (401) and no
 * access review is made; an authenticated user not allowed the flows of `gateway` is refused (403).
 */
export function decideFlowAccess(input: {
  gateway: string;
  token: string | undefined;
  review?: TokenVerdict;
  access?: AccessVerdict;
}): FlowAccess {
  const { gateway, token, review, access } = input;
  if (!token) return { allowed: false, status: 401, reason: 'no bearer token' };
  if (!review?.authenticated) {
    return { allowed: false, status: 401, reason: `the token was not accepted: ${review?.error || 'no reason given'}` };
  }
  const user = review.user?.username || 'an unnamed user';
  if (!access?.allowed) {
    const why = access?.reason || access?.evaluationError;
    return {
      allowed: false,
      status: 403,
      reason: `${user} may not get egressgateways/flows of gateway ${gateway}${why ? `: ${why}` : ''}`,
    };
  }
  return { allowed: true, user };
}

/** The SubjectAccessReview spec that asks whether `user` may read the flows of `gateway`. */
export function flowAccessReview(gateway: string, user: NonNullable<TokenVerdict['user']>) {
  return {
    user: user.username ?? '',
    ...(user.uid ? { uid: user.uid } : {}),
    groups: user.groups ?? [],
    ...(user.extra ? { extra: user.extra } : {}),
    resourceAttributes: { ...flowResource, name: gateway },
  };
}
