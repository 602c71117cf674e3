// Infrastructure below naat's components: command lines, structured JSON logs, OpenTelemetry start-up, the
// Prometheus text format and IP addresses as bytes. This entry point loads nothing large, so every component imports it,
// the sidecar too (its memory matters); what needs the Kubernetes client (tens of MiB) has an
// entry point of its own, kube/index.ts, for the components that talk to the apiserver.
export { addressToBytes, bytesToAddress } from './address.ts';
export { parseCommandLine, usageError } from './command-line.ts';
export { errorText, jsonLogger, type Logger } from './log.ts';
export {
  contentType as metricsContentType,
  Counter,
  Gauge,
  Histogram,
  LabelLimit,
  Registry,
  type Metric,
} from './prometheus.ts';
export { startTelemetry, telemetryWanted, type Telemetry } from './telemetry.ts';
