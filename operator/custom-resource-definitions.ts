// The API's CustomResourceDefinitions, put in place by the operator when it starts: Helm installs
// a chart's crds/ only when they are missing and never upgrades them, so the CRDs of a release
// come with its operator instead, generated from the same API source as crds/ (crds/index.ts).
//
// A missing CRD is made by server-side apply to its own name, which RBAC can limit by
// resourceNames (a create by POST could not be). An existing one gets its whole spec replaced:
// Helm made it from crds/, so its fields belong to Helm's field manager, and an apply would
// leave behind any field the new version dropped; a replace leaves nothing of the old spec.
// Labels and annotations others gave it stay. Every replica does this, in any order: each write
// is the same, and a conflict (another replica just wrote) is read again and retried.
import { CustomObjectsApi, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import type { Logger } from '../common/index.ts';
import { statusCode } from '../common/kube/index.ts';
import { customResourceDefinitions } from '../crds/index.ts';
import { fieldManager } from './status-writer.ts';

const attempts = 5;
// Through the untyped custom objects API: the typed client's model of a CRD would drop the
// schema's `default` and `x-kubernetes-*` keys, which it knows by other names.
const resource = { group: 'apiextensions.k8s.io', version: 'v1', plural: 'customresourcedefinitions' };

/** Makes or replaces each of naat's CRDs; throws when one cannot be written. */
export async function applyDefinitions(kubeConfig: KubeConfig, log: Logger): Promise<void> {
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const apply = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);
  for (const desired of customResourceDefinitions()) {
    const name = (desired.metadata as { name: string }).name;
    for (let attempt = 1; ; attempt++) {
      try {
        const current = (await custom.getClusterCustomObject({ ...resource, name }).catch((error: unknown) => {
          if (statusCode(error) === 404) return undefined;
          throw error;
        })) as { metadata: { resourceVersion?: string } } | undefined;
        if (!current) {
          await custom.patchClusterCustomObject({ ...resource, name, body: desired, fieldManager, force: true }, apply);
          log.info('Created a CustomResourceDefinition', { name });
        } else {
          const body = { ...current, spec: desired.spec };
          const replaced = (await custom.replaceClusterCustomObject({ ...resource, name, body, fieldManager })) as {
            metadata: { resourceVersion?: string };
          };
          if (replaced.metadata.resourceVersion !== current.metadata.resourceVersion)
            log.info('Updated a CustomResourceDefinition', { name });
        }
        break;
      } catch (error) {
        if (statusCode(error) !== 409 || attempt === attempts) throw error;
      }
    }
  }
}
