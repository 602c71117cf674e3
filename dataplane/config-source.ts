// Where the agent's config text comes from: a file (standalone, re-read when it changes) or, in a
// cluster, its gateway's ConfigMap, watched through the apiserver so that a change reaches the
// node in milliseconds rather than at the kubelet's next sync of a mounted volume.
import { readFile } from 'node:fs/promises';
import type { KubeConfig } from '@kubernetes/client-node';

export interface ConfigSource {
  stop(): void;
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
  return { stop: () => clearInterval(timer) };
}

/**
 * Calls `onText` with the ConfigMap's `key` now and whenever it changes. The watch is restarted
 * after any error or end, and the object is read afresh every `resyncMs` in case a watch goes
 * silent without an error.
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
  const { CoreV1Api, Watch } = await import('@kubernetes/client-node');
  const api = kubeConfig.makeApiClient(CoreV1Api);
  const watch = new Watch(kubeConfig);
  let last: string | undefined;
  let stopped = false;
  let request: { abort(): void } | undefined;
  let retry: NodeJS.Timeout | undefined;
  const take = (data: Record<string, string> | undefined) => {
    const text = data?.[key];
    if (text === undefined) onError(new Error(`configmap ${namespace}/${name} has no ${key}`));
    else if (text !== last) onText((last = text));
  };
  const start = async () => {
    try {
      const configMap = await api.readNamespacedConfigMap({ name, namespace });
      take(configMap.data);
      request = await watch.watch(
        `/api/v1/namespaces/${namespace}/configmaps`,
        { fieldSelector: `metadata.name=${name}`, resourceVersion: configMap.metadata?.resourceVersion },
        (type, object: { data?: Record<string, string> }) => {
          if (type === 'ADDED' || type === 'MODIFIED') take(object.data);
        },
        // An abort is the periodic resync asking for a fresh read, not a failure.
        (error?: unknown) =>
          restart((error as { name?: string } | undefined)?.name === 'AbortError' ? undefined : error),
      );
    } catch (error) {
      restart(error);
    }
  };
  const restart = (error?: unknown) => {
    if (stopped) return;
    if (error) onError(error instanceof Error ? error : new Error(String(error)));
    clearTimeout(retry);
    retry = setTimeout(() => void start(), error ? 1000 : 0);
  };
  const resync = setInterval(() => {
    request?.abort();
  }, resyncMs);
  await start();
  return {
    stop: () => {
      stopped = true;
      clearTimeout(retry);
      clearInterval(resync);
      request?.abort();
    },
  };
}
