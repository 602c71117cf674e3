// The CA bundle the agents (and those who call them) trust, kept by the leader in the ConfigMap the
// chart made empty for it (<fullname>-ca, key ca.crt): the certificate of the CA that signs the
// agents' certificates, public only, so that no agent needs to read a Secret. Each agent's
// DaemonSet mounts it. When the CA is replaced, the old one stays in the bundle until it expires,
// so that an agent still holding a certificate from it is trusted until it has renewed.
import { CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1ConfigMap } from '@kubernetes/client-node';
import { X509Certificate } from 'node:crypto';
import type { Logger } from '../../common/index.ts';
import { caBundleKey } from '../../contracts/index.ts';
import type { KeyPair } from '../certificates.ts';
import type { ReconcileResult } from '../runtime/controller.ts';

/** Timers of Node cannot wait longer than about 24.8 days; a daily look is plenty. */
const maxWaitMs = 86_400_000;

/**
 * The bundle for the CA certificate `current` (PEM): it first, then each certificate of the
 * `previous` bundle that is a CA, another one, and still valid at `now`. Unreadable parts are left out.
 */
export function caBundle(current: string, previous: string | undefined, now: Date): string {
  const currentCert = new X509Certificate(current);
  const kept = (previous?.match(/-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g) ?? []).filter((pem) => {
    try {
      const cert = new X509Certificate(pem);
      return cert.ca && cert.fingerprint256 !== currentCert.fingerprint256 && new Date(cert.validTo) > now;
    } catch {
      return false;
    }
  });
  return [current.trim(), ...kept].map((pem) => `${pem}\n`).join('');
}

export interface CaBundleReconcilerOptions {
  kubeConfig: KubeConfig;
  configMaps: { get(key: string): V1ConfigMap | undefined };
  ca: () => KeyPair | undefined;
  /** The chart's CA ConfigMap. */
  configMapName: string;
  namespace: string;
  log: Logger;
  now?: () => Date;
}

export class CaBundleReconciler {
  readonly #o: CaBundleReconcilerOptions;
  readonly #core: CoreV1Api;

  constructor(options: CaBundleReconcilerOptions) {
    this.#o = options;
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
  }

  async reconcile(): Promise<ReconcileResult> {
    const { namespace, configMapName: name, log } = this.#o;
    const now = (this.#o.now ?? (() => new Date()))();
    const ca = this.#o.ca();
    // Whoever makes the CA, its Secret changing brings this one back.
    if (!ca) return {};
    const configMap = this.#o.configMaps.get(`${namespace}/${name}`);
    if (!configMap) throw new Error(`the CA ConfigMap ${namespace}/${name} does not exist`);
    const bundle = caBundle(ca.cert, configMap.data?.[caBundleKey], now);
    if (bundle !== configMap.data?.[caBundleKey]) {
      await this.#core.patchNamespacedConfigMap(
        { name, namespace, body: { data: { [caBundleKey]: bundle } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      log.info('Published the CA bundle', { configMap: name, certificates: bundle.split('BEGIN').length - 1 });
    }
    // Back when the first old CA of the bundle expires, to take it out.
    const expiries = (bundle.match(/-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g) ?? [])
      .slice(1)
      .map((pem) => new Date(new X509Certificate(pem).validTo).getTime() - now.getTime());
    return expiries.length ? { requeueAfterMs: Math.max(1000, Math.min(maxWaitMs, ...expiries)) } : {};
  }
}
