// The compiled gateway config: the contract between the operator, which writes it, and the
// dataplane agent, which applies it; the prefix arithmetic both sides do on its addresses; and the
// node config of cluster-wide egress (steering.ts), which the operator writes for node agents; and
// the names and labels that find a gateway's objects (objects.ts), and the index and slices its
// config is stored in (slices.ts), with its hash (texts.ts); and the Leases through which gateway
// nodes hold their failover addresses (failover.ts).
export {
  CompiledRule,
  CompiledUplink,
  ConfigError,
  configVersion,
  GatewayConfig,
  parseGatewayConfig,
  uplinkMarkMask,
} from './config.ts';
export {
  failoverAnnotations,
  failoverLeaseLabels,
  failoverLeaseName,
  failoverNodeLabel,
  type FailoverClaim,
  type FailoverReason,
} from './failover.ts';
export {
  agentConfigKey,
  anyGatewayLabels,
  configIndexKey,
  configSliceKey,
  configSliceLabel,
  gatewayLabel,
  gatewayLabels,
  gatewayObjectName,
  gatewaySliceName,
} from './objects.ts';
export {
  assembleConfig,
  readGatewayConfig,
  sliceBudgetBytes,
  sliceConfig,
  sliceHash,
  type ConfigIndex,
  type ConfigSlice,
  type SlicedConfig,
} from './slices.ts';
export { configHash, nodeConfigHash } from './texts.ts';
export { canonicalAddress, contains, normalisePrefixes, prefixRange } from './prefixes.ts';
export { defaultMarks, isContiguous, markField, markOf, valueOf, type MarkField } from './marks.ts';
export {
  NodeConfig,
  nodeAgentFieldManager,
  nodeConfigVersion,
  NodeGateway,
  parseNodeConfig,
  SteeredPod,
} from './steering.ts';
export { NodeAssociation } from './node-association.ts';
export { Tunnel, TunnelEndpoint } from './tunnel.ts';
