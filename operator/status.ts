// What each object's status should say, from what the operator compiled and observed. Pure:
// conditions keep their lastTransitionTime while their status does not change.
import { driverAnnotation } from '../contracts/index.ts';
import type { Condition } from '../crds/index.ts';
import type { Compiled, PolicyFacts } from './compile.ts';
import { describeConflict, type PortConflict } from './host-ports.ts';
import { settlingReasons, type NodeSteering } from './steering.ts';
import { injectedAnnotation, modeAnnotation, modeReasonAnnotation, skippedAnnotation } from './inject.ts';

export interface DataplaneRollout {
  /** Nodes that should run the gateway's dataplane (the DaemonSet's desiredNumberScheduled). */
  desired: number;
  /** Of those, the ones whose dataplane is ready with the current pod template. */
  ready: number;
}

export type NewCondition = Omit<Condition, 'lastTransitionTime' | 'observedGeneration'>;

/** Conditions with times carried over from `previous` where the status is unchanged. */
export function conditions(
  previous: readonly Condition[] | undefined,
  generation: number,
  now: Date,
  wanted: NewCondition[],
): Condition[] {
  return wanted.map((c) => {
    const old = previous?.find((p) => p.type === c.type);
    const since = old && old.status === c.status ? old.lastTransitionTime : now.toISOString().replace(/\.\d+Z$/, 'Z');
    return { ...c, observedGeneration: generation, lastTransitionTime: since };
  });
}

/**
 * Accepted, and Ready. `nodeConflicts` are nodes of the gateway where another gateway's agent holds
 * a port its agent needs (operator/host-ports.ts): the gateway runs on its other nodes, and is not
 * accepted as it is written until the nodes are its own.
 */
export function gatewayConditions(
  compiled: Compiled,
  rollout: DataplaneRollout,
  nodeConflicts: readonly PortConflict[] = [],
): NewCondition[] {
  const missing = compiled.missingUplinks;
  const conflicts = nodeConflicts.slice(0, 10).map(describeConflict);
  return [
    missing.length
      ? {
          type: 'Accepted',
          status: 'False',
          reason: 'UplinksMissing',
          message: `no Uplink named ${missing.join(', ')}`,
        }
      : conflicts.length
        ? {
            type: 'Accepted',
            status: 'False',
            reason: 'PortConflict',
            message:
              `the dataplane does not run on ${nodeConflicts.length} of the nodes nodeSelector matches: ` +
              `${conflicts.join('; ')}${nodeConflicts.length > conflicts.length ? '; …' : ''}` +
              '. A node is the gateway node of one EgressGateway only',
          }
        : {
            type: 'Accepted',
            status: 'True',
            reason: 'Resolved',
            message: `${compiled.config.uplinks.length} uplinks, ${compiled.servedPods} pods served`,
          },
    rollout.ready > 0
      ? {
          type: 'Ready',
          status: 'True',
          reason: 'DataplaneReady',
          message: `the dataplane is ready on ${rollout.ready} of ${rollout.desired} nodes`,
        }
      : {
          type: 'Ready',
          status: 'False',
          reason: rollout.desired ? 'DataplanePending' : 'NoNodes',
          message: rollout.desired
            ? `the dataplane is ready on none of ${rollout.desired} nodes`
            : 'no node matches nodeSelector',
        },
  ];
}

export function policyConditions(
  facts: PolicyFacts | undefined,
  gatewayExists: boolean,
  rollout: DataplaneRollout,
): NewCondition[] {
  const accepted: NewCondition = !gatewayExists
    ? {
        type: 'Accepted',
        status: 'False',
        reason: 'GatewayNotFound',
        message: 'the EgressGateway named in spec.gateway does not exist',
      }
    : facts?.missingUplinks.length
      ? {
          type: 'Accepted',
          status: 'False',
          reason: 'UplinksNotInGateway',
          message: `the gateway does not balance over ${facts.missingUplinks.join(', ')}`,
        }
      : { type: 'Accepted', status: 'True', reason: 'Resolved', message: `applies to ${facts?.matchedPods ?? 0} pods` };
  const programmed: NewCondition =
    gatewayExists && rollout.desired > 0 && rollout.ready === rollout.desired
      ? {
          type: 'Programmed',
          status: 'True',
          reason: 'Applied',
          message: `in the config of ${rollout.ready} ready gateway nodes`,
        }
      : {
          type: 'Programmed',
          status: 'False',
          reason: 'Pending',
          message: `ready on ${rollout.ready} of ${rollout.desired} gateway nodes`,
        };
  const conflicting: NewCondition = facts?.conflicts.length
    ? { type: 'Conflicting', status: 'True', reason: 'Shadowed', message: facts.conflicts.join('; ').slice(0, 32768) }
    : {
        type: 'Conflicting',
        status: 'False',
        reason: 'NoConflict',
        message: 'no rule overlaps a rule of equal priority',
      };
  return [accepted, programmed, conflicting];
}

export interface UplinkNodes {
  nodes?: Array<{ node: string; healthy: boolean; activeFlows: number; portUtilisationPercent?: number }>;
}

/** SNAT port use, per node, from which the uplink warns that new flows will soon fail. */
export const portWarningPercent = 80;

/** An Uplink's summary over the entries its gateway nodes applied to status.nodes. */
export function uplinkSummary(status: UplinkNodes | undefined): {
  healthyNodes: number;
  activeFlows: number;
  ready: NewCondition;
  ports: NewCondition;
} {
  const nodes = status?.nodes ?? [];
  const healthyNodes = nodes.filter((n) => n.healthy).length;
  const activeFlows = nodes.reduce((sum, n) => sum + n.activeFlows, 0);
  const ready: NewCondition = !nodes.length
    ? { type: 'Ready', status: 'False', reason: 'NoNodes', message: 'no gateway node has reported this uplink' }
    : healthyNodes
      ? {
          type: 'Ready',
          status: 'True',
          reason: 'Healthy',
          message: `healthy on ${healthyNodes} of ${nodes.length} nodes`,
        }
      : { type: 'Ready', status: 'False', reason: 'Unhealthy', message: `unhealthy on all ${nodes.length} nodes` };
  // New flows to a destination fail once its SNAT ports are all taken: said before it happens.
  // The message names nodes, not figures, so that status changes only when the state does.
  const use = (n: (typeof nodes)[number]) => n.portUtilisationPercent ?? 0;
  const full = nodes.filter((n) => use(n) >= 100).map((n) => n.node);
  const high = nodes.filter((n) => use(n) >= portWarningPercent).map((n) => n.node);
  const ports: NewCondition = full.length
    ? {
        type: 'PortsAvailable',
        status: 'False',
        reason: 'PortsExhausted',
        message: `every SNAT port for some destination is in use on ${full.join(', ')}: new flows to it fail`,
      }
    : high.length
      ? {
          type: 'PortsAvailable',
          status: 'False',
          reason: 'PortsNearlyExhausted',
          message: `${portWarningPercent}% or more of the SNAT ports for one destination in use on ${high.join(', ')}`,
        }
      : {
          type: 'PortsAvailable',
          status: 'True',
          reason: 'PortsAvailable',
          message: `less than ${portWarningPercent}% of the SNAT ports for any destination in use`,
        };
  return { healthyNodes, activeFlows, ready, ports };
}

/** The start of the type of every condition naat writes on pods. */
export const podConditionPrefix = 'naat.dev/';

/** The pod condition that tells which association mode a pod with the sidecar is in, and why. */
export const associationCondition = `${podConditionPrefix}AssociationMode`;

/**
 * What the status of a pod the webhook gave the sidecar should say of its association mode, or of
 * one it left the sidecar out of, and why, from the annotations the webhook wrote; undefined for
 * other pods.
 */
export function associationModeCondition(
  annotations: Readonly<Record<string, string>> | undefined,
): NewCondition | undefined {
  const gateway = annotations?.[injectedAnnotation];
  const skipped = annotations?.[skippedAnnotation];
  if (!gateway && skipped) {
    return {
      type: associationCondition,
      status: 'False',
      reason: 'PodSecurity',
      message: `no sidecar: ${skipped}; the pod's flows get its gateway's pod-level rules only`,
    };
  }
  if (!gateway) return undefined;
  const mode = annotations[modeAnnotation] === 'Strict' ? 'Strict' : 'Observe';
  const why = annotations[modeReasonAnnotation] ?? `EgressGateway ${gateway}`;
  const message =
    mode === 'Strict'
      ? `Strict association, chosen by ${why}: the pod's programs stamp their connections for the gateway; ` +
        'programs that cannot preload the stamping library (static binaries) are associated as in Observe mode'
      : annotations[driverAnnotation] === 'Node'
        ? `Observe association, chosen by ${why}: the node agent reports sockets as it sees them`
        : `Observe association, chosen by ${why}: the sidecar reports sockets as it sees them`;
  return { type: associationCondition, status: 'True', reason: mode, message };
}

/**
 * Whether the gateway's served pods away from its nodes are steered to it: true when there are
 * none, or when the node agent of every node that hosts one reported ready with its current config.
 */
export function steeringReadyCondition(nodes: readonly NodeSteering[]): NewCondition {
  if (!nodes.length) {
    return {
      type: 'SteeringReady',
      status: 'True',
      reason: 'LocalOnly',
      message: 'every served pod runs on a gateway node: nothing to steer',
    };
  }
  const notReady = nodes.filter((n) => !n.ready);
  if (!notReady.length) {
    return {
      type: 'SteeringReady',
      status: 'True',
      reason: 'Ready',
      message: `steering is ready on all ${nodes.length} nodes that host served pods away from the gateway's nodes`,
    };
  }
  const reasons = new Set(notReady.map((n) => n.reason));
  const named = notReady.slice(0, 10).map((n) => `${n.node} (${n.reason})`);
  return {
    type: 'SteeringReady',
    status: 'False',
    reason: reasons.size === 1 ? notReady[0]!.reason : 'NodesNotReady',
    message:
      `steering is not ready on ${notReady.length} of ${nodes.length} nodes: ${named.join(', ')}` +
      (notReady.length > named.length ? ', …' : '') +
      (reasons.size === 1 ? `; ${notReady[0]!.message}` : ''),
  };
}

/** The pod condition that tells whether a served pod away from its gateway's nodes is steered to it. */
export const steeredCondition = `${podConditionPrefix}Steered`;

/**
 * How long a new pod goes without its Steered condition while its node settles: its node agent
 * has not reported yet, or not with the node's current config (NotReported, ConfigPending). An
 * agent applies a new config within a second; told False and then True, each new pod cost two
 * status writes and two Events, four hundred writes a second at a hundred new pods a second, for
 * nothing a user needs. Past it the pod is told False as any other, never silently unserved.
 */
export const settlingGraceMs = 5000;
const settling: ReadonlySet<string> = new Set(Object.values(settlingReasons));

/**
 * When `wanted`, the Steered condition of a pod created at `createdAt` (ms) that has `existing`,
 * is due: undefined for now, or the time (ms) a new pod on a settling node is told.
 */
export function steeredConditionDue(
  wanted: NewCondition,
  existing: { status: string } | undefined,
  createdAt: number | undefined,
  now: number,
): number | undefined {
  if (existing || wanted.status !== 'False' || !settling.has(wanted.reason) || createdAt === undefined) {
    return undefined;
  }
  const due = createdAt + settlingGraceMs;
  return due > now ? due : undefined;
}

/**
 * The Steered condition of every served pod away from a gateway's nodes, by namespace/name: false
 * with the first reason (gateways by name) while any gateway serving it is not steered to from its
 * node, so that such a pod is never silently unserved. Except that a pod told steered to the same
 * gateways (`told`, its condition as written) stays so while its node only has a newer config to
 * apply (ConfigPending): the config its node agent applied steers it, and every pod of a node
 * told false and true again for each change on that node (another pod there came or went) cost
 * four writes a pod, per change, on the node's every pod.
 */
export function steeredPodConditions(
  gateways: ReadonlyArray<{ compiled: Compiled; steering: readonly NodeSteering[] }>,
  told: (key: string) => { status?: string; reason?: string; message?: string } | undefined = () => undefined,
): Map<string, NewCondition> {
  const verdicts = new Map<string, Array<{ gateway: string; node: NodeSteering }>>();
  const ordered = [...gateways].sort((a, b) => a.compiled.config.gateway.localeCompare(b.compiled.config.gateway));
  for (const { compiled, steering } of ordered) {
    const byNode = new Map(steering.map((n) => [n.node, n]));
    for (const pod of compiled.away) {
      const key = `${pod.namespace}/${pod.name}`;
      verdicts.set(key, [
        ...(verdicts.get(key) ?? []),
        { gateway: compiled.config.gateway, node: byNode.get(pod.node)! },
      ]);
    }
  }
  const result = new Map<string, NewCondition>();
  for (const [key, list] of verdicts) {
    const steered: NewCondition = {
      type: steeredCondition,
      status: 'True',
      reason: 'Steered',
      message: `flows are steered through the tunnel to the nodes of EgressGateway ${list.map((v) => v.gateway).join(', ')}`,
    };
    const failing = list.filter((v) => !v.node.ready);
    const before = told(key);
    const stillSteered =
      failing.every((v) => v.node.reason === settlingReasons.configPending) &&
      before?.status === steered.status &&
      before.reason === steered.reason &&
      before.message === steered.message;
    const first = failing[0];
    result.set(
      key,
      first && !stillSteered
        ? {
            type: steeredCondition,
            status: 'False',
            reason: first.node.reason,
            message: `flows are not steered to EgressGateway ${first.gateway}: ${first.node.message}`,
          }
        : steered,
    );
  }
  return result;
}
