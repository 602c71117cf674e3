// The decision of the signer naat.dev/agent on one CertificateSigningRequest, as a pure function
// of the request and what the caches hold. An agent proves which node it runs on with its pod's
// own token: the apiserver puts the node of the pod a token is bound to in the request's
// spec.extra (authentication.kubernetes.io/node-name; Kubernetes 1.30 and later), and records who
// made the request in spec.username, neither of which the requester can write. So a request is
// signed only when it comes from one of the agents' ServiceAccounts, through a token bound to a
// pod on a node, and asks for that node by its name. The names certified are taken from the Node
// object (its name and InternalIP addresses), never from the request, which carries only the key
// and the node's name as its subject.
import { createHash, type KeyObject } from 'node:crypto';
import { isIP } from 'node:net';
import type { V1CertificateSigningRequest, V1Node } from '@kubernetes/client-node';
import { parseCertificationRequest, RequestError } from '../common/index.ts';
import { agentSignerName, agentUsages } from '../contracts/index.ts';

/** The extra the apiserver adds for a token bound to a pod: the node the pod was scheduled to. */
export const nodeNameExtra = 'authentication.kubernetes.io/node-name';
const commonNameOid = '2.5.4.3';

export type AgentRequestDecision =
  /** Not this signer's, or decided already. */
  | { action: 'none' }
  | { action: 'deny'; reason: string; message: string }
  | { action: 'sign'; node: string; addresses: string[]; publicKey: KeyObject; lifetimeSeconds: number };

export interface AgentRequestFacts {
  /** The usernames of the agents' ServiceAccounts (system:serviceaccount:NAMESPACE:NAME). */
  agentUsers: ReadonlySet<string>;
  node: (name: string) => V1Node | undefined;
  /** The longest lifetime the signer gives; a request may ask for less (spec.expirationSeconds). */
  maxLifetimeSeconds: number;
}

const conditionTypes = (csr: V1CertificateSigningRequest) => new Set((csr.status?.conditions ?? []).map((c) => c.type));

/** Whether the request was approved (by this signer or anyone allowed to approve for it). */
export const approved = (csr: V1CertificateSigningRequest) => conditionTypes(csr).has('Approved');

export function decideAgentRequest(csr: V1CertificateSigningRequest, facts: AgentRequestFacts): AgentRequestDecision {
  const spec = csr.spec;
  if (spec?.signerName !== agentSignerName) return { action: 'none' };
  const types = conditionTypes(csr);
  if (csr.status?.certificate || types.has('Denied') || types.has('Failed')) return { action: 'none' };
  const deny = (reason: string, message: string): AgentRequestDecision => ({ action: 'deny', reason, message });

  const user = spec.username ?? '';
  if (!facts.agentUsers.has(user)) {
    return deny('NotAnAgent', `the requester ${user || '(unnamed)'} is not one of naat's agent ServiceAccounts`);
  }
  const nodes = spec.extra?.[nodeNameExtra] ?? [];
  if (nodes.length !== 1 || !nodes[0]) {
    return deny('NotBoundToNode', `the requester's token is not bound to a pod on a node (no ${nodeNameExtra})`);
  }
  const nodeName = nodes[0];
  const node = facts.node(nodeName);
  if (!node) return deny('UnknownNode', `the requester's node ${nodeName} is not a known Node`);

  const usages = [...new Set(spec.usages ?? [])].sort();
  const wanted = [...agentUsages].sort();
  if (usages.join() !== wanted.join()) {
    return deny('BadUsages', `the usages are [${usages.join(', ')}], not [${wanted.join(', ')}]`);
  }

  let request;
  try {
    request = parseCertificationRequest(Buffer.from(spec.request ?? '', 'base64').toString('latin1'));
  } catch (error) {
    if (!(error instanceof RequestError)) throw error;
    return deny('BadRequest', error.message);
  }
  const { asymmetricKeyType, asymmetricKeyDetails } = request.publicKey;
  if (asymmetricKeyType !== 'ec' || asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    const curve = asymmetricKeyDetails?.namedCurve ? ` ${asymmetricKeyDetails.namedCurve}` : '';
    return deny('BadKey', `the key is ${asymmetricKeyType}${curve}, not EC P-256`);
  }
  const subject = request.subject.map((a) => `${a.type === commonNameOid ? 'CN' : a.type}=${a.value}`).join(',');
  if (subject !== `CN=${nodeName}`) {
    return deny(
      'WrongNode',
      `the request's subject is "${subject}", not "CN=${nodeName}", the node of the requester's pod`,
    );
  }

  const asked = spec.expirationSeconds;
  return {
    action: 'sign',
    node: nodeName,
    addresses: internalAddresses(node),
    publicKey: request.publicKey,
    lifetimeSeconds: asked && asked > 0 ? Math.min(asked, facts.maxLifetimeSeconds) : facts.maxLifetimeSeconds,
  };
}

/** A node's InternalIP addresses, both families, as the Node object has them, without repeats. */
export function internalAddresses(node: V1Node): string[] {
  const addresses = (node.status?.addresses ?? [])
    .filter((a) => a.type === 'InternalIP' && isIP(a.address))
    .map((a) => a.address);
  return [...new Set(addresses)];
}

/** A short fingerprint of a public key, for logs. */
export const keyFingerprint = (key: KeyObject) =>
  createHash('sha256')
    .update(key.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
