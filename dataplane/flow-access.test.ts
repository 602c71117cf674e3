import {
  bearerToken,
  decideFlowAccess,
  flowAccessReview,
  flowPaths,
  servesFlowsUnauthenticated,
} from './flow-access.ts';

describe('flow access', () => {
  test('flows and attribution are the paths that reveal flows; health, steering, status and metrics are not', () => {
    expect([...flowPaths].sort()).toEqual(['/attribution', '/flows']);
    for (const path of ['/healthz', '/readyz', '/steering', '/status', '/metrics'])
      expect(flowPaths.has(path)).toBe(false);
  });

  test('a plain listener serves flows only on a loopback address', () => {
    for (const host of ['127.0.0.1', '127.0.0.53', '::1', '[::1]', 'localhost', '::ffff:127.0.0.1']) {
      expect({ host, flows: servesFlowsUnauthenticated(host) }).toEqual({ host, flows: true });
    }
    for (const host of ['0.0.0.0', '::', '[::]', '10.0.0.1', 'fd00::1', '', 'gateway-1']) {
      expect({ host, flows: servesFlowsUnauthenticated(host) }).toEqual({ host, flows: false });
    }
  });

  test('the bearer token is read from the Authorization header', () => {
    expect(bearerToken('Bearer abc.def')).toBe('abc.def');
    expect(bearerToken('bearer  abc ')).toBe('abc');
    expect(bearerToken(undefined)).toBeUndefined();
    expect(bearerToken('Basic dXNlcjpwYXNz')).toBeUndefined();
    expect(bearerToken('Bearer ')).toBeUndefined();
    expect(bearerToken('Bearer a b')).toBeUndefined();
  });

  test('without a token, or with one the apiserver did not accept, the caller is unauthenticated', () => {
    expect(decideFlowAccess({ gateway: 'corp', token: undefined })).toEqual({
      allowed: false,
      status: 401,
      reason: 'no bearer token',
    });
    expect(
      decideFlowAccess({
        gateway: 'corp',
        token: 'forged',
        review: { authenticated: false, error: 'invalid bearer token' },
        access: { allowed: true },
      }),
    ).toEqual({ allowed: false, status: 401, reason: 'the token was not accepted: invalid bearer token' });
    expect(decideFlowAccess({ gateway: 'corp', token: 'x' })).toEqual({
      allowed: false,
      status: 401,
      reason: 'the token was not accepted: no reason given',
    });
  });

  test('an authenticated user needs get on egressgateways/flows of the gateway', () => {
    const review = { authenticated: true, user: { username: 'system:serviceaccount:apps:web' } };
    expect(decideFlowAccess({ gateway: 'corp', token: 't', review, access: { allowed: false } })).toEqual({
      allowed: false,
      status: 403,
      reason: 'system:serviceaccount:apps:web may not get egressgateways/flows of gateway corp',
    });
    expect(decideFlowAccess({ gateway: 'corp', token: 't', review })).toMatchObject({ allowed: false, status: 403 });
    expect(
      decideFlowAccess({
        gateway: 'corp',
        token: 't',
        review,
        access: { allowed: false, evaluationError: 'webhook timed out' },
      }),
    ).toMatchObject({ status: 403, reason: expect.stringMatching(/: webhook timed out$/) });
    expect(
      decideFlowAccess({
        gateway: 'corp',
        token: 't',
        review,
        access: { allowed: true, reason: 'RBAC: allowed by ClusterRoleBinding "readers"' },
      }),
    ).toEqual({ allowed: true, user: 'system:serviceaccount:apps:web' });
  });

  test('the access review asks for the gateway by name, with the whole identity of the user', () => {
    expect(
      flowAccessReview('corp', {
        username: 'system:serviceaccount:monitoring:reader',
        uid: 'u-1',
        groups: ['system:serviceaccounts', 'system:serviceaccounts:monitoring', 'system:authenticated'],
        extra: { 'authentication.kubernetes.io/pod-name': ['reader-0'] },
      }),
    ).toEqual({
      user: 'system:serviceaccount:monitoring:reader',
      uid: 'u-1',
      groups: ['system:serviceaccounts', 'system:serviceaccounts:monitoring', 'system:authenticated'],
      extra: { 'authentication.kubernetes.io/pod-name': ['reader-0'] },
      resourceAttributes: {
        group: 'naat.dev',
        resource: 'egressgateways',
        subresource: 'flows',
        verb: 'get',
        name: 'corp',
      },
    });
  });
});
