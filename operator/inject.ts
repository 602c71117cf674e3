// Sidecar injection, the pure part of the admission webhook: for a pod being created, which
// gateway (if any) wants the NAA sidecar in it, and the JSON patch that adds it.
//
// The sidecar is a native sidecar (an init container that keeps running, Kubernetes ≥ 1.29): the
// kubelet starts it before the application containers, so their first connections are already
// watched, and it does not keep a Job's pod alive. It shares the pod's network namespace (the
// sockets) and, through shareProcessNamespace, its processes (who owns each socket).
import type { V1Container, V1Pod, V1Volume } from '@kubernetes/client-node';
import type { EgressGateway } from '../crds/index.ts';
import { containerNameVariable, sidecarVariables, tokenAudience } from '../contracts/index.ts';
import { sidecarContainerName } from './compile.ts';
import { matchesSelector, type Labels } from './selector.ts';
import { otelEnvironment, type OperatorSettings } from './settings.ts';

/** The annotation that records which gateway's sidecar a pod got. */
export const injectedAnnotation = 'naat.dev/sidecar-gateway';
/** Observe or Strict, as the webhook decided; a pod may also ask by setting it itself. */
export const modeAnnotation = 'naat.dev/association-mode';
export const modeReasonAnnotation = 'naat.dev/association-mode-reason';
export const tokenVolume = 'naat-token';
export const tokenDir = '/var/run/secrets/naat';
/** Strict mode: the folder the sidecar shares with the pod's programs (library and socket). */
export const runVolume = 'naat-run';
export const runDir = '/var/run/naat';
export const stampLibrary = `${runDir}/libnaat_stamp.so`;

export type PatchOperation = { op: 'add'; path: string; value: unknown };

export interface InjectionRequest {
  pod: V1Pod;
  /** The namespace of the request: a pod being created may not carry one yet. */
  namespace: string;
  namespaceLabels: Labels;
  gateways: readonly EgressGateway[];
  sidecar: OperatorSettings['sidecar'];
  otel: OperatorSettings['otel'];
}

/**
 * Not injecting: `reason` for the logs; `warning`, when the pod's owner should know (the apiserver
 * shows it to whoever created the pod, kubectl prints it).
 */
export type Injection =
  { inject: false; reason: string; warning?: string } | { inject: true; gateway: string; patch: PatchOperation[] };

/** The namespace label Pod Security Admission enforces a level by. */
export const podSecurityEnforceLabel = 'pod-security.kubernetes.io/enforce';
/**
 * Pod Security levels that forbid the sidecar: it runs as root with CAP_SYS_PTRACE, and both
 * baseline (added capabilities beyond its fixed list) and restricted (also non-root) reject that.
 */
const levelsForbiddingSidecar = new Set(['baseline', 'restricted']);

export function injection(request: InjectionRequest): Injection {
  const { pod } = request;
  const spec = pod.spec;
  if (!spec) return { inject: false, reason: 'the pod has no spec' };
  const containers = [...(spec.initContainers ?? []), ...spec.containers];
  if (containers.some((c) => c.name === sidecarContainerName))
    return { inject: false, reason: 'the pod already has the sidecar' };
  // Host-network pods share the node's sockets: a sidecar would report the node's, not the pod's.
  if (spec.hostNetwork) return { inject: false, reason: 'host-network pods are not associated' };

  const gateway = [...request.gateways]
    .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))
    .find((g) => selects(g, request.namespaceLabels, pod.metadata?.labels));
  if (!gateway) return { inject: false, reason: 'no gateway injects this pod' };
  // A pod the namespace's Pod Security level would then reject is left as it was, so that it still
  // starts (with the gateway's pod-level rules) rather than never being admitted at all.
  const level = request.namespaceLabels?.[podSecurityEnforceLabel];
  if (level !== undefined && levelsForbiddingSidecar.has(level)) {
    const reason = `namespace ${request.namespace} enforces Pod Security level ${level}, which forbids the sidecar (root with CAP_SYS_PTRACE)`;
    return {
      inject: false,
      reason,
      warning: `the NAA sidecar of EgressGateway ${gateway.metadata.name} was not injected: ${reason}; its flows get the gateway's pod-level rules only. Label the namespace ${podSecurityEnforceLabel}=privileged to have it injected`,
    };
  }

  const { mode, reason } = associationMode(gateway, pod);
  const strict = mode === 'Strict';
  const volumes: V1Volume[] = [
    tokenVolumeOf(),
    ...(strict ? [{ name: runVolume, emptyDir: { medium: 'Memory' } }] : []),
  ];
  const annotations = {
    [injectedAnnotation]: gateway.metadata.name,
    [modeAnnotation]: mode,
    [modeReasonAnnotation]: reason,
  };
  const patch: PatchOperation[] = [
    ...append('/spec/initContainers', spec.initContainers, [sidecarContainer(gateway, request, strict)]),
    // "add" replaces an existing member (RFC 6902 §4.1), so a pod that said false gets true.
    { op: 'add', path: '/spec/shareProcessNamespace', value: true },
    ...append('/spec/volumes', spec.volumes, volumes),
    // Each container names itself to the sidecar (which reads it from its processes' environment);
    // in strict mode, every program also preloads the stamping library from the sidecar's folder.
    ...(['initContainers', 'containers'] as const).flatMap((list) =>
      (spec[list] ?? []).flatMap((container, i) => [
        ...append(`/spec/${list}/${i}/env`, container.env, [
          { name: containerNameVariable, value: container.name },
          ...(strict ? [{ name: 'LD_PRELOAD', value: stampLibrary }] : []),
        ]),
        ...(strict
          ? append(`/spec/${list}/${i}/volumeMounts`, container.volumeMounts, [{ name: runVolume, mountPath: runDir }])
          : []),
      ]),
    ),
    ...(pod.metadata?.annotations
      ? Object.entries(annotations).map(([key, value]) => ({
          op: 'add' as const,
          path: `/metadata/annotations/${key.replace('/', '~1')}`,
          value,
        }))
      : [{ op: 'add' as const, path: '/metadata/annotations', value: annotations }]),
  ];
  return { inject: true, gateway: gateway.metadata.name, patch };
}

/** Adds `values` to the end of the list at `path`, or makes the list if there is none yet. */
function append(path: string, existing: readonly unknown[] | undefined, values: unknown[]): PatchOperation[] {
  return existing
    ? values.map((value) => ({ op: 'add', path: `${path}/-`, value }))
    : [{ op: 'add', path, value: values }];
}

/** The pod's own choice (its annotation) wins over its gateway's; either way, the pod says why. */
export function associationMode(gateway: EgressGateway, pod: V1Pod): { mode: 'Observe' | 'Strict'; reason: string } {
  const asked = pod.metadata?.annotations?.[modeAnnotation];
  if (asked === 'Observe' || asked === 'Strict')
    return { mode: asked, reason: `the pod's ${modeAnnotation} annotation` };
  return { mode: gateway.spec.association.mode, reason: `EgressGateway ${gateway.metadata.name} association.mode` };
}

/** Whether the gateway serves the pod and its association.sidecar selectors pick it. */
function selects(gateway: EgressGateway, namespaceLabels: Labels, podLabels: Labels): boolean {
  const { spec } = gateway;
  const sidecar = spec.association.sidecar;
  if (!sidecar) return false;
  return (
    [spec.namespaceSelector, sidecar.namespaceSelector].every((s) => !s || matchesSelector(s, namespaceLabels)) &&
    [spec.podSelector, sidecar.podSelector].every((s) => !s || matchesSelector(s, podLabels))
  );
}

function sidecarContainer(
  gateway: EgressGateway,
  { sidecar: settings, otel }: InjectionRequest,
  strict: boolean,
): V1Container {
  const field = (fieldPath: string) => ({ valueFrom: { fieldRef: { fieldPath } } });
  return {
    name: sidecarContainerName,
    image: settings.image,
    imagePullPolicy: settings.pullPolicy,
    restartPolicy: 'Always',
    env: [
      // Pods are served by the gateway on their own node (design.md §7 leaves remote nodes for later).
      { name: sidecarVariables.naaHost, ...field('status.hostIP') },
      { name: sidecarVariables.naaPort, value: String(gateway.spec.association.port) },
      { name: sidecarVariables.podNamespace, ...field('metadata.namespace') },
      { name: sidecarVariables.podName, ...field('metadata.name') },
      { name: sidecarVariables.podUid, ...field('metadata.uid') },
      { name: sidecarVariables.tokenFile, value: `${tokenDir}/token` },
      ...(strict ? [{ name: sidecarVariables.stampDir, value: runDir }] : []),
      ...otelEnvironment(otel, 'naat-sidecar'),
    ],
    resources: settings.resources,
    securityContext: {
      // Reading which process owns a socket (/proc/<pid>/fd of the other containers' processes,
      // whatever their user) needs CAP_SYS_PTRACE, which Kubernetes gives only to uid 0.
      runAsUser: 0,
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'], add: ['SYS_PTRACE'] },
    },
    volumeMounts: [
      { name: tokenVolume, mountPath: tokenDir, readOnly: true },
      ...(strict ? [{ name: runVolume, mountPath: runDir }] : []),
    ],
    // Strict: the kubelet starts the pod's programs only once the stamping socket is there, so
    // that their first connect() already finds it.
    ...(strict
      ? {
          startupProbe: {
            exec: { command: ['test', '-S', `${runDir}/stamp.sock`] },
            periodSeconds: 1,
            failureThreshold: 30,
          },
        }
      : {}),
  };
}

/** A token for the naat audience only, so the gateway cannot replay it against the apiserver. */
function tokenVolumeOf(): V1Volume {
  return {
    name: tokenVolume,
    projected: {
      sources: [{ serviceAccountToken: { audience: tokenAudience, expirationSeconds: 3600, path: 'token' } }],
    },
  };
}
