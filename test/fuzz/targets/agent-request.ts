// The signer naat.dev/agent's decision on a CertificateSigningRequest whose PKCS#10 request is any
// bytes (DER, in its PEM armour), from an agent's ServiceAccount with a token bound to a pod on a
// known node: everything before the request itself passes, so the input reaches the DER reader and
// the signature check. Invariant: the decision is made (signed, or denied with a reason and a
// message) and nothing throws; it signs only for the requester's own node.
import { der } from '../../../common/index.ts';
import { agentSignerName, agentUsages } from '../../../contracts/index.ts';
import { decideAgentRequest, nodeNameExtra } from '../../../operator/agent-signer.ts';

const user = 'system:serviceaccount:naat-system:naat-node';
const node = { metadata: { name: 'node-a' }, status: { addresses: [{ type: 'InternalIP', address: '10.0.0.1' }] } };
const facts = { agentUsers: new Set([user]), node: () => node, maxLifetimeSeconds: 3600 };

export function fuzz(data: Buffer): void {
  const decision = decideAgentRequest(
    {
      spec: {
        signerName: agentSignerName,
        usages: [...agentUsages],
        username: user,
        extra: { [nodeNameExtra]: ['node-a'] },
        request: Buffer.from(der.toPem('CERTIFICATE REQUEST', data)).toString('base64'),
      },
    },
    facts,
  );
  if (decision.action === 'deny' && decision.reason && decision.message) return;
  if (decision.action === 'sign' && decision.node === 'node-a') return;
  throw new Error(`an unexpected decision: ${JSON.stringify(decision)}`);
}
