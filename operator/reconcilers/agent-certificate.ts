// The gateway agents' certificate, kept by the leader: a serving certificate for every gateway
// node (its name and InternalIP addresses), signed by the CA the operator keeps for its webhook,
// stored with that CA's certificate in the Secret the chart made empty for it, and mounted by
// every gateway's DaemonSet for its secure listener (dataplane/flow-access.ts). Reissued when the
// gateway nodes change, when the CA changes, and well before it expires; the agents pick the new
// pair up from the mounted Secret.
//
// One CA for all of naat's links, also when cert-manager issues the webhook's certificate (from a CA
// Certificate of the chart's, whose Secret the operator reads): a later certificate for another link (agent to agent, node
// agent to gateway agent) is one more leaf from the same CA, and every component already trusts
// `ca.crt`.
import { CoreV1Api, type KubeConfig, type V1Node, type V1Secret } from '@kubernetes/client-node';
import {
  lifetime,
  makeServing,
  nextLook,
  renewBefore,
  servingLifetime,
  usable,
  type KeyPair,
} from '../certificates.ts';
import type { ReconcileResult } from '../runtime/controller.ts';
import type { Logger } from '../../common/index.ts';
import type { EgressGateway } from '../../crds/index.ts';
import { matchesLabels } from '../selector.ts';
import { secretKeys, tlsPairOf } from './webhook-certificate.ts';

/**
 * The names the agents' certificate holds: every node some gateway's DaemonSet runs on (the
 * gateway's nodeSelector on a Linux node), by name and by each InternalIP address, sorted.
 */
export function agentNames(gateways: readonly EgressGateway[], nodes: readonly V1Node[]): string[] {
  const names = new Set<string>();
  for (const node of nodes) {
    const labels = node.metadata?.labels ?? {};
    if (labels['kubernetes.io/os'] !== 'linux') continue;
    if (!gateways.some((g) => matchesLabels(g.spec.nodeSelector ?? {}, labels))) continue;
    if (node.metadata?.name) names.add(node.metadata.name);
    for (const address of node.status?.addresses ?? []) {
      if (address.type === 'InternalIP') names.add(address.address);
    }
  }
  return [...names].sort();
}

export interface AgentCertificateReconcilerOptions {
  kubeConfig: KubeConfig;
  /** Holds the agents' Secret. */
  secrets: { get(key: string): V1Secret | undefined };
  gateways: { list(): EgressGateway[] };
  nodes: { list(): V1Node[] };
  /**
   * The CA that signs it, when there is one yet: the operator's own (in the webhook's Secret), or
   * the one cert-manager keeps for the webhook (operator/controllers.ts).
   */
  ca: () => KeyPair | undefined;
  /** The agents' Secret. */
  secretName: string;
  namespace: string;
  log: Logger;
  now?: () => Date;
}

export class AgentCertificateReconciler {
  readonly #o: AgentCertificateReconcilerOptions;
  readonly #core: CoreV1Api;

  constructor(options: AgentCertificateReconcilerOptions) {
    this.#o = options;
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
  }

  async reconcile(): Promise<ReconcileResult> {
    const { namespace, secretName, log } = this.#o;
    const now = (this.#o.now ?? (() => new Date()))();
    const ca = this.#o.ca();
    // Whoever makes the CA, its Secret changing brings this one back.
    if (!ca) return {};
    const secret = this.#o.secrets.get(`${namespace}/${secretName}`);
    if (!secret) throw new Error(`the agents' certificate Secret ${namespace}/${secretName} does not exist`);
    const names = agentNames(this.#o.gateways.list(), this.#o.nodes.list());
    // No gateway node yet: nothing to name. A node or gateway that comes brings this one back.
    if (!names.length) return {};

    let serving = tlsPairOf(secret);
    const sameCa = secret.data?.[secretKeys.caCert] === Buffer.from(ca.cert).toString('base64');
    if (!serving || !sameCa || !usable(ca, serving, names, new Date(now.getTime() + renewBefore))) {
      serving = makeServing(ca, names, lifetime(now, servingLifetime));
      const data = { [secretKeys.caCert]: ca.cert, [secretKeys.cert]: serving.cert, [secretKeys.key]: serving.key };
      // A replace with the cached resourceVersion: if another writer got there first, this fails
      // with a conflict and the next reconcile looks again.
      await this.#core.replaceNamespacedSecret({
        name: secretName,
        namespace,
        body: {
          ...secret,
          data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
        },
      });
      log.info("Issued the gateway agents' certificate", { secret: secretName, names: names.length });
    }
    return { requeueAfterMs: nextLook(now, [ca.cert, serving.cert]) };
  }
}
