// Tracing, configured by the standard OTEL_* variables (endpoint, protocol, sampler, resource
// attributes). Off unless an OTLP endpoint or a trace exporter is named: an operator without a
// collector neither loads the SDK nor tries to export, and its spans are the API's no-ops.
import { SpanStatusCode, trace } from '@opentelemetry/api';
import type { ReconcileResult } from './controller.ts';
import { errorText } from './log.ts';

export interface Tracing {
  shutdown(): Promise<void>;
}

/** Whether the environment asks for traces to be exported. */
export function tracingWanted(env: NodeJS.ProcessEnv): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  if (env.OTEL_TRACES_EXPORTER?.split(',').some((name) => name.trim() === 'none')) return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_TRACES_EXPORTER);
}

/** Starts the SDK if wanted; `attributes` describe this process (service.name unless OTEL_SERVICE_NAME). */
export async function startTracing(service: string, attributes: Record<string, string>): Promise<Tracing> {
  if (!tracingWanted(process.env)) return { shutdown: async () => {} };
  const { startNodeSdk } = await import('@opentelemetry/sdk-node');
  return startNodeSdk({
    resourceAttributes: { 'service.name': process.env.OTEL_SERVICE_NAME ?? service, ...attributes },
  });
}

/** A Controller's `around`: one span per reconcile, named after the controller, failed if it throws. */
export function reconcileSpan(controller: string) {
  return (key: string, next: () => Promise<ReconcileResult>): Promise<ReconcileResult> =>
    trace
      .getTracer('naat-operator')
      .startActiveSpan(
        `reconcile ${controller}`,
        { attributes: { 'naat.controller': controller, 'naat.key': key } },
        async (span) => {
          try {
            const result = await next();
            if (result?.requeueAfterMs !== undefined) span.setAttribute('naat.requeue_after_ms', result.requeueAfterMs);
            return result;
          } catch (error) {
            span.recordException(error instanceof Error ? error : String(error));
            span.setStatus({ code: SpanStatusCode.ERROR, message: errorText(error) });
            throw error;
          } finally {
            span.end();
          }
        },
      );
}
