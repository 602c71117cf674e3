import { positiveInteger } from './harness.ts';
import { changedBytes, parseSizes, pieces, shapeOf, sizeAgainstLimit } from './scale-figures.ts';

test('a size sets the shape in the issue’s proportions: 50 pods a node, 10 a policy', () => {
  expect(shapeOf(50_000)).toEqual({
    pods: 50_000,
    namespaces: 1000,
    podsPerNamespace: 50,
    appsPerNamespace: 5,
    policies: 5000,
    workers: 1000,
    nodes: 1002,
  });
  expect(shapeOf(100)).toMatchObject({ workers: 2, policies: 10 });
  expect(() => shapeOf(120)).toThrow('120 pods: a size must be a positive multiple of 50');
});

test('sizes must grow', () => {
  expect(parseSizes('1000, 5000,10000')).toEqual([1000, 5000, 10000]);
  expect(() => parseSizes('5000,1000')).toThrow('the sizes must grow');
  expect(() => parseSizes('1000,x')).toThrow('NaN pods');
  expect(() => positiveInteger('changes', '0')).toThrow('--changes 0: not a positive integer');
});

describe('changedBytes', () => {
  const config = (sources: string[], port = 23) => ({
    version: 1,
    hash: 'sha256:a',
    pods: sources.map((ip, i) => ({ namespace: 'n', name: `p${i}`, addresses: [ip] })),
    rules: [{ policy: 'n/a', rule: 'telnet', sources, destinations: [{ protocol: 'TCP', ports: [{ port }] }] }],
  });

  test('nothing changed, nothing to tell', () => {
    expect(changedBytes(pieces(config(['10.0.0.1'])), pieces(config(['10.0.0.1'])))).toBe(0);
  });

  test('a new pod costs its entry and its address in each rule that selects it, not the whole config', () => {
    const before = pieces(config(['10.0.0.1']));
    const after = pieces(config(['10.0.0.1', '10.0.0.2']));
    // pods[n#p1].namespace "n", .name "p1", .addresses[] "10.0.0.2"; rules[…].sources[] "10.0.0.2"
    expect(changedBytes(before, after)).toBe(3 + 4 + 10 + 10);
  });

  test('an element without a name is one piece: a changed destination is told whole, before and after', () => {
    const destination = JSON.stringify({ protocol: 'TCP', ports: [{ port: 23 }] });
    expect(changedBytes(pieces(config(['10.0.0.1'], 23)), pieces(config(['10.0.0.1'], 24)))).toBe(
      2 * destination.length,
    );
  });
});

test('a ConfigMap is held to 1 MiB of data, any other object to etcd’s 1.5 MiB whole', () => {
  expect(
    sizeAgainstLimit({ kind: 'ConfigMap', metadata: { name: 'c' }, data: { 'config.json': 'x'.repeat(100) } }),
  ).toEqual({ bytes: 111, limit: 1024 * 1024 });
  const role = { kind: 'Role', metadata: { name: 'r' } };
  expect(sizeAgainstLimit(role)).toEqual({ bytes: JSON.stringify(role).length, limit: 1.5 * 1024 * 1024 });
});
