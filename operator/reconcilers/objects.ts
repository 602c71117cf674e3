// How the reconcilers write the objects they own: server-side apply as the operator's field
// manager (what it no longer sets is removed), and deletes that take an object already gone as done.
import { PatchStrategy, type KubernetesObject, type KubernetesObjectApi } from '@kubernetes/client-node';
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
