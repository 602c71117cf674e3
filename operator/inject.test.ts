import type { V1Container, V1Pod } from '@kubernetes/client-node';
import { validate, type EgressGateway } from '../crds/index.ts';
import { sidecarContainerName } from './compile.ts';
import { injection, podSecurityEnforceLabel, podUser, type InjectionRequest } from './inject.ts';
import { sidecarSecurityContext } from './settings.ts';

function gateway(name: string, spec: Record<string, unknown>): EgressGateway {
  const result = validate('EgressGateway', {
    apiVersion: 'naat.dev/v1alpha1',
    kind: 'EgressGateway',
    metadata: { name },
    spec: { nodeSelector: {}, uplinks: { names: ['isp-a'] }, ...spec },
  });
  if (!result.ok) throw new Error(result.errors.join('; '));
  return result.value as EgressGateway;
}

const office = gateway('office', {
  namespaceSelector: { matchLabels: { egress: 'office' } },
  association: { port: 7741, sidecar: { podSelector: { matchLabels: { naa: 'on' } } } },
});
const noSidecar = gateway('branch', { namespaceSelector: {} });

const pod = (labels: Record<string, string>, spec: Partial<V1Pod['spec']> = {}): V1Pod => ({
  metadata: { generateName: 'web-', labels },
  spec: { containers: [{ name: 'app', image: 'app:1' }], ...spec },
});

const request = (p: V1Pod, namespaceLabels: Record<string, string> = { egress: 'office' }): InjectionRequest => ({
  pod: p,
  namespace: 'shop',
  namespaceLabels,
  gateways: [noSidecar, office],
  sidecar: {
    image: 'naat-sidecar:1',
    pullPolicy: 'IfNotPresent',
    resources: { requests: { memory: '48Mi' } },
    securityContext: sidecarSecurityContext,
  },
  logLevel: 'info',
  caCertificate: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
  otel: {
    endpoint: '',
    protocol: 'grpc',
    sampler: 'parentbased_traceidratio',
    samplerArg: '1',
    resourceAttributes: {},
  },
});

/** Applies an RFC 6902 patch of "add" operations, as the apiserver does. */
function apply(target: V1Pod, patch: Array<{ op: string; path: string; value: unknown }>): V1Pod {
  const copy = structuredClone(target) as Record<string, unknown>;
  for (const { op, path, value } of patch) {
    expect(op).toBe('add');
    const parts = path
      .slice(1)
      .split('/')
      .map((p) => p.replace('~1', '/').replace('~0', '~'));
    const last = parts.pop()!;
    let at = copy as Record<string, unknown>;
    for (const part of parts) at = at[part] as Record<string, unknown>;
    if (Array.isArray(at) && last === '-') at.push(value);
    else if (Array.isArray(at)) at.splice(Number(last), 0, value);
    else at[last] = value;
  }
  return copy as V1Pod;
}

describe('sidecar injection', () => {
  test('a pod the gateway selects gets the native sidecar, a shared process namespace and its token', () => {
    const original = pod({ naa: 'on' }, { volumes: [{ name: 'data', emptyDir: {} }] });
    const decision = injection(request(original));
    if (!decision.inject) throw new Error(decision.reason);
    expect(decision.gateway).toBe('office');
    const patched = apply(original, decision.patch);
    expect(patched.spec!.shareProcessNamespace).toBe(true);
    // Each container tells the sidecar its name through its processes' environment.
    expect(patched.spec!.containers).toEqual([
      { name: 'app', image: 'app:1', env: [{ name: 'NAAT_CONTAINER_NAME', value: 'app' }] },
    ]);
    expect(patched.metadata!.annotations).toEqual({
      'naat.dev/sidecar-gateway': 'office',
      'naat.dev/association-mode': 'Observe',
      'naat.dev/association-mode-reason': 'EgressGateway office association.mode',
    });
    expect(patched.spec!.volumes!.map((v) => v.name)).toEqual(['data', 'naat-token']);
    const [sidecar] = patched.spec!.initContainers!;
    expect(sidecar!.name).toBe(sidecarContainerName);
    expect(sidecar!.restartPolicy).toBe('Always');
    expect(sidecar!.image).toBe('naat-sidecar:1');
    expect(sidecar!.resources).toEqual({ requests: { memory: '48Mi' } });
    expect(sidecar!.securityContext!.capabilities).toEqual({ drop: ['ALL'], add: ['DAC_READ_SEARCH', 'SYS_PTRACE'] });
    expect(Object.fromEntries(sidecar!.env!.map((e) => [e.name, e.value ?? e.valueFrom!.fieldRef!.fieldPath]))).toEqual(
      {
        NAAT_NAA_HOST: 'status.hostIP',
        NAAT_NAA_PORT: '7741',
        NAAT_NAA_CA: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
        NAAT_POD_NAMESPACE: 'metadata.namespace',
        NAAT_POD_NAME: 'metadata.name',
        NAAT_POD_UID: 'metadata.uid',
        NAAT_TOKEN_FILE: '/var/run/secrets/naat/token',
        NAAT_LOG_LEVEL: 'info',
        OTEL_SDK_DISABLED: 'true',
      },
    );
    expect(patched.spec!.volumes).toEqual([
      { name: 'data', emptyDir: {} },
      {
        name: 'naat-token',
        projected: { sources: [{ serviceAccountToken: { audience: 'naat', expirationSeconds: 3600, path: 'token' } }] },
      },
    ]);
    expect(sidecar!.volumeMounts).toEqual([{ name: 'naat-token', mountPath: '/var/run/secrets/naat', readOnly: true }]);
  });

  test('with an OTLP endpoint configured, the sidecar exports like the operator does', () => {
    const decision = injection({
      ...request(pod({ naa: 'on' })),
      otel: {
        endpoint: 'http://collector:4317',
        protocol: 'grpc',
        sampler: 'traceidratio',
        samplerArg: '0.1',
        resourceAttributes: { 'deployment.environment': 'prod', cluster: 'eu-1' },
      },
    });
    if (!decision.inject) throw new Error(decision.reason);
    const [sidecar] = apply(pod({ naa: 'on' }), decision.patch).spec!.initContainers!;
    expect(sidecar!.env!.filter((e) => e.name.startsWith('OTEL_'))).toEqual([
      { name: 'OTEL_SERVICE_NAME', value: 'naat-sidecar' },
      { name: 'OTEL_EXPORTER_OTLP_ENDPOINT', value: 'http://collector:4317' },
      { name: 'OTEL_EXPORTER_OTLP_PROTOCOL', value: 'grpc' },
      { name: 'OTEL_TRACES_SAMPLER', value: 'traceidratio' },
      { name: 'OTEL_TRACES_SAMPLER_ARG', value: '0.1' },
      { name: 'OTEL_RESOURCE_ATTRIBUTES', value: 'cluster=eu-1,deployment.environment=prod' },
    ]);
  });

  test("the sidecar logs at the operator's configured level", () => {
    const decision = injection({ ...request(pod({ naa: 'on' })), logLevel: 'debug' });
    if (!decision.inject) throw new Error(decision.reason);
    const [sidecar] = apply(pod({ naa: 'on' }), decision.patch).spec!.initContainers!;
    expect(sidecar!.env).toContainEqual({ name: 'NAAT_LOG_LEVEL', value: 'debug' });
  });

  test('existing init containers and annotations are kept and the sidecar goes last', () => {
    const original = pod(
      { naa: 'on' },
      { initContainers: [{ name: 'migrate', image: 'm:1' }], shareProcessNamespace: false },
    );
    original.metadata!.annotations = { team: 'shop' };
    const decision = injection(request(original));
    if (!decision.inject) throw new Error(decision.reason);
    const patched = apply(original, decision.patch);
    expect(patched.spec!.initContainers!.map((c) => c.name)).toEqual(['migrate', sidecarContainerName]);
    expect(patched.spec!.shareProcessNamespace).toBe(true);
    expect(patched.metadata!.annotations).toEqual({
      team: 'shop',
      'naat.dev/sidecar-gateway': 'office',
      'naat.dev/association-mode': 'Observe',
      'naat.dev/association-mode-reason': 'EgressGateway office association.mode',
    });
  });

  test('strict mode: every program preloads the stamping library from the folder the sidecar shares', () => {
    const strictOffice = gateway('office', {
      namespaceSelector: { matchLabels: { egress: 'office' } },
      association: { port: 7741, mode: 'Strict', sidecar: { podSelector: { matchLabels: { naa: 'on' } } } },
    });
    const original = pod(
      { naa: 'on' },
      {
        initContainers: [{ name: 'migrate', image: 'm:1' }],
        containers: [
          { name: 'app', image: 'app:1', env: [{ name: 'A', value: '1' }] },
          { name: 'worker', image: 'w:1', volumeMounts: [{ name: 'data', mountPath: '/data' }] },
        ],
      },
    );
    const decision = injection({ ...request(original), gateways: [strictOffice] });
    if (!decision.inject) throw new Error(decision.reason);
    const patched = apply(original, decision.patch);
    const preload = { name: 'LD_PRELOAD', value: '/var/run/naat/libnaat_stamp.so' };
    const named = (name: string) => ({ name: 'NAAT_CONTAINER_NAME', value: name });
    const run = { name: 'naat-run', mountPath: '/var/run/naat' };
    expect(patched.spec!.containers).toEqual([
      { name: 'app', image: 'app:1', env: [{ name: 'A', value: '1' }, named('app'), preload], volumeMounts: [run] },
      {
        name: 'worker',
        image: 'w:1',
        env: [named('worker'), preload],
        volumeMounts: [{ name: 'data', mountPath: '/data' }, run],
      },
    ]);
    const [migrate, sidecar] = patched.spec!.initContainers!;
    expect(migrate).toEqual({ name: 'migrate', image: 'm:1', env: [named('migrate'), preload], volumeMounts: [run] });
    expect(sidecar!.env).toContainEqual({ name: 'NAAT_STAMP_DIR', value: '/var/run/naat' });
    expect(sidecar!.volumeMounts).toContainEqual(run);
    expect(sidecar!.startupProbe?.exec?.command).toEqual(['test', '-S', '/var/run/naat/stamp.sock']);
    expect(patched.spec!.volumes).toContainEqual({ name: 'naat-run', emptyDir: { medium: 'Memory' } });
    expect(patched.metadata!.annotations!['naat.dev/association-mode']).toBe('Strict');

    // The pod's own choice wins, and it says so.
    const observed = pod({ naa: 'on' });
    observed.metadata!.annotations = { 'naat.dev/association-mode': 'Observe' };
    const chosen = injection({ ...request(observed), gateways: [strictOffice] });
    if (!chosen.inject) throw new Error(chosen.reason);
    const kept = apply(observed, chosen.patch);
    expect(kept.metadata!.annotations).toMatchObject({
      'naat.dev/association-mode': 'Observe',
      'naat.dev/association-mode-reason': "the pod's naat.dev/association-mode annotation",
    });
    expect(kept.spec!.containers[0]!.env).toEqual([{ name: 'NAAT_CONTAINER_NAME', value: 'app' }]);
  });

  test.each([
    ['a pod the sidecar selector does not pick', pod({ naa: 'off' }), undefined, 'no gateway injects this pod'],
    ['a namespace the gateway does not serve', pod({ naa: 'on' }), { egress: 'branch' }, 'no gateway injects this pod'],
    [
      'a pod that already has the sidecar',
      pod({ naa: 'on' }, { initContainers: [{ name: sidecarContainerName, image: 'x' }] }),
      undefined,
      'the pod already has the sidecar',
    ],
    [
      'a host-network pod',
      pod({ naa: 'on' }, { hostNetwork: true }),
      undefined,
      'host-network pods are not associated',
    ],
  ])('%s is left alone', (_what, p, labels, reason) => {
    expect(injection(request(p, labels))).toEqual({ inject: false, reason });
  });
});

describe('Pod Security Admission', () => {
  const enforcing = (level: string) => ({ egress: 'office', 'pod-security.kubernetes.io/enforce': level });

  test.each(['baseline', 'restricted'])(
    'a namespace enforcing %s, where a pod of no one user would need the root sidecar, gets the pod without the sidecar, annotated with why, and a warning naming the level',
    (level) => {
      const original = pod({ naa: 'on' }, { securityContext: { runAsUser: 1000 } });
      const decision = injection(request(original, enforcing(level)));
      const reason =
        `namespace shop enforces Pod Security level ${level}, which forbids the sidecar as root (CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE), ` +
        "and the pod's containers do not all run as one non-root user and group";
      expect(decision).toEqual({
        inject: false,
        reason,
        warning: expect.stringMatching(
          new RegExp(
            `^the NAA sidecar of EgressGateway office was not injected: namespace shop enforces Pod Security level ${level},.*runAsUser and runAsGroup.*pod-security\\.kubernetes\\.io/enforce=privileged, to have it injected$`,
          ),
        ),
        patch: expect.any(Array),
      });
      // Only the reason is recorded, for the pod's status condition: no container, volume or setting.
      const patched = apply(original, decision.patch!);
      expect(patched).toEqual({
        ...original,
        metadata: { ...original.metadata, annotations: { 'naat.dev/sidecar-skipped': reason } },
      });
    },
  );

  test.each(['baseline', 'restricted'])(
    "a namespace enforcing %s gets the sidecar as the pod's own user and group, without capabilities, as restricted admits it",
    (level) => {
      const original = pod(
        { naa: 'on' },
        {
          securityContext: { runAsUser: 1000, runAsGroup: 3000 },
          initContainers: [{ name: 'setup', image: 'app:1', securityContext: { runAsUser: 1000 } }],
        },
      );
      const decision = injection(request(original, enforcing(level)));
      if (!decision.inject) throw new Error(decision.reason);
      const sidecar = apply(original, decision.patch).spec!.initContainers!.find(
        (c) => c.name === sidecarContainerName,
      );
      expect(sidecar!.securityContext).toEqual({
        runAsUser: 1000,
        runAsGroup: 3000,
        runAsNonRoot: true,
        allowPrivilegeEscalation: false,
        readOnlyRootFilesystem: true,
        capabilities: { drop: ['ALL'] },
        seccompProfile: { type: 'RuntimeDefault' },
      });
    },
  );

  test.each([
    ['no group', { runAsUser: 1000 }, []],
    ['root', { runAsUser: 0, runAsGroup: 0 }, []],
    ['a container of another user', { runAsUser: 1000, runAsGroup: 1000 }, [{ runAsUser: 1001 }]],
    ['a container of another group', { runAsUser: 1000, runAsGroup: 1000 }, [{ runAsGroup: 0 }]],
  ])('a pod with %s has no one user for the sidecar', (_, podContext, containerContexts) => {
    const spec = {
      securityContext: podContext,
      containers: [
        { name: 'app', image: 'app:1' },
        ...containerContexts.map((securityContext, i) => ({ name: `c${i}`, image: 'app:1', securityContext })),
      ],
    };
    expect(podUser(spec)).toBeUndefined();
    expect(injection(request(pod({ naa: 'on' }, spec), enforcing('restricted'))).inject).toBe(false);
  });

  test("a container's own user and group count over the pod's", () => {
    expect(
      podUser({
        securityContext: { runAsUser: 1, runAsGroup: 1 },
        containers: [{ name: 'app', image: 'app:1', securityContext: { runAsUser: 1000, runAsGroup: 1000 } }],
      }),
    ).toEqual({ uid: 1000, gid: 1000 });
  });

  test("a privileged namespace, or one without the label, gets the root sidecar, which the pod's programs cannot look into", () => {
    const ofOneUser = pod({ naa: 'on' }, { securityContext: { runAsUser: 1000, runAsGroup: 1000 } });
    for (const decision of [
      injection(request(ofOneUser, enforcing('privileged'))),
      injection(request(ofOneUser)),
      injection(request(pod({ naa: 'on' }))),
    ]) {
      if (!decision.inject) throw new Error(decision.reason);
      const sidecar = decision.patch.find((p) => p.path === '/spec/initContainers')!.value as V1Container[];
      expect(sidecar[0]!.securityContext).toMatchObject({
        runAsUser: 0,
        capabilities: { add: ['DAC_READ_SEARCH', 'SYS_PTRACE'] },
      });
    }
  });

  test('a pod no gateway injects gets no warning, whatever the level', () => {
    expect(injection(request(pod({ naa: 'off' }), enforcing('restricted')))).toEqual({
      inject: false,
      reason: 'no gateway injects this pod',
    });
  });
});

describe('the Node driver', () => {
  const nodeOffice = gateway('office', {
    namespaceSelector: { matchLabels: { egress: 'office' } },
    association: { port: 7741, driver: 'Node', sidecar: { podSelector: { matchLabels: { naa: 'on' } } } },
  });
  const withGateways = (p: V1Pod, gateways: EgressGateway[], labels?: Record<string, string>): InjectionRequest => ({
    ...request(p, labels),
    gateways,
  });

  test('a pod the gateway selects gets no sidecar, no shared process namespace and no volume, only its annotations', () => {
    const original = pod({ naa: 'on' }, { volumes: [{ name: 'data', emptyDir: {} }] });
    const decision = injection(withGateways(original, [nodeOffice]));
    if (!decision.inject) throw new Error(decision.reason);
    const patched = apply(original, decision.patch);
    expect(patched.spec).toEqual(original.spec);
    expect(patched.metadata!.annotations).toEqual({
      'naat.dev/sidecar-gateway': 'office',
      'naat.dev/association-driver': 'Node',
      'naat.dev/association-mode': 'Observe',
      'naat.dev/association-mode-reason': 'EgressGateway office association.mode',
    });
  });

  test("the pod's annotation wins over its gateway's driver, either way", () => {
    const asksNode = pod({ naa: 'on' });
    asksNode.metadata!.annotations = { 'naat.dev/association-driver': 'Node' };
    const toNode = injection(request(asksNode));
    if (!toNode.inject) throw new Error(toNode.reason);
    expect(apply(asksNode, toNode.patch).spec!.initContainers).toBeUndefined();

    const asksSidecar = pod({ naa: 'on' });
    asksSidecar.metadata!.annotations = { 'naat.dev/association-driver': 'Sidecar' };
    const toSidecar = injection(withGateways(asksSidecar, [nodeOffice]));
    if (!toSidecar.inject) throw new Error(toSidecar.reason);
    expect(apply(asksSidecar, toSidecar.patch).spec!.initContainers!.map((c) => c.name)).toEqual([
      sidecarContainerName,
    ]);
  });

  test('a strict pod gets the shared folder in every container, the library preloaded from it, and a first init container that waits for the node agent', () => {
    const strict = pod(
      { naa: 'on' },
      {
        initContainers: [{ name: 'setup', image: 'setup:1' }],
        containers: [{ name: 'app', image: 'app:1', env: [{ name: 'A', value: '1' }] }],
        volumes: [{ name: 'data', emptyDir: {} }],
      },
    );
    strict.metadata!.annotations = { 'naat.dev/association-mode': 'Strict' };
    const decision = injection(
      withGateways(strict, [nodeOffice], { egress: 'office', [podSecurityEnforceLabel]: 'restricted' }),
    );
    if (!decision.inject) throw new Error(decision.reason);
    const patched = apply(strict, decision.patch);
    expect(patched.metadata!.annotations).toEqual({
      'naat.dev/sidecar-gateway': 'office',
      'naat.dev/association-driver': 'Node',
      'naat.dev/association-mode': 'Strict',
      'naat.dev/association-mode-reason': "the pod's naat.dev/association-mode annotation",
    });
    const mount = { name: 'naat-run', mountPath: '/var/run/naat' };
    const preload = { name: 'LD_PRELOAD', value: '/var/run/naat/libnaat_stamp.so' };
    expect(patched.spec!.volumes).toEqual([
      { name: 'data', emptyDir: {} },
      { name: 'naat-run', emptyDir: { medium: 'Memory' } },
    ]);
    expect(patched.spec!.initContainers).toEqual([
      {
        name: 'naat-stamp-init',
        image: 'naat-sidecar:1',
        imagePullPolicy: 'IfNotPresent',
        command: ['node', 'dist/sidecar/stamp-init.js'],
        env: [
          { name: 'NAAT_STAMP_DIR', value: '/var/run/naat' },
          { name: 'NAAT_LOG_LEVEL', value: 'info' },
        ],
        resources: { requests: { memory: '48Mi' } },
        // Pod Security restricted admits it.
        securityContext: {
          allowPrivilegeEscalation: false,
          readOnlyRootFilesystem: true,
          runAsUser: 1000,
          runAsGroup: 1000,
          runAsNonRoot: true,
          capabilities: { drop: ['ALL'] },
          seccompProfile: { type: 'RuntimeDefault' },
        },
        volumeMounts: [mount],
      },
      { name: 'setup', image: 'setup:1', env: [preload], volumeMounts: [mount] },
    ]);
    expect(patched.spec!.containers).toEqual([
      { name: 'app', image: 'app:1', env: [{ name: 'A', value: '1' }, preload], volumeMounts: [mount] },
    ]);
    // Nothing else: no sidecar, no shared process namespace, no token.
    expect(patched.spec!.shareProcessNamespace).toBeUndefined();
  });

  test("the stamp init container runs as the pod's own user when it has one", () => {
    const strict = pod({ naa: 'on' }, { securityContext: { runAsUser: 2000, runAsGroup: 3000 } });
    strict.metadata!.annotations = { 'naat.dev/association-mode': 'Strict' };
    const decision = injection(withGateways(strict, [nodeOffice]));
    if (!decision.inject) throw new Error(decision.reason);
    const [init] = apply(strict, decision.patch).spec!.initContainers!;
    expect(init!.securityContext).toMatchObject({ runAsUser: 2000, runAsGroup: 3000 });
  });

  test('Pod Security has nothing to forbid: no sidecar runs in the pod', () => {
    const decision = injection(
      withGateways(pod({ naa: 'on' }), [nodeOffice], { egress: 'office', [podSecurityEnforceLabel]: 'restricted' }),
    );
    expect(decision.inject).toBe(true);
  });

  test('a gateway can ask for Strict mode with the Node driver, and for no other driver', () => {
    const strictNode = gateway('strict-node', {
      namespaceSelector: {},
      association: { driver: 'Node', mode: 'Strict' },
    });
    expect(strictNode.spec.association).toMatchObject({ driver: 'Node', mode: 'Strict' });
    expect(() => gateway('bad', { namespaceSelector: {}, association: { driver: 'Pod' } })).toThrow(/driver/);
  });
});
