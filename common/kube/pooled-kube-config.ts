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
  // The material of the last call, compared as it is: hashing it is most of what this costs a
  // call (a Buffer's JSON is an array of its bytes), and it changes only when a file is rotated.
  let last: { parts: unknown[]; pool: unknown } | undefined;
  internals.createDispatcher = (cluster, options) => {
    const { ca, cert, key: privateKey, pfx, servername } = options;
    const parts = [
      config.getCurrentCluster()?.server,
      config.getCurrentUser()?.name,
      ca,
      cert,
      privateKey,
      pfx,
      servername,
    ];
    if (last && parts.every((part, i) => same(part, last!.parts[i]))) return last.pool;
    const tls = createHash('sha256')
      .update(JSON.stringify(parts.slice(2)))
      .digest('hex');
    const key = JSON.stringify([...parts.slice(0, 2), tls]);
    if (!pools.has(key)) pools.set(key, create(cluster, options));
    last = { parts, pool: pools.get(key) };
    return last.pool;
  };
  return config;
}

/** Whether two pieces of TLS material (strings, Buffers, lists of them) are the same. */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (Buffer.isBuffer(a) && Buffer.isBuffer(b)) return a.equals(b);
  return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((item, i) => same(item, b[i]));
}
