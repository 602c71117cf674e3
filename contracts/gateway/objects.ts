// Where a gateway's objects are found: the operator names and labels them so, in its namespace,
// the gateway agents watch their ConfigMap by that name, and the naat CLI finds each gateway's
// compiled config and agent pods by them.

/** The name of a gateway's namespaced objects (ServiceAccount, ConfigMap, Role, DaemonSet). */
export const gatewayObjectName = (gateway: string) => `naat-gw-${gateway}`;

/** The key of the config (JSON) in the ConfigMaps the operator writes for agents, a gateway's or a node's. */
export const agentConfigKey = 'config.json';

/** The label that names the gateway of an object (its agent pods included). */
export const gatewayLabel = 'naat.dev/gateway';

/** The labels every gateway's objects carry, whichever the gateway. */
export const anyGatewayLabels: Readonly<Record<string, string>> = {
  'app.kubernetes.io/name': 'naat-dataplane',
  'app.kubernetes.io/managed-by': 'naat-operator',
};

/** The labels of a gateway's objects, and so of its agent pods. */
export function gatewayLabels(gateway: string): Record<string, string> {
  return { ...anyGatewayLabels, 'app.kubernetes.io/instance': gateway, [gatewayLabel]: gateway };
}
