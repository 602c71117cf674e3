import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1CertificateSigningRequest, V1Node } from '@kubernetes/client-node';
import { certificationRequest } from '../common/index.ts';
import { agentSignerName, agentUsages } from '../contracts/index.ts';
import { decideAgentRequest, internalAddresses, nodeNameExtra, type AgentRequestFacts } from './agent-signer.ts';
import { lifetime, makeAgentCertificate, makeCa } from './certificates.ts';

const agent = 'system:serviceaccount:naat-system:naat-gw-corp';
const nodes: Record<string, V1Node> = {
  'gateway-a': {
    metadata: { name: 'gateway-a' },
    status: {
      addresses: [
        { type: 'InternalIP', address: '10.0.0.5' },
        { type: 'InternalIP', address: 'fd00::5' },
        { type: 'ExternalIP', address: '203.0.113.5' },
        { type: 'Hostname', address: 'gateway-a.example' },
      ],
    },
  },
  'gateway-b': {
    metadata: { name: 'gateway-b' },
    status: { addresses: [{ type: 'InternalIP', address: '10.0.0.6' }] },
  },
};
const facts: AgentRequestFacts = {
  agentUsers: new Set([agent, 'system:serviceaccount:naat-system:naat-node']),
  node: (name) => nodes[name],
  maxLifetimeSeconds: 7 * 86_400,
};
const ec = () => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const requestFor = (commonName: string, keys: { publicKey: KeyObject; privateKey: KeyObject } = ec()) =>
  Buffer.from(certificationRequest(commonName, keys.publicKey, keys.privateKey)).toString('base64');

function csr(spec: Partial<V1CertificateSigningRequest['spec']> = {}, status?: object): V1CertificateSigningRequest {
  return {
    metadata: { name: 'naat-agent-gateway-a-x1' },
    spec: {
      signerName: agentSignerName,
      usages: [...agentUsages],
      username: agent,
      extra: { [nodeNameExtra]: ['gateway-a'], 'authentication.kubernetes.io/pod-name': ['naat-gw-corp-abcde'] },
      request: requestFor('gateway-a'),
      ...spec,
    },
    ...(status ? { status } : {}),
  };
}
const denial = (request: V1CertificateSigningRequest) => {
  const decision = decideAgentRequest(request, facts);
  return decision.action === 'deny' ? `${decision.reason}: ${decision.message}` : decision.action;
};

describe('the signer naat.dev/agent', () => {
  test("signs a request from an agent's pod for its own node, with the node's names", () => {
    const keys = ec();
    const decision = decideAgentRequest(csr({ request: requestFor('gateway-a', keys) }), facts);
    expect(decision).toEqual({
      action: 'sign',
      node: 'gateway-a',
      addresses: ['10.0.0.5', 'fd00::5'],
      publicKey: keys.publicKey,
      lifetimeSeconds: 7 * 86_400,
    });
    // The node agents' ServiceAccount too; a shorter life when asked for, never a longer one.
    const nodeAgent = csr({ username: 'system:serviceaccount:naat-system:naat-node', expirationSeconds: 3600 });
    expect(decideAgentRequest(nodeAgent, facts)).toMatchObject({ action: 'sign', lifetimeSeconds: 3600 });
    expect(decideAgentRequest(csr({ expirationSeconds: 30 * 86_400 }), facts)).toMatchObject({
      lifetimeSeconds: 7 * 86_400,
    });
  });

  test("leaves other signers' requests, and those decided already, alone", () => {
    expect(denial(csr({ signerName: 'kubernetes.io/kube-apiserver-client' }))).toBe('none');
    expect(denial(csr({}, { certificate: 'Y2VydA==' }))).toBe('none');
    expect(denial(csr({}, { conditions: [{ type: 'Denied', status: 'True' }] }))).toBe('none');
    expect(denial(csr({}, { conditions: [{ type: 'Failed', status: 'True' }] }))).toBe('none');
    // Approved and not yet signed: decided again, and signed.
    expect(denial(csr({}, { conditions: [{ type: 'Approved', status: 'True' }] }))).toBe('sign');
  });

  test('denies each wrong request with a message naming what is wrong', () => {
    expect(denial(csr({ username: 'system:serviceaccount:apps:default' }))).toBe(
      "NotAnAgent: the requester system:serviceaccount:apps:default is not one of naat's agent ServiceAccounts",
    );
    expect(denial(csr({ username: 'system:serviceaccount:other:naat-node' }))).toMatch(/^NotAnAgent: /);
    expect(denial(csr({ username: undefined }))).toBe(
      "NotAnAgent: the requester (unnamed) is not one of naat's agent ServiceAccounts",
    );
    expect(denial(csr({ extra: {} }))).toBe(
      `NotBoundToNode: the requester's token is not bound to a pod on a node (no ${nodeNameExtra})`,
    );
    expect(denial(csr({ extra: { [nodeNameExtra]: ['gateway-a', 'gateway-b'] } }))).toMatch(/^NotBoundToNode: /);
    expect(denial(csr({ extra: { [nodeNameExtra]: ['gone'] }, request: requestFor('gone') }))).toBe(
      "UnknownNode: the requester's node gone is not a known Node",
    );
    expect(denial(csr({ usages: ['digital signature', 'server auth'] }))).toBe(
      'BadUsages: the usages are [digital signature, server auth], not [client auth, digital signature, server auth]',
    );
    expect(denial(csr({ usages: [...agentUsages, 'code signing'] }))).toMatch(/^BadUsages: /);
    expect(denial(csr({ request: requestFor('gateway-b') }))).toBe(
      `WrongNode: the request's subject is "CN=gateway-b", not "CN=gateway-a", the node of the requester's pod`,
    );
    expect(denial(csr({ request: Buffer.from('not a request').toString('base64') }))).toBe(
      'BadRequest: malformed certification request: expected one PEM block "CERTIFICATE REQUEST", found 0',
    );
    expect(denial(csr({ request: '' }))).toMatch(/^BadRequest: /);
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
    expect(denial(csr({ request: requestFor('gateway-a', p384) }))).toBe(
      'BadKey: the key is ec secp384r1, not EC P-256',
    );
  });

  test('a subject with more than the node name is the wrong node', () => {
    // The signer writes only the CN, but a request asking for a group must not look harmless.
    const keys = ec();
    const dir = mkdtempSync(join(tmpdir(), 'naat-signer-'));
    try {
      writeFileSync(join(dir, 'key.pem'), keys.privateKey.export({ type: 'pkcs8', format: 'pem' }));
      const twice = execFileSync('openssl', [
        ...['req', '-new', '-key', join(dir, 'key.pem'), '-sha256'],
        ...['-subj', '/CN=gateway-a/O=system:masters'],
      ]);
      expect(denial(csr({ request: twice.toString('base64') }))).toBe(
        `WrongNode: the request's subject is "CN=gateway-a,2.5.4.10=system:masters", not "CN=gateway-a", the node of the requester's pod`,
      );
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  test('the certificate names the node and its InternalIPs, serves and dials, and chains to the CA', () => {
    const now = new Date();
    const ca = makeCa('naat-ca', lifetime(now, 86_400_000));
    const keys = ec();
    const node = nodes['gateway-a']!;
    const pem = makeAgentCertificate(
      ca,
      keys.publicKey,
      'gateway-a',
      internalAddresses(node),
      lifetime(now, 3_600_000),
    );
    const cert = new X509Certificate(pem);
    expect(cert.subject).toBe('CN=gateway-a');
    expect(cert.subjectAltName).toBe('DNS:gateway-a, IP Address:10.0.0.5, IP Address:FD00:0:0:0:0:0:0:5');
    expect(cert.checkPrivateKey(keys.privateKey)).toBe(true);
    const dir = mkdtempSync(join(tmpdir(), 'naat-signer-'));
    try {
      writeFileSync(join(dir, 'ca.crt'), ca.cert);
      writeFileSync(join(dir, 'tls.crt'), pem);
      for (const purpose of ['sslserver', 'sslclient']) {
        const out = execFileSync('openssl', [
          ...['verify', '-purpose', purpose, '-CAfile', join(dir, 'ca.crt'), join(dir, 'tls.crt')],
        ]).toString();
        expect(out.trim()).toBe(`${join(dir, 'tls.crt')}: OK`);
      }
    } finally {
      rmSync(dir, { recursive: true });
    }
  });
});
