// What the agent knows of the applications behind flows: the associations the sidecars reported,
// by (source address, transport, source port), and in strict mode the application of each stamp
// a pod's packets carry.
import type { Application } from '../proto/index.ts';
import { sourceKey } from './flow-key.ts';
import type { FlowAssociation, StampedApplication } from './render.ts';

/** The key of an association's flow (flow-key.ts), which logs show too. */
export const flowKey = (a: Pick<FlowAssociation, 'sourceAddress' | 'transport' | 'sourcePort'>) =>
  sourceKey(a.transport, a.sourceAddress, a.sourcePort);

export class Associations {
  readonly #byFlow = new Map<string, FlowAssociation>();
  /** Strict mode: the application of each stamp, by pod address then stamp. */
  readonly #stamps = new Map<string, Map<number, Application>>();
  #strict = new Set<string>();

  /**
   * A stamp lives as long as its pod: when an address leaves strict mode (its pod is gone), its
   * stamps go, so a new pod that reuses the address starts without any. An address not yet in
   * the config keeps them: a new pod's sidecar announces stamps before the config names the pod.
   */
  setStrictSources(sources: readonly string[]): void {
    const strict = new Set(sources);
    for (const address of this.#strict) if (!strict.has(address)) this.#stamps.delete(address);
    this.#strict = strict;
  }

  /** Replaces associations: `remove` first, then `upsert`, each keyed by its flow's source. */
  replace(upsert: readonly FlowAssociation[], remove: readonly FlowAssociation[]): void {
    for (const a of remove) this.#byFlow.delete(flowKey(a));
    for (const a of upsert) this.#byFlow.set(flowKey(a), a);
  }

  /** Packets of `addresses` stamped `stamp` come from `application`. */
  stamp(addresses: readonly string[], stamp: number, application: Application): void {
    for (const address of addresses) {
      const stamps = this.#stamps.get(address) ?? new Map<number, Application>();
      stamps.set(stamp, application);
      this.#stamps.set(address, stamps);
    }
  }

  /** The association of the flow from this source, if any. */
  of(sourceAddress: string, transport: string, sourcePort: number | undefined): FlowAssociation | undefined {
    return this.#byFlow.get(sourceKey(transport, sourceAddress, sourcePort));
  }

  /** Forgets the association of a flow that ended; true when it had one. */
  expire(sourceAddress: string, transport: string, sourcePort: number | undefined): boolean {
    return this.#byFlow.delete(sourceKey(transport, sourceAddress, sourcePort));
  }

  list(): FlowAssociation[] {
    return [...this.#byFlow.values()];
  }

  stamps(): StampedApplication[] {
    return [...this.#stamps].flatMap(([address, stamps]) =>
      [...stamps].map(([stamp, application]) => ({ address, stamp, application })),
    );
  }

  get size(): number {
    return this.#byFlow.size;
  }
}
