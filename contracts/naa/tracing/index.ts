// The driver's half of an association's trace, the sidecar's or the node agent's (loaded only
// when telemetry runs; see common/telemetry.ts): a span `associate` per new association, from when
// the socket was first seen to when the gateway acknowledged the message that carried it, whose W3C
// context travels in the message (Association.trace) so that the gateway's spans join the trace. It is
// written with the W3C propagator itself, not the global one that OTEL_PROPAGATORS chooses: the
// protocol says W3C.
import {
  defaultTextMapSetter,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
} from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { Association, AssociationTracer } from '../index.ts';

const propagator = new W3CTraceContextPropagator();

/** Semantic-convention names: the pod's side is the source, the destination the network peer. */
export function associationAttributes({ flow, application: app }: Association): Attributes {
  return {
    'network.transport': flow.transport,
    ...(flow.sourceAddress ? { 'source.address': flow.sourceAddress } : {}),
    'source.port': flow.sourcePort,
    ...(flow.destinationAddress
      ? { 'network.peer.address': flow.destinationAddress, 'network.peer.port': flow.destinationPort }
      : {}),
    'process.executable.name': app.processName,
    'process.executable.path': app.executable,
    'process.pid': app.pid,
    'process.user.id': app.uid,
    ...(app.containerName ? { 'k8s.container.name': app.containerName } : {}),
  };
}

/**
 * The sidecar's own sockets (its stream to the gateway, its exports) are not traced: an export
 * over a new connection would otherwise make a span, whose export would make the next one.
 */
export const associationTracer: AssociationTracer = {
  start(association) {
    if (association.application.pid === process.pid) return undefined;
    const span = trace
      .getTracer('naat-sidecar')
      .startSpan(
        'associate',
        { kind: SpanKind.PRODUCER, startTime: association.observedAt, attributes: associationAttributes(association) },
        ROOT_CONTEXT,
      );
    const carrier: Record<string, string> = {};
    propagator.inject(trace.setSpan(ROOT_CONTEXT, span), carrier, defaultTextMapSetter);
    return {
      trace: { traceparent: carrier.traceparent ?? '', tracestate: carrier.tracestate ?? '' },
      end(error) {
        if (error) span.setStatus({ code: SpanStatusCode.ERROR, message: error });
        span.end();
      },
    };
  },
};
