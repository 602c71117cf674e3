// An OTLP/HTTP receiver for tests (protocol http/json): it accepts what an OpenTelemetry SDK
// exports to /v1/traces and /v1/logs and keeps each span and log record with its resource's
// attributes, flattened.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

type AnyValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };

export interface ReceivedSpan {
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  /** OTLP SpanKind: 4 producer, 5 consumer. */
  kind?: number;
  startTimeUnixNano?: string;
  endTimeUnixNano?: string;
  /** 2 is error (OTLP Status.code). */
  status?: { code?: number; message?: string };
  attributes: Record<string, string | number | boolean>;
  resource: Record<string, string | number | boolean>;
}

export interface ReceivedLog {
  eventName?: string;
  timeUnixNano?: string;
  severityText?: string;
  body?: AnyValue;
  traceId?: string;
  spanId?: string;
  attributes: Record<string, string | number | boolean>;
  resource: Record<string, string | number | boolean>;
}

export interface OtlpReceiver {
  /** For OTEL_EXPORTER_OTLP_ENDPOINT. */
  endpoint: string;
  spans: ReceivedSpan[];
  logs: ReceivedLog[];
  close(): Promise<void>;
}

const flatten = (attributes: KeyValue[] = []) =>
  Object.fromEntries(
    attributes.map(({ key, value }) => [
      key,
      value.stringValue ?? value.boolValue ?? value.doubleValue ?? Number(value.intValue ?? NaN),
    ]),
  );

type Exported<T> = Omit<T, 'attributes' | 'resource'> & { attributes?: KeyValue[] };

/**
 * The environment that makes a program's OpenTelemetry SDK export spans (and nothing else) to the
 * receiver at `endpoint`, in batches at most 200 ms old.
 */
export const exportTo = (endpoint: string): Record<string, string> => ({
  OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
  OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
  OTEL_METRICS_EXPORTER: 'none',
  OTEL_LOGS_EXPORTER: 'none',
  OTEL_BSP_SCHEDULE_DELAY: '200',
});

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const logs: ReceivedLog[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const signal = req.url === '/v1/traces' || req.url === '/v1/logs' ? req.url : undefined;
      if (!signal || !req.headers['content-type']?.includes('json')) {
        res.writeHead(415).end();
        return;
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
        resourceSpans?: Array<{
          resource?: { attributes?: KeyValue[] };
          scopeSpans?: Array<{ spans?: Array<Exported<ReceivedSpan>> }>;
        }>;
        resourceLogs?: Array<{
          resource?: { attributes?: KeyValue[] };
          scopeLogs?: Array<{ logRecords?: Array<Exported<ReceivedLog>> }>;
        }>;
      };
      for (const rs of body.resourceSpans ?? []) {
        const resource = flatten(rs.resource?.attributes);
        for (const ss of rs.scopeSpans ?? []) {
          for (const span of ss.spans ?? []) spans.push({ ...span, attributes: flatten(span.attributes), resource });
        }
      }
      for (const rl of body.resourceLogs ?? []) {
        const resource = flatten(rl.resource?.attributes);
        for (const sl of rl.scopeLogs ?? []) {
          for (const log of sl.logRecords ?? []) logs.push({ ...log, attributes: flatten(log.attributes), resource });
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    spans,
    logs,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
