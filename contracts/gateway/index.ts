// The compiled gateway config: the contract between the operator, which writes it, and the
// dataplane agent, which applies it; and the prefix arithmetic both sides do on its addresses.
export {
  CompiledRule,
  CompiledUplink,
  ConfigError,
  configVersion,
  GatewayConfig,
  parseGatewayConfig,
} from './config.ts';
export { canonicalAddress, contains, normalisePrefixes } from './prefixes.ts';
