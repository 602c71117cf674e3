// Sidecar injection, the pure part of the admission webhook: for a pod being created, which
// gateway (if any) wants the NAA sidecar in it, and the JSON patch that adds it.
//
// The sidecar is a native sidecar (an init container that keeps running, Kubernetes ≥ 1.29): the
// kubelet starts it before the application containers, so their first connections are already
// watched, and it does not keep a Job's pod alive. It shares the pod's network namespace (the
// sockets) and, through shareProcessNamespace, its processes (who owns each socket).
//
// Seeing which process owns a socket means reading /proc/<pid>/fd of the pod's processes. For a
// process of its own user and group the kernel lets the sidecar do that with no capability at all;
// for anyone else's it needs CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE, which Kubernetes grants only
// to uid 0 (no ambient capabilities; no privilege escalation rules out file capabilities).
import type { V1Container, V1Pod, V1PodSpec, V1SecurityContext, V1Volume } from '@kubernetes/client-node';
import { logLevelVariable } from '../common/index.ts';
import type { EgressGateway } from '../crds/index.ts';
import {
  containerNameVariable,
  driverAnnotation,
  sidecarVariables,
  stampFolder,
  stampLibraryName,
  tokenAudience,
  tokenVolume,
} from '../contracts/index.ts';
import { sidecarContainerName } from './compile.ts';
import { matchesSelector, type Labels } from './selector.ts';
import { processEnvironment, type OperatorSettings } from './settings.ts';

/** The annotation that records which gateway's sidecar a pod got. */
export const injectedAnnotation = 'naat.dev/sidecar-gateway';
/** Observe or Strict, as the webhook decided; a pod may also ask by setting it itself. */
export const modeAnnotation = 'naat.dev/association-mode';
export const modeReasonAnnotation = 'naat.dev/association-mode-reason';
/** Why the webhook left out the sidecar of a pod its gateway selects, when the pod's owner should know. */
export const skippedAnnotation = 'naat.dev/sidecar-skipped';
export const tokenDir = '/var/run/secrets/naat';
/** Strict mode: the folder the sidecar shares with the pod's programs (library and socket). */
export const runVolume = 'naat-run';
export const runDir = stampFolder;
export const stampLibrary = `${runDir}/${stampLibraryName}`;
/** Strict mode with the Node driver: the first init container, which places the library and waits for the node agent. */
export const stampInitContainerName = 'naat-stamp-init';
/** The user of the sidecar's image, for the stamp init container of a pod whose containers do not all run as one. */
const imageUser = { uid: 1000, gid: 1000 };

export type PatchOperation = { op: 'add'; path: string; value: unknown };

export interface InjectionRequest {
  pod: V1Pod;
  /** The namespace of the request: a pod being created may not carry one yet. */
  namespace: string;
  namespaceLabels: Labels;
  gateways: readonly EgressGateway[];
  sidecar: OperatorSettings['sidecar'];
  otel: OperatorSettings['otel'];
  logLevel: OperatorSettings['logLevel'];
  /**
   * The CA certificate (PEM, public) that issues the agents' certificates. The sidecar gets it
   * in its environment: set once at admission, it needs no Secret, ConfigMap or right in the pod's
   * namespace, and nothing in the pod can change it. A new CA reaches pods created after it.
   */
  caCertificate: string;
}

/**
 * Not injecting: `reason` for the logs; `warning` and `patch` (which records the reason on the pod,
 * for its status condition) when the pod's owner should know (the apiserver shows the warning to
 * whoever created the pod, kubectl prints it).
 */
export type Injection =
  | { inject: false; reason: string; warning?: string; patch?: PatchOperation[] }
  | { inject: true; gateway: string; patch: PatchOperation[] };

/** The namespace label Pod Security Admission enforces a level by. */
export const podSecurityEnforceLabel = 'pod-security.kubernetes.io/enforce';
/**
 * Pod Security levels that forbid the root sidecar: baseline allows no added capability beyond its
 * fixed list (which has neither of the sidecar's), restricted also wants non-root. The sidecar that
 * runs as the pod's own user meets both.
 */
const levelsForbiddingRootSidecar = new Set(['baseline', 'restricted']);

/**
 * The one user and group that every container of the pod runs as, when the pod sets both for each
 * of them and the user is not root; undefined otherwise (a container would run as its image says,
 * which the webhook cannot see).
 */
export function podUser(spec: V1PodSpec): { uid: number; gid: number } | undefined {
  const ids = [...(spec.initContainers ?? []), ...spec.containers].map((c) => ({
    uid: c.securityContext?.runAsUser ?? spec.securityContext?.runAsUser,
    gid: c.securityContext?.runAsGroup ?? spec.securityContext?.runAsGroup,
  }));
  const [first] = ids;
  if (first?.uid === undefined || first.gid === undefined || first.uid === 0) return undefined;
  if (!ids.every((id) => id.uid === first.uid && id.gid === first.gid)) return undefined;
  return { uid: first.uid, gid: first.gid };
}

export function injection(request: InjectionRequest): Injection {
  const { pod } = request;
  const spec = pod.spec;
  if (!spec) return { inject: false, reason: 'the pod has no spec' };
  const containers = [...(spec.initContainers ?? []), ...spec.containers];
  if (containers.some((c) => c.name === sidecarContainerName || c.name === stampInitContainerName))
    return { inject: false, reason: 'the pod already has the sidecar' };
  // Host-network pods share the node's sockets: a sidecar would report the node's, not the pod's.
  if (spec.hostNetwork) return { inject: false, reason: 'host-network pods are not associated' };

  const gateway = [...request.gateways]
    .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name))
    .find((g) => selects(g, request.namespaceLabels, pod.metadata?.labels));
  if (!gateway) return { inject: false, reason: 'no gateway injects this pod' };
  if (associationDriver(gateway, pod) === 'Node') return nodeDriven(gateway, request, spec);
  // Where the namespace's Pod Security level admits it, the root sidecar keeps the pod's programs
  // out of its own process (they cannot read its token through /proc); elsewhere the sidecar runs
  // as the pod's user without capabilities, if the pod has one. A pod the level would reject with
  // either is left as it was, so that it still starts (with the gateway's pod-level rules) rather
  // than never being admitted at all.
  const level = request.namespaceLabels?.[podSecurityEnforceLabel];
  const user = level !== undefined && levelsForbiddingRootSidecar.has(level) ? podUser(spec) : undefined;
  if (level !== undefined && levelsForbiddingRootSidecar.has(level) && !user) {
    const reason =
      `namespace ${request.namespace} enforces Pod Security level ${level}, which forbids the sidecar as root ` +
      `(CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE), and the pod's containers do not all run as one non-root user and group`;
    return {
      inject: false,
      reason,
      warning:
        `the NAA sidecar of EgressGateway ${gateway.metadata.name} was not injected: ${reason}; its flows get the gateway's pod-level rules only. ` +
        `Set runAsUser and runAsGroup in the pod's securityContext (the sidecar then runs as that user, without capabilities), ` +
        `or label the namespace ${podSecurityEnforceLabel}=privileged, to have it injected`,
      patch: annotate(pod, { [skippedAnnotation]: reason }),
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
    ...append('/spec/initContainers', spec.initContainers, [sidecarContainer(gateway, request, strict, user)]),
    // "add" replaces an existing member (RFC 6902 §4.1), so a pod that said false gets true.
    { op: 'add', path: '/spec/shareProcessNamespace', value: true },
    ...append('/spec/volumes', spec.volumes, volumes),
    // Each container names itself to the sidecar (which reads it from its processes' environment);
    // in strict mode, every program also preloads the stamping library from the sidecar's folder.
    ...eachContainer(spec, strict, (container) => [{ name: containerNameVariable, value: container.name }]),
    ...annotate(pod, annotations),
  ];
  return { inject: true, gateway: gateway.metadata.name, patch };
}

/**
 * Patches every container of the pod (init containers included) with `env`, and in strict mode
 * with the stamping library preloaded from the shared folder, which it mounts.
 */
function eachContainer(
  spec: V1PodSpec,
  strict: boolean,
  env: (container: V1Container) => Array<{ name: string; value: string }>,
): PatchOperation[] {
  return (['initContainers', 'containers'] as const).flatMap((list) =>
    (spec[list] ?? []).flatMap((container, i) => {
      const variables = [...env(container), ...(strict ? [{ name: 'LD_PRELOAD', value: stampLibrary }] : [])];
      return [
        ...(variables.length ? append(`/spec/${list}/${i}/env`, container.env, variables) : []),
        ...(strict
          ? append(`/spec/${list}/${i}/volumeMounts`, container.volumeMounts, [{ name: runVolume, mountPath: runDir }])
          : []),
      ];
    }),
  );
}

/**
 * The node agent drives the pod: no sidecar, no shared process namespace, no capability, so Pod
 * Security has nothing to forbid. The pod gets its annotations, which say it is node-driven: the
 * gateways take its node agent's stream for it only then. In strict mode it also gets the shared
 * folder (a memory emptyDir) in every container, the library preloaded from it, and a first init
 * container that places the library there and waits for the node agent to answer on the folder's
 * stamp socket (sidecar/stamp-init.ts); it runs as a non-root user without capabilities, which
 * Pod Security restricted admits.
 */
function nodeDriven(gateway: EgressGateway, request: InjectionRequest, spec: V1PodSpec): Injection {
  const { pod } = request;
  const { mode, reason } = associationMode(gateway, pod);
  const annotations = annotate(pod, {
    [injectedAnnotation]: gateway.metadata.name,
    [driverAnnotation]: 'Node',
    [modeAnnotation]: mode,
    [modeReasonAnnotation]: reason,
  });
  if (mode !== 'Strict') return { inject: true, gateway: gateway.metadata.name, patch: annotations };
  const init = stampInitContainer(request, podUser(spec) ?? imageUser);
  const patch: PatchOperation[] = [
    ...append('/spec/volumes', spec.volumes, [{ name: runVolume, emptyDir: { medium: 'Memory' } }]),
    ...eachContainer(spec, true, () => []),
    // Last, at the front: the operations above name the init containers by their places before it.
    spec.initContainers
      ? { op: 'add', path: '/spec/initContainers/0', value: init }
      : { op: 'add', path: '/spec/initContainers', value: [init] },
    ...annotations,
  ];
  return { inject: true, gateway: gateway.metadata.name, patch };
}

function stampInitContainer(
  { sidecar: settings, logLevel }: InjectionRequest,
  user: { uid: number; gid: number },
): V1Container {
  return {
    name: stampInitContainerName,
    image: settings.image,
    imagePullPolicy: settings.pullPolicy,
    command: ['node', 'dist/sidecar/stamp-init.js'],
    env: [
      { name: sidecarVariables.stampDir, value: runDir },
      { name: logLevelVariable, value: logLevel },
    ],
    resources: settings.resources,
    securityContext: podUserSecurity(user),
    volumeMounts: [{ name: runVolume, mountPath: runDir }],
  };
}

/** The pod's own choice of driver (its annotation) wins over its gateway's. */
export function associationDriver(gateway: EgressGateway, pod: V1Pod): 'Sidecar' | 'Node' {
  const asked = pod.metadata?.annotations?.[driverAnnotation];
  return asked === 'Sidecar' || asked === 'Node' ? asked : gateway.spec.association.driver;
}

function annotate(pod: V1Pod, annotations: Record<string, string>): PatchOperation[] {
  return pod.metadata?.annotations
    ? Object.entries(annotations).map(([key, value]) => ({
        op: 'add',
        path: `/metadata/annotations/${key.replace('/', '~1')}`,
        value,
      }))
    : [{ op: 'add', path: '/metadata/annotations', value: annotations }];
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
  { sidecar: settings, logLevel, otel, caCertificate }: InjectionRequest,
  strict: boolean,
  user: { uid: number; gid: number } | undefined,
): V1Container {
  const field = (fieldPath: string) => ({ valueFrom: { fieldRef: { fieldPath } } });
  return {
    name: sidecarContainerName,
    image: settings.image,
    imagePullPolicy: settings.pullPolicy,
    restartPolicy: 'Always',
    env: [
      // The NAA server on the pod's own node: the gateway's agent there, or the node agent that
      // relays the stream to the gateway's nodes.
      { name: sidecarVariables.naaHost, ...field('status.hostIP') },
      { name: sidecarVariables.naaPort, value: String(gateway.spec.association.port) },
      // The agent there must show a certificate from this CA for the node's address.
      { name: sidecarVariables.naaCa, value: caCertificate },
      { name: sidecarVariables.podNamespace, ...field('metadata.namespace') },
      { name: sidecarVariables.podName, ...field('metadata.name') },
      { name: sidecarVariables.podUid, ...field('metadata.uid') },
      { name: sidecarVariables.tokenFile, value: `${tokenDir}/token` },
      ...(strict ? [{ name: sidecarVariables.stampDir, value: runDir }] : []),
      ...processEnvironment({ logLevel, otel }, 'naat-sidecar'),
    ],
    resources: settings.resources,
    securityContext: user ? podUserSecurity(user) : settings.securityContext,
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

/**
 * As the pod's user and group: /proc/<pid>/fd of a process of the same user and group opens and
 * reads with no capability, and the container meets Pod Security restricted. (Otherwise the
 * sidecar runs as root with the chart's sidecar.securityContext: settings.ts says why.)
 */
export function podUserSecurity(user: { uid: number; gid: number }): V1SecurityContext {
  return {
    allowPrivilegeEscalation: false,
    readOnlyRootFilesystem: true,
    runAsUser: user.uid,
    runAsGroup: user.gid,
    runAsNonRoot: true,
    capabilities: { drop: ['ALL'] },
    seccompProfile: { type: 'RuntimeDefault' },
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
