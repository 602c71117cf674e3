import { injectedAnnotation, modeAnnotation, modeReasonAnnotation } from './inject.ts';
import { associationModeCondition, uplinkSummary } from './status.ts';

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

  test('says nothing of a pod without the sidecar', () => {
    expect(associationModeCondition({ [modeAnnotation]: 'Strict' })).toBeUndefined();
    expect(associationModeCondition(undefined)).toBeUndefined();
  });
});
