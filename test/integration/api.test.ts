// The API against the real apiserver, used as a user would with kubectl: the CRDs install, every
// sample is accepted, invalid objects are rejected with a message that names the field, the
// server's defaults match the TypeScript validator's, and get/explain answer.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { apiVersion, definitionOf, definitions, group, rulesWithin, validate, type Kind } from '../../crds/index.ts';
import { root } from '../../crds/generate.ts';
import { kubectl } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';

const k = (args: string[], input?: string) => kubectl(process.env.KUBECONFIG!, args, input);
// Tests share one apiserver: every object here carries this suffix and is deleted afterwards.
const id = `api${process.pid}`;
const namespace = `naat-${id}`;

interface ApiObject {
  apiVersion: string;
  kind: Kind;
  metadata: { name: string; namespace?: string };
  spec: Record<string, unknown>;
}

const created: ApiObject[] = [];

async function apply(object: ApiObject, extra: string[] = []): Promise<string> {
  return k(['apply', '--server-side', '--field-manager=naat-api-test', ...extra, '-f', '-'], JSON.stringify(object));
}

async function create(object: ApiObject): Promise<void> {
  created.push(object);
  await apply(object);
}

function object(kind: Kind, name: string, spec: Record<string, unknown>): ApiObject {
  const scope = definitionOf[kind].scope;
  return { apiVersion, kind, metadata: { name, ...(scope === 'Namespaced' ? { namespace } : {}) }, spec };
}

beforeAll(async () => {
  await installCrds(process.env.KUBECONFIG!);
  await k(['create', 'namespace', namespace]);
});

afterAll(async () => {
  for (const { kind, metadata } of created.reverse()) {
    await k(['delete', kind.toLowerCase(), metadata.name, '-n', namespace, '--ignore-not-found', '--wait=false']);
  }
  await k(['delete', 'namespace', namespace, '--wait=false']);
});

describe('the samples', () => {
  const samplesDir = join(root, 'crds/samples');

  async function sampleObjects(file: string): Promise<ApiObject[]> {
    const documents = parseAllDocuments(await readFile(join(samplesDir, file), 'utf8'));
    return documents.map((document) => {
      const sample = document.toJS() as ApiObject;
      return { ...sample, metadata: { ...sample.metadata, name: `${sample.metadata.name}-${id}`, namespace } };
    });
  }

  test('cover the common cases', async () => {
    expect((await readdir(samplesDir)).sort()).toEqual([
      'backup-uplink.yaml',
      'deny-application.yaml',
      'route-application-via-uplink.yaml',
      'two-isps-balanced.yaml',
    ]);
  });

  test.each([
    'two-isps-balanced.yaml',
    'backup-uplink.yaml',
    'deny-application.yaml',
    'route-application-via-uplink.yaml',
  ])('%s is accepted by server-side apply', async (file) => {
    for (const sample of await sampleObjects(file)) {
      const scope = definitionOf[sample.kind].scope;
      if (scope === 'Cluster') delete sample.metadata.namespace;
      await create(sample);
      const stored = JSON.parse(
        await k(['get', sample.kind.toLowerCase(), sample.metadata.name, '-n', namespace, '-o', 'json']),
      );
      expect(stored.metadata.generation).toBe(1);
    }
  });
});

test("the apiserver's defaults are the validator's defaults", async () => {
  const minimal = [
    object('Uplink', `defaults-${id}`, { interface: 'eth1', healthCheck: { targets: ['192.0.2.1'] } }),
    object('EgressGateway', `defaults-${id}`, {
      nodeSelector: {},
      uplinks: { names: [`defaults-${id}`] },
      namespaceSelector: {},
    }),
    object('EgressPolicy', `defaults-${id}`, {
      gateway: `defaults-${id}`,
      rules: [{ name: 'out', action: 'Allow', destinations: [{ cidr: '0.0.0.0/0' }] }],
    }),
  ];
  for (const sent of minimal) {
    await create(sent);
    const stored = JSON.parse(
      await k(['get', sent.kind.toLowerCase(), sent.metadata.name, '-n', namespace, '-o', 'json']),
    );
    const local = validate(sent.kind, sent);
    if (!local.ok) throw new Error(local.errors.join('\n'));
    expect(stored.spec).toEqual(local.value.spec);
  }
});

// Each case: the kind, a spec, and the field and message the apiserver's answer must carry.
const uplink = { interface: 'eth1' };
const check = { targets: ['192.0.2.1'] };
const gateway = { nodeSelector: {}, uplinks: { names: ['isp-a'] }, namespaceSelector: {} };
const rule = { name: 'r', action: 'Allow' };
const policy = (rules: unknown[]) => ({ gateway: 'office', rules });
const invalid: [string, Kind, Record<string, unknown>, string, string][] = [
  [
    'an interface name longer than 15 bytes',
    'Uplink',
    { interface: 'eth-very-long-name0' },
    'spec.interface',
    'Too long: may not be more than 15 bytes',
  ],
  ['an interface name with a slash', 'Uplink', { interface: 'eth/1' }, 'spec.interface', 'should match'],
  [
    'an IPv6 address as the IPv4 next hop',
    'Uplink',
    { ...uplink, nextHop: { ipv4: '2001:db8::1' } },
    'spec.nextHop.ipv4',
    'nextHop.ipv4 must be an IPv4 address',
  ],
  [
    'an IPv4 address as the IPv6 next hop',
    'Uplink',
    { ...uplink, nextHop: { ipv6: '192.0.2.1' } },
    'spec.nextHop.ipv6',
    'nextHop.ipv6 must be an IPv6 address',
  ],
  [
    'an IPv4-mapped IPv6 address as the IPv6 next hop',
    'Uplink',
    { ...uplink, nextHop: { ipv6: '::ffff:192.0.2.1' } },
    'spec.nextHop.ipv6',
    'nextHop.ipv6 must be an IPv6 address',
  ],
  ['an empty next hop', 'Uplink', { ...uplink, nextHop: {} }, 'spec.nextHop', 'nextHop must set ipv4, ipv6 or both'],
  [
    'a SNAT address that is not an address',
    'Uplink',
    { ...uplink, snat: { addresses: ['300.1.1.1'] } },
    'spec.snat.addresses[0]',
    'each snat.addresses entry must be an IPv4 or IPv6 address',
  ],
  [
    'a loopback SNAT address',
    'Uplink',
    { ...uplink, snat: { addresses: ['::1'] } },
    'spec.snat.addresses[0]',
    'not unspecified or loopback',
  ],
  [
    'a SNAT address listed twice',
    'Uplink',
    { ...uplink, snat: { addresses: ['192.0.2.1', '192.0.2.1'] } },
    // Server-side apply finds duplicate keys of a set before validation does.
    '.spec.snat.addresses',
    'duplicate entries for key [="192.0.2.1"]',
  ],
  [
    'a SNAT port range that ends before it starts',
    'Uplink',
    { ...uplink, snat: { ports: { min: 2000, max: 1000 } } },
    'spec.snat.ports',
    'snat.ports.min must be less than or equal to snat.ports.max',
  ],
  [
    'a SNAT port above 65535',
    'Uplink',
    { ...uplink, snat: { ports: { max: 70000 } } },
    'spec.snat.ports.max',
    'should be less than or equal to 65535',
  ],
  ['a weight of zero', 'Uplink', { ...uplink, weight: 0 }, 'spec.weight', 'should be greater than or equal to 1'],
  ['a tier above 255', 'Uplink', { ...uplink, tier: 300 }, 'spec.tier', 'should be less than or equal to 255'],
  [
    'a probe timeout as long as the interval',
    'Uplink',
    { ...uplink, healthCheck: { ...check, intervalMs: 1000, timeoutMs: 1000 } },
    'spec.healthCheck.timeoutMs',
    'healthCheck.timeoutMs must be less than healthCheck.intervalMs',
  ],
  [
    'a latency limit above the timeout',
    'Uplink',
    { ...uplink, healthCheck: { ...check, timeoutMs: 500, maxLatencyMs: 900 } },
    'spec.healthCheck.maxLatencyMs',
    'healthCheck.maxLatencyMs must not exceed healthCheck.timeoutMs',
  ],
  [
    'a TCP probe without a port',
    'Uplink',
    { ...uplink, healthCheck: { ...check, protocol: 'TCP' } },
    'spec.healthCheck',
    'healthCheck.port is required when protocol is TCP',
  ],
  [
    'an ICMP probe with a port',
    'Uplink',
    { ...uplink, healthCheck: { ...check, port: 80 } },
    'spec.healthCheck.port',
    'healthCheck.port must not be set when protocol is ICMP',
  ],
  [
    'a TCP probe with an HTTP path',
    'Uplink',
    { ...uplink, healthCheck: { ...check, protocol: 'TCP', port: 80, path: '/x' } },
    'spec.healthCheck.path',
    'healthCheck.path is only valid when protocol is HTTP',
  ],
  [
    'an unknown probe protocol',
    'Uplink',
    { ...uplink, healthCheck: { ...check, protocol: 'UDP' } },
    'spec.healthCheck.protocol',
    'Unsupported value: "UDP": supported values: "ICMP", "TCP", "HTTP"',
  ],
  [
    'a health check without targets',
    'Uplink',
    { ...uplink, healthCheck: { targets: [] } },
    'spec.healthCheck.targets',
    'should have at least 1 items',
  ],
  [
    'a host name as a probe target',
    'Uplink',
    { ...uplink, healthCheck: { targets: ['localhost'] } },
    'spec.healthCheck.targets[0]',
    'each healthCheck.targets entry must be an IPv4 or IPv6 address',
  ],
  [
    'a failure threshold of zero',
    'Uplink',
    { ...uplink, healthCheck: { ...check, failureThreshold: 0 } },
    'spec.healthCheck.failureThreshold',
    'should be greater than or equal to 1',
  ],
  [
    'uplinks by both names and selector',
    'EgressGateway',
    { ...gateway, uplinks: { names: ['isp-a'], selector: {} } },
    'spec.uplinks',
    'uplinks must set exactly one of names or selector',
  ],
  [
    'uplinks by neither names nor selector',
    'EgressGateway',
    { ...gateway, uplinks: {} },
    'spec.uplinks',
    'uplinks must set exactly one of names or selector',
  ],
  [
    'an empty uplink name',
    'EgressGateway',
    { ...gateway, uplinks: { names: [''] } },
    'spec.uplinks.names[0]',
    'should be at least 1 chars long',
  ],
  [
    'a gateway that selects no pods',
    'EgressGateway',
    { nodeSelector: {}, uplinks: { names: ['isp-a'] } },
    'spec',
    'spec must set podSelector, namespaceSelector or both',
  ],
  [
    'a gateway without a node selector',
    'EgressGateway',
    { uplinks: { names: ['isp-a'] }, namespaceSelector: {} },
    'spec.nodeSelector',
    'Required value',
  ],
  [
    'stickySeconds without SourceSticky',
    'EgressGateway',
    { ...gateway, balancing: { mode: 'Weighted', stickySeconds: 60 } },
    'spec.balancing.stickySeconds',
    'balancing.stickySeconds is only valid when balancing.mode is SourceSticky',
  ],
  [
    'an unknown balancing mode',
    'EgressGateway',
    { ...gateway, balancing: { mode: 'RoundRobin' } },
    'spec.balancing.mode',
    'Unsupported value: "RoundRobin"',
  ],
  [
    'a UDP timeout below 10 seconds',
    'EgressGateway',
    { ...gateway, timeouts: { udpSeconds: 5 } },
    'spec.timeouts.udpSeconds',
    'should be greater than or equal to 10',
  ],
  [
    'an association mode that does not exist',
    'EgressGateway',
    { ...gateway, association: { mode: 'Intercept' } },
    'spec.association.mode',
    'Unsupported value: "Intercept": supported values: "Observe", "Strict"',
  ],
  [
    'sidecar injection without selectors',
    'EgressGateway',
    { ...gateway, association: { sidecar: {} } },
    'spec.association.sidecar',
    'association.sidecar must set podSelector, namespaceSelector or both',
  ],
  [
    'a selector expression In without values',
    'EgressGateway',
    { ...gateway, podSelector: { matchExpressions: [{ key: 'app', operator: 'In' }] } },
    'spec.podSelector.matchExpressions[0]',
    'values must be non-empty for operators In and NotIn',
  ],
  [
    'an empty gateway reference',
    'EgressPolicy',
    { ...policy([rule]), gateway: '' },
    'spec.gateway',
    'should be at least 1 chars long',
  ],
  ['a policy without a gateway', 'EgressPolicy', { rules: [rule] }, 'spec.gateway', 'Required value'],
  ['a policy without rules', 'EgressPolicy', policy([]), 'spec.rules', 'should have at least 1 items'],
  [
    'two rules with one name',
    'EgressPolicy',
    policy([rule, { ...rule, action: 'Deny' }]),
    '.spec.rules',
    'duplicate entries for key [name="r"]',
  ],
  [
    'a rule name that is not a DNS label',
    'EgressPolicy',
    policy([{ ...rule, name: 'Bad_Name' }]),
    'spec.rules[0].name',
    'should match',
  ],
  [
    'a priority above 1000',
    'EgressPolicy',
    { ...policy([rule]), priority: 2000 },
    'spec.priority',
    'should be less than or equal to 1000',
  ],
  [
    'an unknown action',
    'EgressPolicy',
    policy([{ ...rule, action: 'Maybe' }]),
    'spec.rules[0].action',
    'Unsupported value: "Maybe": supported values: "Allow", "Deny"',
  ],
  [
    'an application that sets nothing',
    'EgressPolicy',
    policy([{ ...rule, applications: [{}] }]),
    'spec.rules[0].applications[0]',
    'each applications entry must set at least one of processName, executable, container, uid',
  ],
  [
    'a relative executable',
    'EgressPolicy',
    policy([{ ...rule, applications: [{ executable: 'bin/curl' }] }]),
    'spec.rules[0].applications[0].executable',
    'executable must be an absolute path or a glob starting with / or *',
  ],
  [
    'a process name longer than a file name',
    'EgressPolicy',
    policy([{ ...rule, applications: [{ processName: 'n'.repeat(256) }] }]),
    'spec.rules[0].applications[0].processName',
    'Too long: may not be more than 255 bytes',
  ],
  [
    'a negative uid',
    'EgressPolicy',
    policy([{ ...rule, applications: [{ uid: -1 }] }]),
    'spec.rules[0].applications[0].uid',
    'should be greater than or equal to 0',
  ],
  [
    'a prefix length beyond 32',
    'EgressPolicy',
    policy([{ ...rule, destinations: [{ cidr: '10.0.0.0/33' }] }]),
    'spec.rules[0].destinations[0].cidr',
    'destinations cidr must be an IPv4 or IPv6 CIDR',
  ],
  [
    'an IPv4 CIDR with host bits',
    'EgressPolicy',
    policy([{ ...rule, destinations: [{ cidr: '10.0.0.7/8' }] }]),
    'spec.rules[0].destinations[0].cidr',
    'destinations cidr must not have bits set after its prefix length',
  ],
  [
    'an IPv6 CIDR with host bits',
    'EgressPolicy',
    policy([{ ...rule, destinations: [{ cidr: '2001:db8::1/32' }] }]),
    'spec.rules[0].destinations[0].cidr',
    'destinations cidr must not have bits set after its prefix length',
  ],
  [
    'ports on ICMP',
    'EgressPolicy',
    policy([{ ...rule, destinations: [{ protocol: 'ICMP', ports: [{ port: 1 }] }] }]),
    'spec.rules[0].destinations[0].ports',
    'destinations ports require protocol TCP or UDP',
  ],
  [
    'a port range that ends before it starts',
    'EgressPolicy',
    policy([{ ...rule, destinations: [{ protocol: 'TCP', ports: [{ port: 9000, endPort: 8000 }] }] }]),
    'spec.rules[0].destinations[0].ports[0].endPort',
    'ports endPort must be greater than or equal to port',
  ],
  [
    'port zero',
    'EgressPolicy',
    policy([{ ...rule, destinations: [{ protocol: 'TCP', ports: [{ port: 0 }] }] }]),
    'spec.rules[0].destinations[0].ports[0].port',
    'should be greater than or equal to 1',
  ],
  [
    'uplinks on a Deny rule',
    'EgressPolicy',
    policy([{ ...rule, action: 'Deny', uplinks: { allowed: ['isp-a'] } }]),
    'spec.rules[0].uplinks',
    'rules uplinks can only be set when action is Allow',
  ],
  [
    'a preferred uplink that is not allowed',
    'EgressPolicy',
    policy([{ ...rule, uplinks: { allowed: ['isp-a'], preferred: ['isp-b'] } }]),
    'spec.rules[0].uplinks.preferred',
    'every uplinks.preferred entry must also be listed in uplinks.allowed',
  ],
  [
    'empty rule uplinks',
    'EgressPolicy',
    policy([{ ...rule, uplinks: {} }]),
    'spec.rules[0].uplinks',
    'uplinks must set allowed, preferred or both',
  ],
];

const celMessages = definitions.flatMap((d) => [...rulesWithin(d.spec)]).map((rule) => rule.message);

const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('invalid objects are rejected with a message naming the field', () => {
  test.each(invalid)('%s', async (_, kind, spec, field, message) => {
    const sent = object(kind, `invalid-${id}`, spec);
    const rejected = apply(sent, ['--dry-run=server']);
    // The field's path, then on the same line the message about it.
    await expect(rejected).rejects.toThrow(new RegExp(`${escape(field)}: [^\\n]*${escape(message)}`));
    // The validator that checks objects which never reach the apiserver (the compiled gateway
    // config among them) rejects it too, with the rule's own message where a CEL rule broke.
    // Duplicate keys of sets and maps (a path starting with `.`) are found by server-side apply.
    if (field.startsWith('.')) return;
    const local = validate(kind, sent);
    const errors = local.ok ? [] : local.errors;
    expect(errors).toContainEqual(expect.stringMatching(new RegExp(`^${escape(field)}: `)));
    if (celMessages.some((m) => m.includes(message))) {
      expect(errors).toContainEqual(expect.stringMatching(new RegExp(`^${escape(field)}: .*${escape(message)}`)));
    }
  });
});

test('a status that breaks the schema is rejected', async () => {
  const name = `status-${id}`;
  await create(object('Uplink', name, { interface: 'eth1' }));
  const status = {
    status: {
      conditions: [
        { type: 'Ready', status: 'Maybe', reason: 'Probed', message: '', lastTransitionTime: '2026-01-01T00:00:00Z' },
      ],
    },
  };
  await expect(
    k(['patch', 'uplink', name, '--subresource=status', '--type=merge', '-p', JSON.stringify(status)]),
  ).rejects.toThrow(/status\.conditions\[0\]\.status: Unsupported value: "Maybe"/);
});

test('kubectl get shows what a user asks first, and `kubectl get naat` lists every kind', async () => {
  const name = `columns-${id}`;
  await create(object('Uplink', name, { interface: 'eth2', tier: 1, weight: 3 }));
  await create(object('EgressGateway', name, { ...gateway, balancing: { mode: 'LeastLoaded' } }));
  await create(object('EgressPolicy', name, { ...policy([rule]), gateway: name, priority: 7 }));
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const condition = (type: string) => ({ type, status: 'True', reason: 'Test', message: '', lastTransitionTime: now });
  const setStatus = (kind: string, status: Record<string, unknown>) =>
    k(['patch', kind, name, '-n', namespace, '--subresource=status', '--type=merge', '-p', JSON.stringify({ status })]);
  await setStatus('uplink', { healthyNodes: 2, activeFlows: 17, conditions: [condition('Ready')] });
  await setStatus('egressgateway', { desiredNodes: 2, readyNodes: 1, conditions: [condition('Ready')] });
  await setStatus('egresspolicy', { matchedPods: 4, conditions: [condition('Programmed')] });

  const table = async (kind: string) => {
    const [header, row] = (await k(['get', kind, name, '-n', namespace])).trim().split('\n');
    return { header: header!.split(/\s+/), row: row!.split(/\s+/) };
  };
  expect(await table('uplinks')).toEqual({
    header: ['NAME', 'INTERFACE', 'TIER', 'WEIGHT', 'HEALTHY', 'FLOWS', 'READY', 'AGE'],
    row: [name, 'eth2', '1', '3', '2', '17', 'True', expect.any(String)],
  });
  expect(await table('egressgateways')).toEqual({
    header: ['NAME', 'MODE', 'DEFAULT', 'DESIRED', 'AVAILABLE', 'READY', 'AGE'],
    row: [name, 'LeastLoaded', 'Allow', '2', '1', 'True', expect.any(String)],
  });
  expect(await table('egresspolicies')).toEqual({
    header: ['NAME', 'GATEWAY', 'PRIORITY', 'PODS', 'PROGRAMMED', 'AGE'],
    row: [name, name, '7', '4', 'True', expect.any(String)],
  });

  // Short names resolve, and the category lists the three kinds together.
  for (const short of ['ul', 'egw', 'epol']) {
    expect(await k(['get', short, name, '-n', namespace, '-o', 'name'])).toMatch(new RegExp(`/${name}\\n`));
  }
  const listed = await k(['get', 'naat', '-n', namespace, '-o', 'name']);
  for (const plural of ['uplink', 'egressgateway', 'egresspolicy']) {
    expect(listed).toContain(`${plural}.${group}/${name}\n`);
  }
});

test('a status write cannot change the spec, and a spec write keeps the status', async () => {
  const name = `subresource-${id}`;
  await create(object('Uplink', name, { interface: 'eth1' }));
  await k([
    'patch',
    'uplink',
    name,
    '--subresource=status',
    '--type=merge',
    '-p',
    '{"spec":{"weight":9},"status":{"activeFlows":5}}',
  ]);
  await apply(object('Uplink', name, { interface: 'eth1', weight: 2 }));
  const stored = JSON.parse(await k(['get', 'uplink', name, '-o', 'json']));
  expect(stored.spec.weight).toBe(2);
  expect(stored.status.activeFlows).toBe(5);
  expect(stored.metadata.generation).toBe(2);
});

test('kubectl explain teaches nested fields', async () => {
  // kubectl wraps descriptions at 80 columns.
  const explain = async (field: string) => (await k(['explain', field])).replace(/\s+/g, ' ');
  const rules = await explain('egresspolicy.spec.rules');
  expect(rules).toContain('Rules evaluated in order; the first that matches a flow decides.');
  for (const field of [
    'action <string> -required-',
    'applications <[]Object>',
    'destinations <[]Object>',
    'uplinks <Object>',
  ]) {
    expect(rules).toContain(field);
  }
  expect(await explain('egresspolicy.spec.rules.destinations.cidr')).toContain(
    'Destination network, IPv4 or IPv6, such as 203.0.113.0/24 or 2001:db8::/32',
  );
  expect(await explain('uplink.spec.healthCheck.timeoutMs')).toContain('must be less than intervalMs');
});
