// Whether a stopped gateway agent's node still belongs to its gateway, pure. The DaemonSet
// controller stops the agent on a node that left the gateway exactly as it stops it for a rollout,
// and the ConfigMap stays: what tells the two apart is the gateway's current config and the
// node's own labels, both read at SIGTERM. The node's labels are read rather than a list of the
// gateway's nodes: a node relabelled out of nodeSelector has its agent stopped by the DaemonSet
// controller while the operator may not yet have written a config without it, but its labels have
// already changed. A rollout on a node just added, which the operator has not compiled yet, keeps
// its state for the same reason.
import type { GatewayConfig } from '../contracts/gateway/index.ts';

/** The agent's node as read at SIGTERM: its labels, deleted (404), or not known (any other answer). */
export type NodeRead = { labels: Readonly<Record<string, string>> } | 'deleted' | 'unknown';

/**
 * Why `node` is no longer one of the gateway's nodes, or undefined while it is, or while that is
 * not known: a config without placement (written by an older operator, or a standalone file) and
 * a node that cannot be read keep the kernel as it is, like a rollout.
 */
export function whyNodeLeft(node: string, placement: GatewayConfig['placement'], read: NodeRead): string | undefined {
  if (!placement) return undefined;
  if (placement.excludedNodes.includes(node)) return 'excluded: another gateway holds its ports on the node';
  if (read === 'deleted') return 'the node is deleted';
  if (read === 'unknown') return undefined;
  const unmatched = Object.entries(placement.nodeSelector)
    .filter(([key, value]) => read.labels[key] !== value)
    .map(([key, value]) => `${key}=${value}`);
  return unmatched.length ? `the node no longer has nodeSelector's ${unmatched.join(', ')}` : undefined;
}
