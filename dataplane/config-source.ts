// Where the agent's config text comes from: a file (standalone, re-read when it changes) or, in a
// cluster, its gateway's ConfigMap, watched through the apiserver so that a change reaches the
// node in milliseconds rather than at the kubelet's next sync of a mounted volume.
import { readFile } from 'node:fs/promises';
import type { KubeConfig, V1ConfigMap } from '@kubernetes/client-node';

export interface ConfigSource {
  stop(): void;
  /**
   * Whether the source was last seen deleted (a ConfigMap whose deletion the watch delivered, or
   * that a read no longer found); a file is never deleted in this sense.
   */
  deleted(): boolean;
}

/** Calls `onText` with the file's text now and whenever it changes (checked every `pollMs`). */
export function watchFile(
  path: string,
  pollMs: number,
  onText: (text: string) => void,
  onError: (error: Error) => void,
): ConfigSource {
  let last: string | undefined;
  const check = () =>
    readFile(path, 'utf8').then((text) => {
      if (text !== last) onText((last = text));
    }, onError);
  void check();
  const timer = setInterval(() => void check(), pollMs);
  return { stop: () => clearInterval(timer), deleted: () => false };
}

/**
 * Calls `onText` with the ConfigMap's `key` now and whenever it changes, and `onError` when the
 * ConfigMap has no `key`; a deleted ConfigMap leaves the last text in force, and `deleted()` says
 * so until the ConfigMap is back. The shared informer
 * keeps the watch: it restarts after any error (and logs it), and reads the object afresh after
 * `resyncMs` without a word from the apiserver, in case a watch goes silent without an error.
 */
export async function watchConfigMap(
  kubeConfig: KubeConfig,
  namespace: string,
  name: string,
  key: string,
  onText: (text: string) => void,
  onError: (error: Error) => void,
  resyncMs = 60_000,
): Promise<ConfigSource> {
  // Loaded here: a standalone agent, which reads a file, does without the Kubernetes client.
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const { apiListerWatcher, Informer } = await import('../common/kube/index.ts');
  const core = kubeConfig.makeApiClient(CoreV1Api);
  let deleted = false;
  const source = apiListerWatcher<V1ConfigMap>(kubeConfig, {
    path: `/api/v1/namespaces/${namespace}/configmaps`,
    fieldSelector: `metadata.name=${name}`,
    // The node's Role grants get and watch on this one ConfigMap, not list: the "list" reads it.
    list: async (_page, options) => {
      const configMap = await core.readNamespacedConfigMap({ name, namespace }, options).catch((error: unknown) => {
        if ((error as { code?: number }).code === 404) deleted = true;
        throw error;
      });
      return { items: [configMap], metadata: { resourceVersion: configMap.metadata?.resourceVersion ?? '' } };
    },
  });
  const informer = new Informer(source, { kind: 'ConfigMap', silenceMs: resyncMs });
  let last: string | undefined;
  // Called for each version a change involves; only the one now cached counts, and none when the
  // ConfigMap was deleted.
  informer.onChange((cacheKey, configMap) => {
    const cached = informer.get(cacheKey);
    deleted = cached === undefined;
    if (cached !== configMap) return;
    const text = configMap.data?.[key];
    if (text === undefined) onError(new Error(`configmap ${namespace}/${name} has no ${key}`));
    else if (text !== last) onText((last = text));
  });
  informer.start();
  return { stop: () => void informer.stop(), deleted: () => deleted };
}
