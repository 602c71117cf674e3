// The Kubernetes side of the shared infrastructure: a connection-pooling KubeConfig, the
// list + watch informer that keeps a cache of one resource, and the request helpers they use.
// It loads @kubernetes/client-node; a component loads it only where it talks to the apiserver.
export {
  apiListerWatcher,
  Informer,
  objectKey,
  splitKey,
  type ApiListerWatcherOptions,
  type ChangeHandler,
  type InformerOptions,
  type ListerWatcher,
  type ListPage,
} from './informer.ts';
export { pooledKubeConfig } from './pooled-kube-config.ts';
export { namespaceTerminating, statusCode, withSignal } from './request.ts';
