// The dataplane's own signals: each attribution record, when its flow ends, becomes a span
// (start to end) and a log record. Loaded only when telemetry runs (see telemetry.ts). A flow whose
// association carried the sidecar's trace context is a child of the sidecar's `associate` span,
// so its trace starts where the socket was first seen.
import { logs, ROOT_CONTEXT, SeverityNumber, trace, type Attributes } from '@opentelemetry/api';
import { endpoint, type AttributionRecord } from './attribution.ts';
import { remoteContext } from './naa/tracing.ts';

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
 * there instead of growing the agent. The sampler (OTEL_TRACES_SAMPLER) thins the spans; a flow
 * with an association context follows the sidecar's sampling decision (parent-based by default).
 */
export function exportFlow(r: AttributionRecord): void {
  const attributes = flowAttributes(r);
  const parent = (r.trace && remoteContext(r.trace)) ?? ROOT_CONTEXT;
  const span = trace.getTracer(scope).startSpan('nat flow', { startTime: r.start, attributes }, parent);
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
