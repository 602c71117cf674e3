// The gateway agent's command line as the operator renders it into the agent's DaemonSet
// (operator/desired.ts), so that end-to-end tests start agents the way a cluster does.
import type { Compiled } from '../../operator/compile.ts';
import { desiredGatewayObjects } from '../../operator/desired.ts';
import { parseSettings } from '../../operator/settings.ts';
import { validate, type EgressGateway } from '../../crds/index.ts';
import { operatorSettings } from '../cluster/operator.ts';

/** Flags of the rendered gateway agent that say where it listens, with their values. */
const listenFlags = ['--listen', '--metrics-listen', '--naa-listen'];

/** The listen flags of a gateway agent the operator runs with these chart ports, as rendered. */
export function renderedListenArgs(ports: { health: number; metrics: number }): string[] {
  const settings = parseSettings(
    operatorSettings(
      'naat',
      { metrics: 8080, health: 8081, webhook: 9443 },
      {
        dataplane: {
          image: 'naat-dataplane:test',
          clusterRoleName: 'naat-dataplane',
          healthPort: ports.health,
          metricsPort: ports.metrics,
        },
      },
    ),
  );
  const gateway = validate('EgressGateway', {
    apiVersion: 'naat.dev/v1alpha1',
    kind: 'EgressGateway',
    metadata: { name: 'egress' },
    spec: { nodeSelector: {}, uplinks: { names: ['isp'] }, namespaceSelector: {} },
  });
  if (!gateway.ok) throw new Error(gateway.errors.join('; '));
  const compiled = {
    config: { gateway: 'egress', timeouts: { icmpSeconds: 30 }, sources: [], pods: [], rules: [] },
  } as unknown as Compiled;
  const daemonSet = desiredGatewayObjects(gateway.value as EgressGateway, compiled, settings, 'naat-system').find(
    (o) => o.kind === 'DaemonSet',
  ) as unknown as { spec: { template: { spec: { containers: Array<{ args: string[] }> } } } };
  const args = daemonSet.spec.template.spec.containers[0]!.args;
  return args.flatMap((arg, i) => (listenFlags.includes(arg) ? [arg, args[i + 1]!] : []));
}
