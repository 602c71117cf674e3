// An agent's identity: its node's key and certificate, and the CA bundle that signs every agent's,
// kept in its TLS directory (--tls-dir) as ca.crt, tls.crt and tls.key for whatever serves or dials
// with them. Each file is replaced whole (written beside it, then renamed over it), in the order
// ca.crt, tls.key, tls.crt: the bundle first, since it holds the old CA and the new while they
// change; then the pair, key before certificate. A reader that finds a key that does not match
// the certificate is between the two renames and treats the pair as not there yet (link-tls.ts).
//
// In a cluster (--csr), the agent gets the pair itself: a new EC P-256 key, a PKCS#10 request for
// its node's name, and a CertificateSigningRequest to the operator's signer naat.dev/agent, made
// with its pod's own token, which names the node the pod runs on; it waits for the certificate,
// writes the files, and renews with a new key when two thirds of the certificate's life have
// passed. The CA bundle comes from a file (the CA ConfigMap the DaemonSet mounts) and is copied
// beside the pair as it changes. Outside a cluster the files are put there by whoever runs it.
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { KubeConfig, V1CertificateSigningRequest } from '@kubernetes/client-node';
import { certificationRequest, type Logger } from '../common/index.ts';
import { agentSignerName, agentUsages, tlsFiles } from '../contracts/index.ts';
import { readTlsDir, type TlsMaterial } from './link-tls.ts';

/** Replaces one file of the directory whole: written beside it, then renamed over it. */
async function replaceFile(dir: string, file: string, text: string, mode: number): Promise<void> {
  const temporary = join(dir, `.${file}.${process.pid}.tmp`);
  await writeFile(temporary, text, { mode });
  await rename(temporary, join(dir, file));
}

/** Writes the directory in the order the header says: bundle, key, certificate. */
export async function writeTlsDir(dir: string, material: Pick<TlsMaterial, 'ca' | 'cert' | 'key'>): Promise<void> {
  await replaceFile(dir, tlsFiles.ca, material.ca, 0o644);
  await replaceFile(dir, tlsFiles.key, material.key, 0o600);
  await replaceFile(dir, tlsFiles.cert, material.cert, 0o644);
}

/**
 * When a certificate received at `receivedAt` is renewed: once two thirds of what was left of it
 * then have passed (its notBefore is set back for slow clocks, so it does not say when it was issued).
 */
export function renewalTime(cert: string, receivedAt: Date): Date {
  const notAfter = new Date(new X509Certificate(cert).validTo).getTime();
  return new Date(receivedAt.getTime() + ((notAfter - receivedAt.getTime()) * 2) / 3);
}

/** What a request's status says: the certificate, a refusal with its message, or still waiting. */
export function requestOutcome(
  csr: V1CertificateSigningRequest,
): { certificate: string } | { refused: string } | undefined {
  const refusal = csr.status?.conditions?.find((c) => c.type === 'Denied' || c.type === 'Failed');
  if (refusal) return { refused: `${refusal.type} (${refusal.reason ?? 'no reason'}): ${refusal.message ?? ''}` };
  const certificate = csr.status?.certificate;
  return certificate ? { certificate: Buffer.from(certificate, 'base64').toString('utf8') } : undefined;
}

export interface ClusterIdentityOptions {
  kubeConfig: KubeConfig;
  /** This node: the certificate's subject, and the node the pod's token must be bound to. */
  node: string;
  dir: string;
  /** The CA bundle as mounted from the CA ConfigMap. */
  caFile: string;
  log: Logger;
  /** How often the CA bundle file is looked at, and the longest wait between two looks at a request. */
  pollMs?: number;
}

/** Keeps this node's certificate in the TLS directory, asked of the operator's signer; see the header. */
export class ClusterIdentity {
  readonly #o: ClusterIdentityOptions;
  readonly #stop = new AbortController();
  #renewAt = 0;
  #running: Promise<void> | undefined;

  constructor(options: ClusterIdentityOptions) {
    this.#o = options;
  }

  start(): void {
    this.#running ??= this.#run().catch((error: Error) => {
      if (!this.#stop.signal.aborted)
        this.#o.log.error('Stopped keeping the node certificate', { error: error.message });
    });
  }

  async stop(): Promise<void> {
    this.#stop.abort();
    await this.#running;
  }

  async #run(): Promise<void> {
    const { log, dir } = this.#o;
    const pollMs = this.#o.pollMs ?? 10_000;
    const signal = this.#stop.signal;
    this.#renewAt = await this.#kept();
    let failures = 0;
    while (!signal.aborted) {
      await this.#copyBundle().catch((error: Error) =>
        log.warn('Failed to copy the CA bundle', { file: this.#o.caFile, error: error.message }),
      );
      let wait = Math.max(0, Math.min(this.#renewAt - Date.now(), pollMs));
      if (Date.now() >= this.#renewAt) {
        try {
          await this.#renew();
          failures = 0;
          continue;
        } catch (error) {
          if (signal.aborted) return;
          failures++;
          wait = Math.min(60_000, 1000 * 2 ** Math.min(failures, 6));
          log.error('Failed to get this node a certificate; trying again', {
            node: this.#o.node,
            error: (error as Error).message,
            retryMs: wait,
          });
        }
      }
      await sleep(wait, undefined, { signal }).catch(() => {});
    }
    log.info('Stopped keeping the node certificate', { dir });
  }

  /** When the pair already in the directory (a restarted container's) is due, or now. */
  async #kept(): Promise<number> {
    const material = await readTlsDir(this.#o.dir).catch(() => undefined);
    if (!material) return 0;
    const cert = new X509Certificate(material.cert);
    if (cert.subject !== `CN=${this.#o.node}` || new Date(cert.validTo) <= new Date()) return 0;
    const written = (await stat(join(this.#o.dir, tlsFiles.cert))).mtime;
    return renewalTime(material.cert, written).getTime();
  }

  async #bundle(): Promise<string> {
    const bundle = await readFile(this.#o.caFile, 'utf8').catch(() => '');
    if (!bundle.includes('BEGIN CERTIFICATE')) throw new Error(`no CA bundle in ${this.#o.caFile} yet`);
    return bundle;
  }

  /** Copies a changed CA bundle into the directory, once there is a pair there. */
  async #copyBundle(): Promise<void> {
    const { dir } = this.#o;
    const copied = await readFile(join(dir, tlsFiles.ca), 'utf8').catch(() => '');
    if (!copied) return;
    const bundle = await this.#bundle();
    if (bundle !== copied) {
      await replaceFile(dir, tlsFiles.ca, bundle, 0o644);
      this.#o.log.info('Copied a changed CA bundle', { dir });
    }
  }

  async #renew(): Promise<void> {
    const { node, dir, log } = this.#o;
    const { CertificatesV1Api } = await import('@kubernetes/client-node');
    const api = this.#o.kubeConfig.makeApiClient(CertificatesV1Api);
    const ca = await this.#bundle();
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const request = certificationRequest(node, publicKey, privateKey);
    const created = await api.createCertificateSigningRequest({
      body: {
        metadata: { generateName: `naat-agent-${node}-` },
        spec: {
          signerName: agentSignerName,
          usages: [...agentUsages],
          request: Buffer.from(request).toString('base64'),
        },
      },
    });
    const name = created.metadata!.name!;
    log.info('Asked for a certificate for this node', { node, request: name });
    const certificate = await this.#waitFor(name, (n) => api.readCertificateSigningRequest({ name: n }));
    const received = new Date();
    const cert = new X509Certificate(certificate);
    if (!cert.checkPrivateKey(privateKey)) throw new Error(`the certificate of ${name} is not for the key asked with`);
    await writeTlsDir(dir, {
      ca,
      key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
      cert: certificate,
    });
    this.#renewAt = renewalTime(certificate, received).getTime();
    log.info('Wrote a new certificate for this node', {
      node,
      request: name,
      names: cert.subjectAltName,
      notAfter: new Date(cert.validTo).toISOString(),
      renewAt: new Date(this.#renewAt).toISOString(),
    });
  }

  /** Polls the request, at growing intervals, until it is signed; throws if it was refused. */
  async #waitFor(name: string, read: (name: string) => Promise<V1CertificateSigningRequest>): Promise<string> {
    const signal = this.#stop.signal;
    const longest = Math.min(this.#o.pollMs ?? 10_000, 5000);
    for (let wait = 100; ; wait = Math.min(longest, wait * 2)) {
      await sleep(wait, undefined, { signal });
      const outcome = requestOutcome(await read(name));
      if (!outcome) continue;
      if ('refused' in outcome) throw new Error(`the request ${name} was refused: ${outcome.refused}`);
      return outcome.certificate;
    }
  }
}
