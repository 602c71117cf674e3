// The operator's spans. The SDK is started by startTelemetry (common/telemetry.ts) when the
// OTEL_* variables ask for it; without it these spans are the API's no-ops.
import { SpanStatusCode, trace } from '@opentelemetry/api';
import type { ReconcileResult } from './controller.ts';
import { errorText } from '../../common/index.ts';

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
