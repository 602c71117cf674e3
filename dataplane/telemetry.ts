// OpenTelemetry for naat's processes, configured by the standard OTEL_* variables (endpoint,
// protocol, sampler, batch queue sizes, resource attributes). Off unless an OTLP endpoint or an
// exporter is named: a process without a collector neither loads the SDK nor tries to export,
// and the API's no-ops cost nothing. The dataplane's own signals are the flows: each attribution
// record, when its flow ends, becomes a span (start to end) and a log record.
import { logs, ROOT_CONTEXT, SeverityNumber, trace, type Attributes } from '@opentelemetry/api';
import { endpoint, type AttributionRecord } from './attribution.ts';

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

/**
 * A flow's attributes: semantic-convention names where there are some (the pod's side is the
 * source, the destination is the network peer), naat.* for the translation and its decision.
 */
export function flowAttributes(r: AttributionRecord): Attributes {
  const optional = (key: string, value: string | number | undefined) => (value === undefined ? {} : { [key]: value });
  return {
    'network.transport': r.protocol,
    'network.type': r.family === 4 ? 'ipv4' : 'ipv6',
    'source.address': r.source,
    ...optional('source.port', r.sourcePort),
    'network.peer.address': r.destination,
    ...optional('network.peer.port', r.destinationPort),
    ...optional('k8s.namespace.name', r.pod?.namespace),
    ...optional('k8s.pod.name', r.pod?.name),
    ...optional('k8s.container.name', r.container),
    ...optional('process.executable.name', r.application?.processName),
    ...optional('process.executable.path', r.application?.executable),
    ...optional('process.user.id', r.application?.uid),
    ...optional('naat.uplink', r.uplink),
    'naat.mapped.address': r.mappedAddress,
    ...optional('naat.mapped.port', r.mappedPort),
    ...optional('naat.policy', r.policy),
    ...optional('naat.rule', r.rule),
    'naat.verdict': r.verdict,
    ...optional('naat.bytes.sent', r.counters?.bytesSent),
    ...optional('naat.bytes.received', r.counters?.bytesReceived),
    ...optional('naat.packets.sent', r.counters?.packetsSent),
    ...optional('naat.packets.received', r.counters?.packetsReceived),
  };
}

const scope = 'naat-dataplane';

/**
 * Exports an ended flow as a span from its start to its end and as a log record of the
 * translation that points at the span. Both go to the SDK's batch processors, whose queues are
 * bounded (OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BLRP_MAX_QUEUE_SIZE): a flood of flows drops records
 * there instead of growing the agent. The sampler (OTEL_TRACES_SAMPLER) thins the spans.
 */
export function exportFlow(r: AttributionRecord): void {
  const attributes = flowAttributes(r);
  const span = trace.getTracer(scope).startSpan('nat flow', { startTime: r.start, attributes }, ROOT_CONTEXT);
  span.end(r.end);
  logs.getLogger(scope).emit({
    eventName: 'naat.nat.translation',
    timestamp: r.end,
    severityNumber: SeverityNumber.INFO,
    severityText: 'INFO',
    body: `Translated ${endpoint(r.source, r.sourcePort)} to ${endpoint(r.mappedAddress, r.mappedPort)}`,
    attributes: {
      ...attributes,
      'naat.flow.start': r.start.toISOString(),
      ...(r.end ? { 'naat.flow.end': r.end.toISOString() } : {}),
    },
    context: trace.setSpan(ROOT_CONTEXT, span),
  });
}
