// The sidecar-injection webhook: an HTTPS server the apiserver calls with an AdmissionReview for
// each pod being created, answering with the JSON patch of operator/inject.ts. Every replica
// serves it (a leader change does not interrupt admission); the certificate comes from the
// webhook Secret and is swapped in without a restart when the leader renews it.
//
// A review this webhook cannot decide (caches not synced yet, a bug) is admitted unchanged with a
// warning that kubectl shows: the webhook's job is to add a sidecar, never to stop a pod.
import type { V1Pod } from '@kubernetes/client-node';
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { KeyPair } from './certificates.ts';
import { injection, type InjectionRequest, type Injection, type PatchOperation } from './inject.ts';
import { errorText, type Logger } from '../common/index.ts';

export const webhookPath = '/mutate-pods';
/** The apiserver sends at most its request size limit (3 MiB) of object. */
const maxBody = 4 << 20;

export interface AdmissionRequest {
  uid: string;
  kind?: { kind?: string };
  namespace?: string;
  operation?: string;
  object?: V1Pod;
}

export interface WebhookOptions {
  port: number;
  host?: string;
  /** What injection needs besides the pod; throws when it cannot be known (caches not synced). */
  context: (namespace: string) => Promise<Omit<InjectionRequest, 'pod' | 'namespace'>>;
  log: Logger;
}

export class WebhookServer {
  readonly #server: Server;
  readonly #o: WebhookOptions;
  readonly counts = { injected: 0, skipped: 0, failed: 0, rejected: 0 };
  #certificate: string | undefined;

  constructor(options: WebhookOptions) {
    this.#o = options;
    // Until the certificate is known every handshake fails, which the apiserver treats as a
    // webhook failure: with failurePolicy Ignore, the pod is admitted.
    this.#server = createServer({ requestTimeout: 10_000 }, (req, res) => void this.#handle(req, res));
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#o.port, this.#o.host, () => resolve());
    });
  }

  get hasCertificate(): boolean {
    return this.#certificate !== undefined;
  }

  /** Serves new connections with `pair`; a pair already in use is left alone. */
  setCertificate(pair: KeyPair): void {
    if (pair.cert === this.#certificate) return;
    this.#server.setSecureContext({ cert: pair.cert, key: pair.key });
    this.#certificate = pair.cert;
    this.#o.log.info('Serving the webhook with a new certificate', { port: this.#o.port });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const fail = (status: number, message: string) => {
      this.counts.rejected++;
      res.writeHead(status, { 'content-type': 'text/plain' }).end(`${message}\n`);
    };
    // The apiserver adds ?timeout=<its timeout>.
    if (new URL(req.url ?? '/', 'https://webhook').pathname !== webhookPath)
      return fail(404, `not found: the webhook is at ${webhookPath}`);
    if (req.method !== 'POST') return fail(405, 'method not allowed: send an AdmissionReview with POST');
    let review: { apiVersion?: string; kind?: string; request?: AdmissionRequest };
    try {
      review = JSON.parse(await body(req)) as typeof review;
    } catch (error) {
      return fail(400, `bad request: ${errorText(error)}`);
    }
    const request = review.request;
    if (review.kind !== 'AdmissionReview' || review.apiVersion !== 'admission.k8s.io/v1' || !request?.uid)
      return fail(400, 'bad request: expected an admission.k8s.io/v1 AdmissionReview with request.uid');
    const response = { apiVersion: review.apiVersion, kind: review.kind, response: await this.#review(request) };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(response));
  }

  async #review(request: AdmissionRequest): Promise<Record<string, unknown>> {
    const allowed = { uid: request.uid, allowed: true };
    if (request.kind?.kind !== 'Pod' || request.operation !== 'CREATE' || !request.object) return allowed;
    const namespace = request.namespace ?? request.object.metadata?.namespace ?? '';
    const pod = `${namespace}/${request.object.metadata?.name ?? request.object.metadata?.generateName ?? ''}`;
    let decision: Injection;
    try {
      decision = injection({ pod: request.object, namespace, ...(await this.#o.context(namespace)) });
    } catch (error) {
      this.counts.failed++;
      this.#o.log.error('Could not decide sidecar injection', { pod, error: errorText(error) });
      return { ...allowed, warnings: [`naat: the NAA sidecar was not injected: ${errorText(error)}`] };
    }
    if (!decision.inject) {
      this.counts.skipped++;
      if (!decision.warning) return allowed;
      this.#o.log.info('Did not inject the NAA sidecar', { pod, reason: decision.reason });
      return {
        ...allowed,
        warnings: [`naat: ${decision.warning}`],
        ...(decision.patch ? jsonPatch(decision.patch) : {}),
      };
    }
    this.counts.injected++;
    this.#o.log.info('Injected the NAA sidecar', { pod, gateway: decision.gateway });
    return { ...allowed, ...jsonPatch(decision.patch) };
  }
}

const jsonPatch = (patch: PatchOperation[]) => ({
  patchType: 'JSONPatch',
  patch: Buffer.from(JSON.stringify(patch)).toString('base64'),
});

async function body(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBody) throw new Error(`body larger than ${maxBody} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
