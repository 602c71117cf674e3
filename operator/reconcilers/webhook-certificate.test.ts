import type { V1Secret } from '@kubernetes/client-node';
import { caUsable, lifetime, makeCa, makeServing, usable } from '../certificates.ts';
import { pairsOf, tlsPairOf } from './webhook-certificate.ts';

const base64 = (text: string) => Buffer.from(text).toString('base64');
const now = new Date();
const ca = makeCa('naat-ca', lifetime(now, 86_400_000));

describe('the Secrets a certificate is read from', () => {
  test("the operator's own holds the CA with its key and the serving pair", () => {
    const serving = makeServing(ca, ['naat-webhook.naat-system.svc'], lifetime(now, 3_600_000));
    const secret: V1Secret = {
      data: {
        'ca.crt': base64(ca.cert),
        'ca.key': base64(ca.key),
        'tls.crt': base64(serving.cert),
        'tls.key': base64(serving.key),
      },
    };
    expect(pairsOf(secret)).toEqual({ ca, serving });
    expect(tlsPairOf(secret)).toEqual(serving);
  });

  test("cert-manager's CA Certificate holds the CA as its own pair, and signs the agents' certificate", () => {
    // cert-manager writes a CA Certificate's pair as tls.crt and tls.key, and ca.crt beside them.
    const secret: V1Secret = {
      type: 'kubernetes.io/tls',
      data: { 'ca.crt': base64(ca.cert), 'tls.crt': base64(ca.cert), 'tls.key': base64(ca.key) },
    };
    expect(pairsOf(secret)).toBeUndefined();
    const pair = tlsPairOf(secret)!;
    expect(caUsable(pair, now)).toBe(true);
    const agents = makeServing(pair, ['gateway-a', '10.0.0.1'], lifetime(now, 3_600_000));
    expect(usable(pair, agents, ['gateway-a', '10.0.0.1'], now)).toBe(true);
  });

  test('a Secret still empty, or half written, holds no pair', () => {
    expect(tlsPairOf({})).toBeUndefined();
    expect(tlsPairOf(undefined)).toBeUndefined();
    expect(tlsPairOf({ data: { 'tls.crt': base64(ca.cert) } })).toBeUndefined();
  });
});
