import type { KubernetesObject, KubernetesObjectApi, V1ConfigMap } from '@kubernetes/client-node';
import { ConfigMapWriter } from './objects.ts';

/** The ConfigMaps as the operator's cache holds them, and the requests the writer made. */
function setUp() {
  const cache = new Map<string, V1ConfigMap>();
  const requests: string[] = [];
  const objects = {
    patch: async (object: KubernetesObject) => {
      requests.push(`apply ${object.metadata!.name}`);
      return object;
    },
    delete: async (object: KubernetesObject) => {
      requests.push(`delete ${object.metadata!.name}`);
      return object;
    },
  } as unknown as KubernetesObjectApi;
  const writer = new ConfigMapWriter(objects, { get: (key) => cache.get(key) });
  const configMap = (text: string) => ({
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: { name: 'node-a', namespace: 'naat-system' },
    data: { 'config.json': text },
  });
  /** The watch event of what was written, as it reaches the cache. */
  const stored = (text: string) => cache.set('naat-system/node-a', { data: { 'config.json': text } });
  return { writer, requests, configMap, stored, cache };
}

describe('the ConfigMap writer', () => {
  test('writes a ConfigMap once; the same data again is no request while the cache holds it', async () => {
    const { writer, requests, configMap, stored } = setUp();
    expect(await writer.apply(configMap('a'), 'A')).toBe(true);
    stored('a');
    expect(await writer.apply(configMap('a'), 'A')).toBe(false);
    expect(await writer.apply(configMap('b'), 'B')).toBe(true);
    expect(requests).toEqual(['apply node-a', 'apply node-a']);
  });

  test('writes again what the cache holds otherwise: edited or deleted by another hand', async () => {
    const { writer, requests, configMap, stored, cache } = setUp();
    await writer.apply(configMap('a'), 'A');
    stored('edited');
    expect(await writer.apply(configMap('a'), 'A')).toBe(true);
    cache.delete('naat-system/node-a');
    expect(await writer.apply(configMap('a'), 'A')).toBe(true);
    stored('a');
    cache.set('naat-system/node-a', { data: { 'config.json': 'a', extra: 'x' } });
    expect(await writer.apply(configMap('a'), 'A')).toBe(true);
    expect(requests).toHaveLength(4);
  });

  test('writes data that changed and changed back before the cache saw the change', async () => {
    const { writer, requests, configMap, stored } = setUp();
    await writer.apply(configMap('a'), 'A');
    stored('a');
    await writer.apply(configMap('b'), 'B');
    // The cache still holds "a", but "b" is what is stored.
    expect(await writer.apply(configMap('a'), 'A')).toBe(true);
    expect(requests).toHaveLength(3);
  });

  test('a ConfigMap it deleted is written anew, whatever a late cache still holds', async () => {
    const { writer, requests, configMap, stored } = setUp();
    await writer.apply(configMap('a'), 'A');
    stored('a');
    await writer.delete(configMap('a'));
    expect(await writer.apply(configMap('a'), 'A')).toBe(true);
    expect(requests).toEqual(['apply node-a', 'delete node-a', 'apply node-a']);
  });

  test('what another operator wrote before this one ran is written once by this one', async () => {
    const { writer, requests, configMap, stored } = setUp();
    stored('a');
    expect(await writer.apply(configMap('a'), 'A')).toBe(true);
    expect(await writer.apply(configMap('a'), 'A')).toBe(false);
    expect(requests).toHaveLength(1);
  });
});
