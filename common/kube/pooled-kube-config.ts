// A KubeConfig whose API calls share one connection pool. client-node 2.0.1 makes a new undici
// Agent, and so a new TLS connection, for every API call (KubeConfig.createDispatcher is called
// from applySecurityAuthentication each time and caches nothing); the abandoned agents keep their
// sockets and buffers until the apiserver closes them. At a few hundred status writes that was
// hundreds of sockets and hundreds of MiB in the operator. Here the dispatcher is kept per
// cluster, user and TLS material, so a rotated client certificate still gets a fresh pool.
import { KubeConfig } from '@kubernetes/client-node';
import { createHash } from 'node:crypto';
import type { AgentOptions } from 'node:https';

type CreateDispatcher = (cluster: unknown, options: AgentOptions) => unknown;

/** `new KubeConfig()` loaded from the default places (in-cluster, KUBECONFIG), pooling connections. */
export function pooledKubeConfig(): KubeConfig {
  const config = new KubeConfig();
  config.loadFromDefault();
  const internals = config as unknown as { createDispatcher: CreateDispatcher };
  const create = internals.createDispatcher.bind(config);
  const pools = new Map<string, unknown>();
  internals.createDispatcher = (cluster, options) => {
    const tls = createHash('sha256')
      .update(JSON.stringify([options.ca, options.cert, options.key, options.pfx, options.servername]))
      .digest('hex');
    const key = JSON.stringify([config.getCurrentCluster()?.server, config.getCurrentUser()?.name, tls]);
    if (!pools.has(key)) pools.set(key, create(cluster, options));
    return pools.get(key);
  };
  return config;
}
