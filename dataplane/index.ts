// The dataplane's public entry point for other components: the compiled gateway config (the
// contract between the operator, which writes it, and the agent, which applies it) and the
// address arithmetic both sides need, the audience of the tokens sidecars prove their pod with,
// and the OpenTelemetry start-up and Prometheus text format every component shares.
export {
  CompiledRule,
  CompiledUplink,
  ConfigError,
  configVersion,
  GatewayConfig,
  parseGatewayConfig,
} from './config.ts';
export { contains } from './ip.ts';
export { pooledKubeConfig } from './kube.ts';
export { tokenAudience } from './naa/auth.ts';
export { contentType as metricsContentType, Counter, Gauge, Histogram, Registry } from './prometheus.ts';
export { startTelemetry, telemetryWanted, type Telemetry } from './telemetry.ts';
