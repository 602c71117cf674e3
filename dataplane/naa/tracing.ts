// The gateway's half of an association's trace (loaded only when telemetry runs; see
// ../telemetry.ts). The sidecar sends each new association with the W3C trace context of its
// `associate` span (Association.trace); the gateway continues that trace with an `apply
// association` span, from when the server received the association to when its batch was in the
// kernel, and the association's flows become children of the sidecar's span
// (../flow-telemetry.ts). The context comes from a pod: whatever is not a valid traceparent is
// ignored, never an error. The context is read with the W3C propagator itself, not the global one
// that OTEL_PROPAGATORS chooses: the protocol says W3C.
import {
  defaultTextMapGetter,
  defaultTextMapSetter,
  isSpanContextValid,
  ROOT_CONTEXT,
  SpanKind,
  trace,
  type Attributes,
  type Context,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { TraceContext } from '../../proto/index.ts';
import type { FlowVerdict } from '../verdict.ts';
import type { AssociationTracing } from './server.ts';
import type { AssociationEntry } from './table.ts';

const propagator = new W3CTraceContextPropagator();
/**
 * The longest traceparent and tracestate looked at. A version-00 traceparent has 55 characters;
 * later versions may append fields. W3C asks that tracestate be kept up to 512 characters and
 * allows dropping a longer one.
 */
const maxTraceparent = 256;
const maxTracestate = 512;

/** The remote span a carried context names, as a parent; undefined for none or an invalid one. */
export function remoteContext(carried: Partial<TraceContext>): Context | undefined {
  const { traceparent, tracestate } = carried;
  if (typeof traceparent !== 'string' || !traceparent || traceparent.length > maxTraceparent) return undefined;
  const carrier: Record<string, string> = { traceparent };
  if (typeof tracestate === 'string' && tracestate && tracestate.length <= maxTracestate) {
    carrier.tracestate = tracestate;
  }
  try {
    const context = propagator.extract(ROOT_CONTEXT, carrier, defaultTextMapGetter);
    const span = trace.getSpanContext(context);
    return span && isSpanContextValid(span) ? context : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A carried context as the gateway keeps it with the association: checked and written out anew
 * (a later version's extra fields and invalid tracestate members dropped), or undefined.
 */
export function checkedContext(carried: TraceContext | undefined): TraceContext | undefined {
  const context = carried && remoteContext(carried);
  if (!context) return undefined;
  const written: Record<string, string> = {};
  propagator.inject(context, written, defaultTextMapSetter);
  return written.traceparent ? { traceparent: written.traceparent, tracestate: written.tracestate ?? '' } : undefined;
}

/** The attributes of an association: semantic-convention names, naat.* for the gateway's decision. */
export function associationAttributes(entry: AssociationEntry, decision: FlowVerdict | undefined): Attributes {
  const { application: app } = entry;
  return {
    'k8s.namespace.name': entry.pod.namespace,
    'k8s.pod.name': entry.pod.name,
    'k8s.pod.uid': entry.pod.uid,
    ...(app.containerName ? { 'k8s.container.name': app.containerName } : {}),
    'process.executable.name': app.processName,
    'process.executable.path': app.executable,
    'process.pid': app.pid,
    'process.user.id': app.uid,
    'network.transport': entry.transport,
    'source.address': entry.sourceAddress,
    'source.port': entry.sourcePort,
    ...(entry.destinationAddress
      ? { 'network.peer.address': entry.destinationAddress, 'network.peer.port': entry.destinationPort }
      : {}),
    ...(decision ? { 'naat.verdict': decision.allowed ? 'Allow' : 'Deny' } : {}),
    ...(decision?.uplink ? { 'naat.uplink': decision.uplink } : {}),
    ...(decision?.rule ? { 'naat.rule': decision.rule } : {}),
  };
}

/**
 * The NAA server's tracing: an applied association with a context gets its span at once, from
 * the time it was received to `appliedAt`; no span is kept open while a batch is applied. The
 * spans go to the SDK's bounded batch processor.
 */
export const associationTracing: AssociationTracing = {
  context: checkedContext,
  applied(entry, decision, appliedAt) {
    const parent = entry.trace && remoteContext(entry.trace);
    if (!parent) return;
    trace
      .getTracer('naat-dataplane')
      .startSpan(
        'apply association',
        { kind: SpanKind.CONSUMER, startTime: entry.receivedAt, attributes: associationAttributes(entry, decision) },
        parent,
      )
      .end(appliedAt);
  },
};
