import type { KubernetesObject, KubernetesObjectApi } from '@kubernetes/client-node';
import { ObjectWriter } from './objects.ts';

/**
 * An apiserver that keeps a resourceVersion per object (unchanged by an apply that changes
 * nothing), the operator's cache of ConfigMaps, and the requests the writer made.
 */
function setUp() {
  const stored = new Map<string, { json: string; resourceVersion: string }>();
  const cache = new Map<string, KubernetesObject>();
  const requests: string[] = [];
  let version = 0;
  const objects = {
    patch: async (object: KubernetesObject) => {
      requests.push(`apply ${object.kind} ${object.metadata!.name}`);
      const key = `${object.kind}/${object.metadata!.name}`;
      const json = JSON.stringify(object);
      const before = stored.get(key);
      const resourceVersion = before?.json === json ? before.resourceVersion : String(++version);
      stored.set(key, { json, resourceVersion });
      return { ...object, metadata: { ...object.metadata, resourceVersion } };
    },
    delete: async (object: KubernetesObject) => {
      requests.push(`delete ${object.kind} ${object.metadata!.name}`);
      stored.delete(`${object.kind}/${object.metadata!.name}`);
      return object;
    },
  } as unknown as KubernetesObjectApi;
  const writer = new ObjectWriter(objects, (kind) => (kind === 'ConfigMap' ? cache : undefined));
  const configMap = (text: string) => ({
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: 'node-a', namespace: 'naat-system' },
    data: { 'config.json': text },
  });
  /** The watch event of what the apiserver holds now, as it reaches the cache. */
  const watched = () => {
    const now = stored.get('ConfigMap/node-a');
    if (!now) cache.delete('naat-system/node-a');
    else cache.set('naat-system/node-a', { metadata: { resourceVersion: now.resourceVersion } });
  };
  /** Another hand's edit, as the apiserver stores it. */
  const edit = () => stored.set('ConfigMap/node-a', { json: 'edited', resourceVersion: String(++version) });
  return { writer, requests, configMap, watched, edit, cache };
}

describe('the object writer', () => {
  test('writes an object once; the same again is no request while the cache holds that write', async () => {
    const { writer, requests, configMap, watched } = setUp();
    expect(await writer.apply(configMap('a'), 'A')).toBeDefined();
    watched();
    expect(await writer.apply(configMap('a'), 'A')).toBeUndefined();
    expect(await writer.apply(configMap('b'), 'B')).toBeDefined();
    expect(requests).toEqual(['apply ConfigMap node-a', 'apply ConfigMap node-a']);
  });

  test('writes again what the cache holds otherwise: edited or deleted by another hand', async () => {
    const { writer, requests, configMap, watched, edit, cache } = setUp();
    await writer.apply(configMap('a'), 'A');
    edit();
    watched();
    expect(await writer.apply(configMap('a'), 'A')).toBeDefined();
    watched();
    cache.delete('naat-system/node-a');
    expect(await writer.apply(configMap('a'), 'A')).toBeDefined();
    watched();
    expect(await writer.apply(configMap('a'), 'A')).toBeUndefined();
    expect(requests).toHaveLength(3);
  });

  test('writes data that changed and changed back before the cache saw the change', async () => {
    const { writer, requests, configMap, watched } = setUp();
    await writer.apply(configMap('a'), 'A');
    watched();
    await writer.apply(configMap('b'), 'B');
    // The cache still holds the write of "a", but "b" is what is stored.
    expect(await writer.apply(configMap('a'), 'A')).toBeDefined();
    expect(requests).toHaveLength(3);
  });

  test('an object it deleted is written anew, whatever a late cache still holds', async () => {
    const { writer, requests, configMap, watched } = setUp();
    await writer.apply(configMap('a'), 'A');
    watched();
    await writer.delete(configMap('a'));
    expect(await writer.apply(configMap('a'), 'A')).toBeDefined();
    expect(requests).toEqual(['apply ConfigMap node-a', 'delete ConfigMap node-a', 'apply ConfigMap node-a']);
  });

  test('what another operator wrote before this one ran is written once by this one', async () => {
    const { writer, requests, configMap, watched, edit } = setUp();
    edit();
    watched();
    expect(await writer.apply(configMap('a'), 'A')).toBeDefined();
    watched();
    expect(await writer.apply(configMap('a'), 'A')).toBeUndefined();
    expect(requests).toHaveLength(1);
  });

  test('an object of a kind without a cache is written every time', async () => {
    const { writer, requests } = setUp();
    const binding = { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRoleBinding', metadata: { name: 'b' } };
    await writer.apply(binding);
    await writer.apply(binding);
    expect(requests).toEqual(['apply ClusterRoleBinding b', 'apply ClusterRoleBinding b']);
  });
});
