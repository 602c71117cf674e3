// The webhook's certificate, kept by the leader: a CA and a serving certificate for the names the
// apiserver dials, stored in the Secret the chart made empty for them, and the CA patched into
// the MutatingWebhookConfiguration's caBundle. Renewed well before it expires; the replicas pick
// the new pair up from the Secret (operator/webhook.ts).
import {
  AdmissionregistrationV1Api,
  CoreV1Api,
  type KubeConfig,
  type V1MutatingWebhookConfiguration,
  type V1Secret,
} from '@kubernetes/client-node';
import { canonical } from '../canonical.ts';
import {
  caLifetime,
  caUsable,
  lifetime,
  makeCa,
  makeServing,
  nextLook,
  renewBefore,
  servingLifetime,
  usable,
  type KeyPair,
} from '../certificates.ts';
import type { ReconcileResult } from '../runtime/controller.ts';
import type { Logger } from '../../common/index.ts';
import type { OperatorSettings } from '../settings.ts';
import { webhookPath } from '../webhook.ts';

export const secretKeys = { caCert: 'ca.crt', caKey: 'ca.key', cert: 'tls.crt', key: 'tls.key' } as const;

/** The names the apiserver dials: the Service's DNS names, or the host of the configured URL. */
export function servingNames(webhook: OperatorSettings['webhook'], namespace: string): string[] {
  if (webhook.url) return [new URL(webhook.url).hostname.replace(/^\[(.*)\]$/, '$1')];
  const service = `${webhook.serviceName}.${namespace}`;
  return [`${service}.svc`, `${service}.svc.cluster.local`];
}

const textOf = (secret: V1Secret | undefined, key: string) => {
  const value = secret?.data?.[key];
  return value ? Buffer.from(value, 'base64').toString('utf8') : undefined;
};

/** The CA and serving pairs a Secret holds, if it holds both. */
export function pairsOf(secret: V1Secret | undefined): { ca: KeyPair; serving: KeyPair } | undefined {
  const [caCert, caKey] = [textOf(secret, secretKeys.caCert), textOf(secret, secretKeys.caKey)];
  const serving = tlsPairOf(secret);
  if (!caCert || !caKey || !serving) return undefined;
  return { ca: { cert: caCert, key: caKey }, serving };
}

/**
 * The pair of a kubernetes.io/tls Secret (tls.crt, tls.key), if it holds both: a serving
 * certificate, or the CA of a cert-manager CA Certificate.
 */
export function tlsPairOf(secret: V1Secret | undefined): KeyPair | undefined {
  const [cert, key] = [textOf(secret, secretKeys.cert), textOf(secret, secretKeys.key)];
  return cert && key ? { cert, key } : undefined;
}

/**
 * The operator's CA as its Secret holds it: the webhook Secret's ca.crt and ca.key, or, from
 * cert-manager (`certManager`), its CA Certificate's own pair (tls.crt, tls.key).
 */
export function caPairOf(secret: V1Secret | undefined, certManager: boolean): KeyPair | undefined {
  return certManager ? tlsPairOf(secret) : pairsOf(secret)?.ca;
}

export interface CertificateReconcilerOptions {
  kubeConfig: KubeConfig;
  secrets: { get(key: string): V1Secret | undefined };
  webhooks: { get(key: string): V1MutatingWebhookConfiguration | undefined };
  settings: OperatorSettings['webhook'];
  namespace: string;
  log: Logger;
  now?: () => Date;
}

export class CertificateReconciler {
  readonly #o: CertificateReconcilerOptions;
  readonly #core: CoreV1Api;
  readonly #admission: AdmissionregistrationV1Api;

  constructor(options: CertificateReconcilerOptions) {
    this.#o = options;
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
    this.#admission = options.kubeConfig.makeApiClient(AdmissionregistrationV1Api);
  }

  async reconcile(): Promise<ReconcileResult> {
    const { settings, namespace, log } = this.#o;
    const now = (this.#o.now ?? (() => new Date()))();
    const names = servingNames(settings, namespace);
    const secret = this.#o.secrets.get(`${namespace}/${settings.secretName}`);
    if (!secret) throw new Error(`the webhook Secret ${namespace}/${settings.secretName} does not exist`);

    let pairs = pairsOf(secret);
    if (!pairs || !usable(pairs.ca, pairs.serving, names, new Date(now.getTime() + renewBefore))) {
      const caStillGood = pairs && caUsable(pairs.ca, new Date(now.getTime() + renewBefore));
      const ca = caStillGood ? pairs!.ca : makeCa(`${settings.serviceName}-ca`, lifetime(now, caLifetime));
      const serving = makeServing(ca, names, lifetime(now, servingLifetime));
      const data = {
        [secretKeys.caCert]: ca.cert,
        [secretKeys.caKey]: ca.key,
        [secretKeys.cert]: serving.cert,
        [secretKeys.key]: serving.key,
      };
      // A replace with the cached resourceVersion: if another writer got there first, this fails
      // with a conflict and the next reconcile looks again.
      await this.#core.replaceNamespacedSecret({
        name: settings.secretName,
        namespace,
        body: {
          ...secret,
          data: Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
        },
      });
      log.info('Issued the webhook certificate', { names, newCa: !caStillGood });
      pairs = { ca, serving };
    }

    const configuration = this.#o.webhooks.get(settings.configurationName);
    if (!configuration)
      throw new Error(`the MutatingWebhookConfiguration ${settings.configurationName} does not exist`);
    const caBundle = Buffer.from(pairs.ca.cert).toString('base64');
    // The whole clientConfig, so that an operator moved into or out of the cluster points the
    // apiserver at itself either way.
    const clientConfig = settings.url
      ? { url: settings.url, caBundle }
      : { service: { namespace, name: settings.serviceName, path: webhookPath, port: 443 }, caBundle };
    const webhooks = (configuration.webhooks ?? []).map((webhook) => ({ ...webhook, clientConfig }));
    if (canonical(webhooks) !== canonical(configuration.webhooks ?? [])) {
      await this.#admission.replaceMutatingWebhookConfiguration({
        name: settings.configurationName,
        body: { ...configuration, webhooks },
      });
      log.info('Set the webhook CA bundle', { configuration: settings.configurationName });
    }

    return { requeueAfterMs: nextLook(now, [pairs.ca.cert, pairs.serving.cert]) };
  }
}
