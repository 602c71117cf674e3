// OpenTelemetry for naat's processes, configured by the standard OTEL_* variables (endpoint,
// protocol, sampler, batch queue sizes, resource attributes). Off unless an OTLP endpoint or an
// exporter is named: a process without a collector neither loads the SDK nor tries to export.
// This module imports nothing until the SDK is wanted, so the sidecar, whose memory matters, can
// import it directly; the modules that make spans (flow-telemetry.ts, naa/tracing.ts,
// contracts/naa/tracing/) are loaded only when it runs.

export interface Telemetry {
  /** Whether the SDK runs: without it there is nothing to export to, and no reason to build spans. */
  enabled: boolean;
  shutdown(): Promise<void>;
}

/** Whether the environment asks for traces or logs to be exported. */
export function telemetryWanted(env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  const none = (list: string | undefined) => list?.split(',').some((name) => name.trim() === 'none') ?? false;
  const traces =
    !none(env.OTEL_TRACES_EXPORTER) &&
    Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_TRACES_EXPORTER);
  const logRecords =
    !none(env.OTEL_LOGS_EXPORTER) &&
    Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_LOGS_ENDPOINT || env.OTEL_LOGS_EXPORTER);
  return traces || logRecords;
}

/** Starts the SDK if wanted; `attributes` describe this process (service.name unless OTEL_SERVICE_NAME). */
export async function startTelemetry(service: string, attributes: Record<string, string>): Promise<Telemetry> {
  if (!telemetryWanted(process.env)) return { enabled: false, shutdown: async () => {} };
  const { startNodeSdk } = await import('@opentelemetry/sdk-node');
  const sdk = startNodeSdk({
    resourceAttributes: { 'service.name': process.env.OTEL_SERVICE_NAME ?? service, ...attributes },
  });
  return { enabled: true, shutdown: () => sdk.shutdown() };
}
