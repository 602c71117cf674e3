// The pods the webhook gave the sidecar: a status condition that says which association mode each
// is in and why, where `kubectl describe pod` shows it. Other pods are passed over.
import type { V1Pod } from '@kubernetes/client-node';
import type { Informer } from '../../common/kube/index.ts';
import { associationModeCondition } from '../status.ts';
import type { StatusWriter } from '../status-writer.ts';

export interface AssociationModeReconcilerOptions {
  pods: Pick<Informer<V1Pod>, 'get'>;
  status: StatusWriter;
  now?: () => Date;
}

export class AssociationModeReconciler {
  readonly #o: AssociationModeReconcilerOptions;

  constructor(options: AssociationModeReconcilerOptions) {
    this.#o = options;
  }

  /** Written once, and again only if what it says changes. */
  async reconcile(key: string): Promise<void> {
    const pod = this.#o.pods.get(key);
    if (!pod?.metadata?.name || !pod.metadata.namespace) return;
    const wanted = associationModeCondition(pod.metadata.annotations);
    if (!wanted) return;
    const existing = pod.status?.conditions?.find((c) => c.type === wanted.type);
    if (
      existing?.status === wanted.status &&
      existing.reason === wanted.reason &&
      existing.message === wanted.message
    ) {
      return;
    }
    await this.#o.status.applyPodCondition(
      { name: pod.metadata.name, namespace: pod.metadata.namespace },
      { ...wanted, lastTransitionTime: this.#o.now?.() ?? new Date() },
    );
  }
}
