// Where a gateway's objects are found: the operator names and labels them so, in its namespace,
// the gateway agents watch their ConfigMap by that name, and the naat CLI finds each gateway's
// compiled config and agent pods by them.

/** The name of a gateway's namespaced objects (ServiceAccount, ConfigMap, Role, DaemonSet). */
export const gatewayObjectName = (gateway: string) => `naat-gw-${gateway}`;

/**
 * The key of a whole config (JSON) in a ConfigMap an agent reads: a node's NodeConfig, which the
 * operator writes so, or a gateway's config written by hand.
 */
export const agentConfigKey = 'config.json';

/**
 * The key of a gateway's config index (contracts/gateway/slices.ts) in its ConfigMap
 * (gatewayObjectName), as the operator writes it: the config without its long lists, and the
 * name and hash of each slice that holds them.
 */
export const configIndexKey = 'index.json';

/** The key of a slice in its ConfigMap (gatewaySliceName). */
export const configSliceKey = 'slice.json';

/**
 * The ConfigMap of a gateway's config slice `n`. Its own prefix: a suffix on the gateway's name
 * would be another gateway's name (the slice 1 of `corp` and the index of `corp-1`).
 */
export const gatewaySliceName = (gateway: string, n: number) => `naat-gws-${n}-${gateway}`;

/** The label of a gateway's config slices: its value is the slice's number. */
export const configSliceLabel = 'naat.dev/config-slice';

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
