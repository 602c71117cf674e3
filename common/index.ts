// Infrastructure below naat's components: command lines, structured JSON logs, OpenTelemetry
// start-up, IP addresses as bytes, listen addresses, and the DER of certificates and certification
// requests, rendezvous hashing, bounded concurrency. This entry point loads nothing large, so
// every component imports it, the sidecar too (its memory matters); what needs the Kubernetes
// client (tens of MiB) has an entry point of its own, kube/index.ts, for the components that talk
// to the apiserver, and so have the /metrics of the agents and the operator, metrics/index.ts.
export { addressToBytes, bytesToAddress } from './address.ts';
export * as der from './der.ts';
export { certificationRequest, parseCertificationRequest, RequestError, type CertificationRequest } from './pkcs10.ts';
export { eachAtMost } from './concurrency.ts';
export { rendezvous } from './rendezvous.ts';
export { parseCommandLine, usageError } from './command-line.ts';
export { formatListenAddress, parseListenAddress, type ListenAddress } from './listen-address.ts';
export { ignoreIpServerNameWarning } from './server-name-warning.ts';
export {
  errorText,
  jsonLines,
  jsonLogger,
  logLevelFromEnvironment,
  logLevels,
  logLevelVariable,
  ProblemLog,
  setLogLevel,
  type Logger,
  type LogLevel,
} from './log.ts';
export { startTelemetry, telemetryWanted, type Telemetry } from './telemetry.ts';
