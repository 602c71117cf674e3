// Where the agent's config text comes from: a file (standalone, re-read when it changes) or, in a
// cluster, its ConfigMaps (a node's config, or a gateway's index and slices), watched through the
// apiserver so that a change reaches the node in milliseconds rather than at the kubelet's next
// sync of a mounted volume.
import { readFile } from 'node:fs/promises';
import type { KubeConfig, V1ConfigMap } from '@kubernetes/client-node';
import {
  agentConfigKey,
  assembleConfig,
  configIndexKey,
  configSliceKey,
  sliceHash,
  type ConfigIndex,
} from '../contracts/gateway/index.ts';

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
 * so until the ConfigMap is back.
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
  let last: string | undefined;
  return watchData(
    kubeConfig,
    namespace,
    name,
    (data) => {
      const text = data[key];
      if (text === undefined) onError(new Error(`configmap ${namespace}/${name} has no ${key}`));
      else if (text !== last) onText((last = text));
    },
    resyncMs,
  );
}

/**
 * Calls `onText` with a gateway's config, from its ConfigMap `name`, now and whenever it changes.
 * The operator stores it as an index (configIndexKey) and slices, each a ConfigMap of its own
 * (contracts/gateway/slices.ts): each slice the index names is watched by its name too (the
 * agent's Role grants nothing else), and the config is handed on, assembled, only once every
 * slice is the version the index names. A half-written set (new slices and the old index, or a
 * new index whose new slices have not arrived) is waited out, and the last config stays in force.
 * A ConfigMap with the whole config (agentConfigKey, written by hand) is handed on as it is.
 * `deleted()` says whether the gateway's ConfigMap was last seen deleted.
 */
export async function watchGatewayConfig(
  kubeConfig: KubeConfig,
  namespace: string,
  name: string,
  onText: (text: string) => void,
  onError: (error: Error) => void,
  resyncMs = 60_000,
): Promise<ConfigSource> {
  let last: string | undefined;
  let index: ConfigIndex | undefined;
  const slices = new Map<string, FollowedSlice>();
  const deliver = (text: string) => {
    if (text !== last) onText((last = text));
  };
  const assemble = () => {
    if (!index) return;
    const complete = index.slices.every(({ name, hash }) => slices.get(name)?.hash === hash);
    if (!complete) return;
    const texts = new Map(index.slices.map(({ name }) => [name, slices.get(name)!.text!]));
    try {
      deliver(JSON.stringify(assembleConfig(index, texts)));
    } catch (error) {
      onError(error as Error);
    }
  };
  const follow = (slice: string) => {
    const entry: FollowedSlice = {};
    slices.set(slice, entry);
    void watchData(
      kubeConfig,
      namespace,
      slice,
      (data) => {
        const text = data[configSliceKey];
        if (text === undefined) return onError(new Error(`configmap ${namespace}/${slice} has no ${configSliceKey}`));
        if (text === entry.text) return;
        Object.assign(entry, { text, hash: sliceHash(text) });
        assemble();
      },
      resyncMs,
    ).then((source) => {
      if (entry.stopped) source.stop();
      else entry.source = source;
    }, onError);
  };
  const unfollow = (slice: string) => {
    const entry = slices.get(slice)!;
    entry.stopped = true;
    entry.source?.stop();
    slices.delete(slice);
  };
  const source = await watchData(
    kubeConfig,
    namespace,
    name,
    (data) => {
      const whole = data[agentConfigKey];
      const indexText = data[configIndexKey];
      if (whole !== undefined) {
        index = undefined;
        for (const slice of [...slices.keys()]) unfollow(slice);
        return deliver(whole);
      }
      if (indexText === undefined)
        return onError(new Error(`configmap ${namespace}/${name} has neither ${configIndexKey} nor ${agentConfigKey}`));
      let parsed: ConfigIndex;
      try {
        parsed = JSON.parse(indexText) as ConfigIndex;
        if (!Array.isArray(parsed.slices)) throw new Error('it names no slices');
      } catch (error) {
        return onError(new Error(`configmap ${namespace}/${name}: ${configIndexKey}: ${(error as Error).message}`));
      }
      index = parsed;
      const named = new Set(index.slices.map((s) => s.name));
      for (const slice of [...slices.keys()]) if (!named.has(slice)) unfollow(slice);
      for (const slice of named) if (!slices.has(slice)) follow(slice);
      assemble();
    },
    resyncMs,
  );
  return {
    stop: () => {
      source.stop();
      for (const slice of [...slices.keys()]) unfollow(slice);
    },
    deleted: () => source.deleted(),
  };
}

/** A slice the index names: its watch (once started), its last text and that text's hash. */
interface FollowedSlice {
  source?: ConfigSource;
  text?: string;
  hash?: string;
  /** No longer named: a watch still starting is stopped as soon as it has. */
  stopped?: boolean;
}

/**
 * Calls `onData` with the ConfigMap's data now and whenever it changes; a deleted ConfigMap
 * leaves the last in force, and `deleted()` says so until the ConfigMap is back. The shared
 * informer keeps the watch: it restarts after any error (and logs it), and reads the object
 * afresh after `resyncMs` without a word from the apiserver, in case a watch goes silent without
 * an error.
 */
async function watchData(
  kubeConfig: KubeConfig,
  namespace: string,
  name: string,
  onData: (data: Record<string, string>) => void,
  resyncMs: number,
): Promise<ConfigSource> {
  // Loaded here: a standalone agent, which reads a file, does without the Kubernetes client.
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const { apiListerWatcher, Informer, statusCode } = await import('../common/kube/index.ts');
  const core = kubeConfig.makeApiClient(CoreV1Api);
  let deleted = false;
  const byName = apiListerWatcher<V1ConfigMap>(kubeConfig, {
    path: `/api/v1/namespaces/${namespace}/configmaps`,
    fieldSelector: `metadata.name=${name}`,
    // The agent's Role grants get and watch on its ConfigMaps by name, not list: the "list" reads it.
    list: async (_page, options) => {
      const configMap = await core.readNamespacedConfigMap({ name, namespace }, options).catch((error: unknown) => {
        if ((error as { code?: number }).code === 404) deleted = true;
        throw error;
      });
      return { items: [configMap], metadata: { resourceVersion: configMap.metadata?.resourceVersion ?? '' } };
    },
  });
  // The "list" gives the object's own resourceVersion, not the collection's. Once the apiserver
  // holds no changes from it (the object unchanged for long, or its watch cache fresh after a
  // restart), a watch from it ends at once in 410 Gone and reading the object again gives the same
  // version: every agent would ask again and again. A watch from such a version starts at "0"
  // instead: the apiserver sends the object as it holds it now, then its changes.
  let expired: string | undefined;
  const source: typeof byName = {
    ...byName,
    watch: (resourceVersion, onEvent, signal) => {
      const gone = () => (expired = resourceVersion);
      const from = resourceVersion === expired ? '0' : resourceVersion;
      return byName
        .watch(
          from,
          (type, object) => {
            if (type === 'ERROR' && (object as { code?: number }).code === 410) gone();
            onEvent(type, object);
          },
          signal,
        )
        .catch((error: unknown) => {
          if (statusCode(error) === 410) gone();
          throw error;
        });
    },
  };
  const informer = new Informer(source, { kind: 'ConfigMap', silenceMs: resyncMs });
  // Called for each version a change involves; only the one now cached counts, and none when the
  // ConfigMap was deleted.
  informer.onChange((cacheKey, configMap) => {
    const cached = informer.get(cacheKey);
    deleted = cached === undefined;
    if (cached !== configMap) return;
    onData(configMap.data ?? {});
  });
  informer.start();
  return { stop: () => void informer.stop(), deleted: () => deleted };
}
