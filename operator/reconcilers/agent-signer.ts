// The signer naat.dev/agent, run by the leader: each CertificateSigningRequest for it is approved
// and signed, or denied with a message naming what is wrong (operator/agent-signer.ts decides).
// A request someone else approved is still checked: one that fails is marked Failed, not signed.
// Approval and certificate are two writes (the apiserver keeps them in two subresources); a
// request approved whose signing failed is signed at the next reconcile, which the approval's own
// change brings.
import {
  CertificatesV1Api,
  type KubeConfig,
  type V1CertificateSigningRequest,
  type V1CertificateSigningRequestCondition,
  type V1Node,
} from '@kubernetes/client-node';
import type { Logger } from '../../common/index.ts';
import type { EgressGateway } from '../../crds/index.ts';
import { approved, decideAgentRequest, keyFingerprint } from '../agent-signer.ts';
import { makeAgentCertificate, type KeyPair } from '../certificates.ts';
import { nodeAgentName, objectName } from '../desired.ts';
import type { ReconcileResult } from '../runtime/controller.ts';

export interface AgentSignerOptions {
  kubeConfig: KubeConfig;
  requests: { get(key: string): V1CertificateSigningRequest | undefined };
  gateways: { list(): EgressGateway[] };
  nodes: { get(key: string): V1Node | undefined };
  /** The CA that signs, when there is one yet (operator/controllers.ts). */
  ca: () => KeyPair | undefined;
  /** The operator's namespace, where the agents' ServiceAccounts are. */
  namespace: string;
  maxLifetimeSeconds: number;
  log: Logger;
  now?: () => Date;
}

/** How far back a certificate's notBefore goes, for the clocks of nodes a little behind ours. */
const clockSlackMs = 5 * 60_000;

export class AgentSignerReconciler {
  readonly #o: AgentSignerOptions;
  readonly #api: CertificatesV1Api;

  constructor(options: AgentSignerOptions) {
    this.#o = options;
    this.#api = options.kubeConfig.makeApiClient(CertificatesV1Api);
  }

  /** The usernames of the agents' ServiceAccounts: each gateway's, and the node agents'. */
  agentUsers(): Set<string> {
    const accounts = [...this.#o.gateways.list().map((g) => objectName(g.metadata.name)), nodeAgentName];
    return new Set(accounts.map((account) => `system:serviceaccount:${this.#o.namespace}:${account}`));
  }

  async reconcile(key: string): Promise<ReconcileResult> {
    const { log } = this.#o;
    const csr = this.#o.requests.get(key);
    if (!csr) return;
    const decision = decideAgentRequest(csr, {
      agentUsers: this.agentUsers(),
      node: (name) => this.#o.nodes.get(name),
      maxLifetimeSeconds: this.#o.maxLifetimeSeconds,
    });
    const name = csr.metadata!.name!;
    if (decision.action === 'none') return;
    if (decision.action === 'deny') {
      const wasApproved = approved(csr);
      const body = withCondition(csr, wasApproved ? 'Failed' : 'Denied', decision.reason, decision.message);
      // A replace with the cached resourceVersion: a conflict is retried with the newer object.
      if (wasApproved) await this.#api.replaceCertificateSigningRequestStatus({ name, body });
      else await this.#api.replaceCertificateSigningRequestApproval({ name, body });
      log.info(`${wasApproved ? 'Failed' : 'Denied'} an agent certificate request`, {
        request: name,
        user: csr.spec.username,
        reason: decision.reason,
        message: decision.message,
      });
      return;
    }
    const ca = this.#o.ca();
    // Retried with backoff; the CA is made within moments of the operator's start.
    if (!ca) throw new Error(`no CA to sign the agent certificate request ${name} with yet`);
    let current = csr;
    if (!approved(csr)) {
      const message = `the pod of ${csr.spec.username} runs on node ${decision.node}`;
      current = await this.#api.replaceCertificateSigningRequestApproval({
        name,
        body: withCondition(csr, 'Approved', 'AgentOfNode', message),
      });
    }
    const now = (this.#o.now ?? (() => new Date()))();
    const certificate = makeAgentCertificate(ca, decision.publicKey, decision.node, decision.addresses, {
      notBefore: new Date(now.getTime() - clockSlackMs),
      notAfter: new Date(now.getTime() + decision.lifetimeSeconds * 1000),
    });
    await this.#api.replaceCertificateSigningRequestStatus({
      name,
      body: { ...current, status: { ...current.status, certificate: Buffer.from(certificate).toString('base64') } },
    });
    log.info('Signed an agent certificate', {
      request: name,
      node: decision.node,
      addresses: decision.addresses.join(','),
      key: keyFingerprint(decision.publicKey),
      seconds: decision.lifetimeSeconds,
    });
  }
}

function withCondition(
  csr: V1CertificateSigningRequest,
  type: string,
  reason: string,
  message: string,
): V1CertificateSigningRequest {
  const condition: V1CertificateSigningRequestCondition = {
    type,
    status: 'True',
    reason,
    message,
    lastUpdateTime: new Date(),
    lastTransitionTime: new Date(),
  };
  return { ...csr, status: { ...csr.status, conditions: [...(csr.status?.conditions ?? []), condition] } };
}
