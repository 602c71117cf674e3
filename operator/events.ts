// Kubernetes Events about naat's objects, for what a user should notice: a new compiled config, a
// conflict that appeared, an uplink whose health changed, a failover address that moved, and about
// served pods whose flows are not steered to their gateway. Each change is told once.
import { EventsV1Api, V1MicroTime, type KubeConfig } from '@kubernetes/client-node';
import { group, version, type Kind } from '../crds/index.ts';
import { errorText, type Logger } from '../common/index.ts';
import { namespaceTerminating, statusCode } from '../common/kube/index.ts';

export interface EventRecorderOptions {
  kubeConfig: KubeConfig;
  /** This replica, as the reporting instance of its Events. */
  identity: string;
  log: Logger;
  now?: () => Date;
}

type Regarding = { metadata: { name: string; namespace?: string; uid?: string } };
/** naat's kinds, and the pods it serves. */
type EventKind = Kind | 'Pod';
type NamedEvent = { name: string; type: 'Normal' | 'Warning'; reason: string; action: string; note: string };

export class EventRecorder {
  readonly #o: EventRecorderOptions;
  readonly #events: EventsV1Api;
  /** The last Event note of each object by reason, so that one change is told once. */
  readonly #told = new Map<string, Map<string, string>>();

  constructor(options: EventRecorderOptions) {
    this.#o = options;
    this.#events = options.kubeConfig.makeApiClient(EventsV1Api);
  }

  /**
   * Records an Event unless the last one of this object and reason said the same. Never throws:
   * an Event is a courtesy, and failing to record one must not fail the reconcile.
   */
  async record(
    kind: EventKind,
    object: Regarding,
    type: 'Normal' | 'Warning',
    reason: string,
    action: string,
    note: string,
  ): Promise<void> {
    // The caches may not show the status this replica just wrote: remember what was told.
    const key = toldKey(kind, object.metadata);
    let told = this.#told.get(key);
    if (told?.get(reason) === note) return;
    if (!told) this.#told.set(key, (told = new Map()));
    told.set(reason, note);
    const now = this.#o.now?.() ?? new Date();
    // Named as Kubernetes names its own events: the object's name and a timestamp in hex.
    const name = `${object.metadata.name}.${(now.getTime() * 1000 + Math.floor(Math.random() * 1000)).toString(16)}`;
    await this.#create(kind, object, { name, type, reason, action, note }, now).catch((error: unknown) =>
      this.#failed(reason, object, error),
    );
  }

  /**
   * Records an Event under a name of the caller's, which says what it tells (one claim of a
   * failover address, say), so that it is told once whichever replica tells it and however often.
   * Resolves `created` when this call made it, `exists` when it was there already (whoever made
   * it), `failed` when it could not be made (logged; the caller tries again later). Never throws.
   */
  async recordOnce(kind: EventKind, object: Regarding, event: NamedEvent): Promise<'created' | 'exists' | 'failed'> {
    try {
      await this.#create(kind, object, event, this.#o.now?.() ?? new Date());
      return 'created';
    } catch (error) {
      if (statusCode(error) === 409) return 'exists';
      this.#failed(event.reason, object, error);
      return 'failed';
    }
  }

  async #create(kind: EventKind, object: Regarding, event: NamedEvent, now: Date): Promise<void> {
    await this.#events.createNamespacedEvent({
      // Events of cluster-scoped objects go to the default namespace, as Kubernetes does.
      namespace: object.metadata.namespace ?? 'default',
      body: {
        metadata: { name: event.name },
        eventTime: new V1MicroTime(now.getTime()),
        type: event.type,
        reason: event.reason,
        action: event.action,
        note: event.note.slice(0, 1024),
        regarding: {
          apiVersion: kind === 'Pod' ? 'v1' : `${group}/${version}`,
          kind,
          name: object.metadata.name,
          ...(object.metadata.namespace ? { namespace: object.metadata.namespace } : {}),
          ...(object.metadata.uid ? { uid: object.metadata.uid } : {}),
        },
        reportingController: 'naat.dev/operator',
        reportingInstance: this.#o.identity,
      },
    });
  }

  #failed(reason: string, object: Regarding, error: unknown): void {
    // A pod's namespace being deleted takes its Events with it: no one is left to read this one.
    if (namespaceTerminating(error)) {
      this.#o.log.debug('Dropped an Event for a namespace being deleted', {
        reason,
        object: object.metadata.name,
        namespace: object.metadata.namespace,
      });
      return;
    }
    this.#o.log.error('Failed to record an Event', { reason, object: object.metadata.name, error: errorText(error) });
  }

  /** Forgets what was told of this object and reason, so that its next occurrence is told again. */
  forget(kind: EventKind, object: Regarding, reason: string): void {
    this.#told.get(toldKey(kind, object.metadata))?.delete(reason);
  }
}

const toldKey = (kind: EventKind, object: { namespace?: string; name: string }) =>
  `${kind}/${object.namespace ?? ''}/${object.name}`;
