import { injectedAnnotation, modeAnnotation, modeReasonAnnotation } from './inject.ts';
import type { Compiled } from './compile.ts';
import {
  associationModeCondition,
  gatewayConditions,
  settlingGraceMs,
  steeredCondition,
  steeredConditionDue,
  uplinkSummary,
} from './status.ts';

const node = (name: string, portUtilisationPercent: number, healthy = true) => ({
  node: name,
  healthy,
  activeFlows: 1,
  portUtilisationPercent,
});

describe('uplink summary', () => {
  test('says SNAT ports run short before they run out, naming the nodes', () => {
    expect(uplinkSummary({ nodes: [node('a', 10), node('b', 79.9)] }).ports).toEqual({
      type: 'PortsAvailable',
      status: 'True',
      reason: 'PortsAvailable',
      message: 'less than 80% of the SNAT ports for any destination in use',
    });
    expect(uplinkSummary({ nodes: [node('a', 10), node('b', 80)] }).ports).toMatchObject({
      status: 'False',
      reason: 'PortsNearlyExhausted',
      message: '80% or more of the SNAT ports for one destination in use on b',
    });
    expect(uplinkSummary({ nodes: [node('a', 100), node('b', 85)] }).ports).toMatchObject({
      status: 'False',
      reason: 'PortsExhausted',
      message: 'every SNAT port for some destination is in use on a: new flows to it fail',
    });
  });

  test('the condition does not change while the use moves within one state', () => {
    const at = (percent: number) => uplinkSummary({ nodes: [node('a', percent)] }).ports;
    expect(at(12)).toEqual(at(55));
    expect(at(81)).toEqual(at(95));
  });
});

describe('association mode condition', () => {
  test('says which mode a pod with the sidecar is in and what chose it', () => {
    expect(
      associationModeCondition({
        [injectedAnnotation]: 'gw',
        [modeAnnotation]: 'Strict',
        [modeReasonAnnotation]: 'the pod annotation',
      }),
    ).toMatchObject({
      type: 'naat.dev/AssociationMode',
      status: 'True',
      reason: 'Strict',
      message: expect.stringMatching(/^Strict association, chosen by the pod annotation: /),
    });
    expect(associationModeCondition({ [injectedAnnotation]: 'gw' })).toMatchObject({
      reason: 'Observe',
      message: 'Observe association, chosen by EgressGateway gw: the sidecar reports sockets as it sees them',
    });
  });

  test('says when the node agent is the driver', () => {
    expect(associationModeCondition({ [injectedAnnotation]: 'gw', 'naat.dev/association-driver': 'Node' })).toEqual({
      type: 'naat.dev/AssociationMode',
      status: 'True',
      reason: 'Observe',
      message: 'Observe association, chosen by EgressGateway gw: the node agent reports sockets as it sees them',
    });
  });

  test('says nothing of a pod without the sidecar', () => {
    expect(
      associationModeCondition({ 'naat.dev/sidecar-skipped': 'namespace shop enforces Pod Security level baseline' }),
    ).toEqual({
      type: 'naat.dev/AssociationMode',
      status: 'False',
      reason: 'PodSecurity',
      message:
        "no sidecar: namespace shop enforces Pod Security level baseline; the pod's flows get its gateway's pod-level rules only",
    });
    expect(associationModeCondition({ [modeAnnotation]: 'Strict' })).toBeUndefined();
    expect(associationModeCondition(undefined)).toBeUndefined();
  });
});

describe('gateway conditions', () => {
  const compiled = {
    config: { uplinks: [{}] },
    servedPods: 2,
    missingUplinks: [],
  } as unknown as Compiled;
  const rollout = { desired: 1, ready: 1 };

  test('refuse a gateway on the nodes another gateway holds, naming both and the port', () => {
    expect(gatewayConditions(compiled, rollout)[0]).toMatchObject({ status: 'True', reason: 'Resolved' });
    expect(
      gatewayConditions(compiled, rollout, [{ node: 'gw-2', port: 9091, heldBy: 'older', holder: 'gateway agent' }])[0],
    ).toEqual({
      type: 'Accepted',
      status: 'False',
      reason: 'PortConflict',
      message:
        'the dataplane does not run on 1 of the nodes nodeSelector matches: node gw-2 runs the agent of EgressGateway older, which listens at port 9091. A node is the gateway node of one EgressGateway only',
    });
  });
});

describe('when a Steered condition is due', () => {
  const created = 1_000_000;
  const notSteered = (reason: string) => ({ type: steeredCondition, status: 'False' as const, reason, message: 'm' });
  const steered = { type: steeredCondition, status: 'True' as const, reason: 'Steered', message: 'm' };

  test('a new pod on a settling node is told only once it is past the grace', () => {
    for (const reason of ['NotReported', 'ConfigPending']) {
      expect(steeredConditionDue(notSteered(reason), undefined, created, created + 100)).toBe(
        created + settlingGraceMs,
      );
      expect(steeredConditionDue(notSteered(reason), undefined, created, created + settlingGraceMs)).toBeUndefined();
    }
  });

  test('steered, a failure of its node, a pod told before or of unknown age: at once', () => {
    const young = created + 100;
    expect(steeredConditionDue(steered, undefined, created, young)).toBeUndefined();
    expect(steeredConditionDue(notSteered('PortConflict'), undefined, created, young)).toBeUndefined();
    expect(steeredConditionDue(notSteered('NotReported'), { status: 'True' }, created, young)).toBeUndefined();
    expect(steeredConditionDue(notSteered('ConfigPending'), undefined, undefined, young)).toBeUndefined();
  });
});
