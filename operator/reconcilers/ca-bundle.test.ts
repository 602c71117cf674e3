import { X509Certificate } from 'node:crypto';
import { lifetime, makeCa, makeServing } from '../certificates.ts';
import { caBundle } from './ca-bundle.ts';

const day = 86_400_000;
const now = new Date('2026-12-04T12:00:00Z');
const certificates = (bundle: string) =>
  (bundle.match(/-----BEGIN CERTIFICATE-----[^-]*-----END CERTIFICATE-----/g) ?? []).map(
    (pem) => new X509Certificate(pem).subject,
  );

describe('the CA bundle', () => {
  const old = makeCa('old', lifetime(new Date(now.getTime() - 300 * day), 330 * day));
  const current = makeCa('current', lifetime(now, 3650 * day));

  test('holds the current CA first, and an old one until it expires', () => {
    expect(certificates(caBundle(current.cert, undefined, now))).toEqual(['CN=current']);
    const both = caBundle(current.cert, old.cert, now);
    expect(certificates(both)).toEqual(['CN=current', 'CN=old']);
    // Kept as it is: the same CA again changes nothing.
    expect(caBundle(current.cert, both, now)).toBe(both);
    expect(certificates(caBundle(current.cert, both, new Date(now.getTime() + 31 * day)))).toEqual(['CN=current']);
  });

  test('keeps no leaf certificate and nothing unreadable', () => {
    const leaf = makeServing(old, ['x'], lifetime(now, day)).cert;
    const broken = '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n';
    expect(certificates(caBundle(current.cert, `${leaf}${broken}${old.cert}`, now))).toEqual(['CN=current', 'CN=old']);
  });
});
