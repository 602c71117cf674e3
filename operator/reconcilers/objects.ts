// How the reconcilers write the objects they own: server-side apply as the operator's field
// manager (what it no longer sets is removed), and deletes that take an object already gone as done.
import {
  PatchStrategy,
  type KubernetesObject,
  type KubernetesObjectApi,
  type V1ConfigMap,
} from '@kubernetes/client-node';
import { statusCode } from '../../common/kube/index.ts';
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

/**
 * Writes ConfigMaps of compiled data (a gateway's config slices, the node agents' configs), each
 * only when it is not stored as desired already: every change compiles all of them, and applying
 * each again, unchanged, would cost a request per slice or node on every change (a thousand at a
 * thousand nodes). Stored as desired means: this operator wrote this data (the cache alone could
 * be behind a write of its own, when data changed and changed back) and the cache holds it so (what
 * was written alone says nothing of a ConfigMap deleted or edited since, which its watch then
 * brings back here).
 */
export class ConfigMapWriter {
  readonly #objects: KubernetesObjectApi;
  readonly #cache: { get(key: string): V1ConfigMap | undefined };
  /** The digest of each ConfigMap's data as this operator last wrote it, by namespace/name. */
  readonly #written = new Map<string, string>();

  constructor(objects: KubernetesObjectApi, cache: { get(key: string): V1ConfigMap | undefined }) {
    this.#objects = objects;
    this.#cache = cache;
  }

  /**
   * Applies the ConfigMap unless it is stored as desired; returns whether it was applied. `digest`
   * names its data (the hash the compiled config carries), so that none is computed here.
   */
  async apply(configMap: ApiObject, digest: string): Promise<boolean> {
    const key = `${configMap.metadata.namespace}/${configMap.metadata.name}`;
    const data = configMap.data as Record<string, string>;
    if (this.#written.get(key) === digest && sameData(this.#cache.get(key)?.data, data)) return false;
    await applyObject(this.#objects, configMap);
    this.#written.set(key, digest);
    return true;
  }

  /** Deletes the ConfigMap, and what was written of it. */
  async delete(configMap: ApiObject): Promise<void> {
    this.#written.delete(`${configMap.metadata.namespace}/${configMap.metadata.name}`);
    await deleteObject(this.#objects, configMap);
  }
}

function sameData(stored: Record<string, string> | undefined, desired: Record<string, string>): boolean {
  if (!stored) return false;
  const keys = Object.keys(desired);
  return Object.keys(stored).length === keys.length && keys.every((key) => stored[key] === desired[key]);
}
