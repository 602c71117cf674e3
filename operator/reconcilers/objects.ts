// How the reconcilers write the objects they own: server-side apply as the operator's field
// manager (what it no longer sets is removed), and deletes that take an object already gone as done.
import { PatchStrategy, type KubernetesObject, type KubernetesObjectApi } from '@kubernetes/client-node';
import { objectKey, statusCode } from '../../common/kube/index.ts';
import type { Caches } from '../caches.ts';
import type { ApiObject } from '../desired.ts';
import { fieldManager } from '../status-writer.ts';

/** Applies the object as the operator has it, and returns it as stored. */
export function applyObject(objects: KubernetesObjectApi, object: ApiObject): Promise<KubernetesObject> {
  return objects.patch(
    object as KubernetesObject,
    undefined,
    undefined,
    fieldManager,
    true,
    PatchStrategy.ServerSideApply,
  );
}

/** Deletes the object; one already gone is what was wanted. */
export async function deleteObject(objects: KubernetesObjectApi, object: ApiObject): Promise<void> {
  try {
    await objects.delete(object as KubernetesObject);
  } catch (error) {
    if (statusCode(error) !== 404) throw error;
  }
}

/** Where a writer finds the objects of one kind as its cache holds them, by cache key; none for kinds it does not cache. */
export type CacheOf = (kind: string) => { get(key: string): KubernetesObject | undefined } | undefined;

/**
 * Writes the objects the operator owns, each only when it is not stored as this operator last
 * wrote it: every change compiles all of them, and applying each again, unchanged, would cost a
 * request per object on every change (a thousand node configs at a thousand nodes; a gateway's
 * ServiceAccount, Role and RoleBinding, one after another, before each new config). Stored as
 * last written means: this operator wrote the same object (by its digest) and the cache holds the
 * resourceVersion that write returned, so nothing changed it since. An object edited or deleted by
 * another hand, written by another operator before this one ran, or changed and changed back
 * before the cache saw the change, is applied again; one of a kind without a cache, every time.
 */
export class ObjectWriter {
  readonly #objects: KubernetesObjectApi;
  readonly #cacheOf: CacheOf;
  /** What this operator last wrote of each object, by kind and cache key. */
  readonly #written = new Map<string, { digest: string; resourceVersion: string | undefined }>();

  constructor(objects: KubernetesObjectApi, cacheOf: CacheOf) {
    this.#objects = objects;
    this.#cacheOf = cacheOf;
  }

  /**
   * Applies the object unless it is stored as last written; returns it as stored, or undefined
   * when nothing was written. `digest` names it (compiled data carries its hash, so that none is
   * computed here); by default, its JSON.
   */
  async apply(object: ApiObject, digest = JSON.stringify(object)): Promise<KubernetesObject | undefined> {
    const key = writtenKey(object.kind, object as KubernetesObject);
    const written = this.#written.get(key);
    const cached = this.#cacheOf(object.kind)?.get(objectKey(object as KubernetesObject));
    if (
      written?.digest === digest &&
      written.resourceVersion !== undefined &&
      cached?.metadata?.resourceVersion === written.resourceVersion
    )
      return undefined;
    const stored = await applyObject(this.#objects, object);
    this.#written.set(key, { digest, resourceVersion: stored.metadata?.resourceVersion });
    return stored;
  }

  /** Deletes the object, and what was written of it. */
  async delete(object: ApiObject): Promise<void> {
    this.#written.delete(writtenKey(object.kind, object as KubernetesObject));
    await deleteObject(this.#objects, object);
  }
}

const writtenKey = (kind: string, object: KubernetesObject) => `${kind}/${objectKey(object)}`;

/**
 * A writer of the objects the operator owns, by the caches it keeps of them: `configMaps` for the
 * ConfigMaps it compiles (a gateway's slices, or the node configs). ClusterRoleBindings are
 * written every time: the operator reads none.
 */
export function ownedObjectWriter(
  objects: KubernetesObjectApi,
  caches: Caches,
  configMaps: Caches['gatewayConfigSlices'],
): ObjectWriter {
  const byKind: Record<string, ReturnType<CacheOf>> = {
    ConfigMap: configMaps,
    DaemonSet: caches.daemonSets,
    ServiceAccount: caches.serviceAccounts,
    Role: caches.roles,
    RoleBinding: caches.roleBindings,
  };
  return new ObjectWriter(objects, (kind) => byKind[kind]);
}

export function partition<T>(items: readonly T[], first: (item: T) => boolean): [T[], T[]] {
  return [items.filter(first), items.filter((item) => !first(item))];
}
