import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { root } from './generate.ts';
import { apiVersion, validate, type Kind } from './index.ts';

const samplesDir = join(root, 'crds/samples');

test('every sample passes the runtime validator', async () => {
  const files = (await readdir(samplesDir)).filter((file) => file.endsWith('.yaml'));
  expect(files.length).toBeGreaterThanOrEqual(4);
  for (const file of files) {
    const documents = parseAllDocuments(await readFile(join(samplesDir, file), 'utf8'));
    for (const document of documents) {
      const object = document.toJS() as { kind: Kind };
      expect({ file, result: validate(object.kind, object) }).toMatchObject({ file, result: { ok: true } });
    }
  }
});

test('validate fills in the schema defaults, as the apiserver does', () => {
  const result = validate('Uplink', {
    apiVersion,
    kind: 'Uplink',
    metadata: { name: 'isp-a' },
    spec: { interface: 'eth1', healthCheck: { targets: ['192.0.2.1'] } },
  });
  if (!result.ok) throw new Error(result.errors.join('\n'));
  expect(result.value.spec).toEqual({
    interface: 'eth1',
    snat: { ports: { min: 1024, max: 65535 } },
    weight: 1,
    tier: 0,
    healthCheck: {
      targets: ['192.0.2.1'],
      protocol: 'ICMP',
      intervalMs: 1000,
      timeoutMs: 800,
      failureThreshold: 3,
      successThreshold: 2,
      maxLossPercent: 50,
    },
  });
});

test('validate does not change its argument', () => {
  const object = { apiVersion, kind: 'Uplink', metadata: { name: 'x' }, spec: { interface: 'eth1' } };
  validate('Uplink', object);
  expect(object.spec).toEqual({ interface: 'eth1' });
});

test('validate names the offending fields', () => {
  const result = validate('EgressPolicy', {
    apiVersion,
    kind: 'EgressPolicy',
    metadata: { name: 'p', namespace: 'default' },
    spec: { gateway: 'office', priority: 5000, rules: [{ name: 'r', action: 'Maybe' }] },
  });
  expect(result.ok).toBe(false);
  const errors = result.ok ? [] : result.errors;
  expect(errors).toEqual(
    expect.arrayContaining([
      expect.stringMatching(/^spec\.priority: /),
      'spec.rules[0].action: Expected one of Allow, Deny',
    ]),
  );
});

test('validate rejects an object of another kind', () => {
  const result = validate('EgressGateway', { apiVersion, kind: 'Uplink', metadata: { name: 'x' }, spec: {} });
  expect(result.ok).toBe(false);
});

test("validate applies the CEL rules through their counterparts, with the rule's field and message", () => {
  const result = validate('Uplink', {
    apiVersion,
    kind: 'Uplink',
    metadata: { name: 'isp-a' },
    spec: {
      interface: 'eth1',
      nextHop: { ipv6: '::ffff:192.0.2.1' },
      healthCheck: { targets: ['::1'], timeoutMs: 1000 },
    },
  });
  expect(result.ok ? [] : result.errors).toEqual([
    'spec.nextHop.ipv6: nextHop.ipv6 must be an IPv6 address, such as 2001:db8::1 or fe80::1',
    'spec.healthCheck.timeoutMs: healthCheck.timeoutMs must be less than healthCheck.intervalMs',
    'spec.healthCheck.targets[0]: each healthCheck.targets entry must be an IPv4 or IPv6 address (not unspecified or loopback), such as 192.0.2.1 or 2001:db8::1',
  ]);
});
