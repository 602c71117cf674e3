import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { caUsable, makeCa, makeServing, usable } from './certificates.ts';

const day = 86_400_000;
const now = new Date('2026-11-25T12:00:00Z');
const validity = (days: number) => ({
  notBefore: new Date(now.getTime() - 3_600_000),
  notAfter: new Date(now.getTime() + days * day),
});
const names = ['naat-webhook.naat-system.svc', 'naat-webhook.naat-system.svc.cluster.local', '127.0.0.1', 'fd00::1'];

describe('webhook certificates', () => {
  const ca = makeCa('naat-webhook-ca', validity(3650));
  const serving = makeServing(ca, names, validity(365));

  test('the CA is a CA and the serving certificate is signed by it for exactly its names', () => {
    const caCert = new X509Certificate(ca.cert);
    const cert = new X509Certificate(serving.cert);
    expect(caCert.ca).toBe(true);
    expect(cert.ca).toBe(false);
    expect(cert.verify(caCert.publicKey)).toBe(true);
    expect(cert.checkIssued(caCert)).toBe(true);
    expect(cert.subjectAltName).toBe(
      'DNS:naat-webhook.naat-system.svc, DNS:naat-webhook.naat-system.svc.cluster.local, IP Address:127.0.0.1, IP Address:FD00:0:0:0:0:0:0:1',
    );
    expect(cert.checkHost('naat-webhook.naat-system.svc')).toBe('naat-webhook.naat-system.svc');
    expect(cert.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(new Date(cert.validTo).getTime()).toBe(Math.floor((now.getTime() + 365 * day) / 1000) * 1000);
  });

  test('openssl verifies the chain for TLS server use', () => {
    const dir = mkdtempSync(join(tmpdir(), 'naat-certs-'));
    try {
      writeFileSync(join(dir, 'ca.crt'), ca.cert);
      writeFileSync(join(dir, 'tls.crt'), serving.cert);
      const out = execFileSync('openssl', [
        'verify',
        '-attime',
        String(Math.floor(now.getTime() / 1000)),
        '-purpose',
        'sslserver',
        '-CAfile',
        join(dir, 'ca.crt'),
        join(dir, 'tls.crt'),
      ]).toString();
      expect(out.trim()).toBe(`${join(dir, 'tls.crt')}: OK`);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  test('a certificate with clientAuth verifies for both TLS uses, and one without it only as a server', () => {
    const agent = makeServing(ca, ['node-a', '10.0.0.1'], validity(365), { clientAuth: true });
    const dir = mkdtempSync(join(tmpdir(), 'naat-certs-'));
    const verify = (cert: string, purpose: string) => {
      writeFileSync(join(dir, 'ca.crt'), ca.cert);
      writeFileSync(join(dir, 'tls.crt'), cert);
      const args = ['verify', '-attime', String(Math.floor(now.getTime() / 1000)), '-purpose', purpose];
      try {
        return execFileSync('openssl', [...args, '-CAfile', join(dir, 'ca.crt'), join(dir, 'tls.crt')], {
          stdio: 'pipe',
        })
          .toString()
          .trim()
          .endsWith('OK');
      } catch {
        return false;
      }
    };
    try {
      expect(new X509Certificate(agent.cert).subject).toBe('CN=node-a');
      expect(verify(agent.cert, 'sslserver')).toBe(true);
      expect(verify(agent.cert, 'sslclient')).toBe(true);
      expect(verify(serving.cert, 'sslclient')).toBe(false);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  test('usable: valid pair for the same names, and nothing else', () => {
    expect(usable(ca, serving, names, now)).toBe(true);
    expect(usable(ca, serving, [...names].reverse(), now)).toBe(true);
    expect(usable(ca, serving, names.slice(1), now)).toBe(false);
    expect(usable(ca, serving, names, new Date(now.getTime() + 366 * day))).toBe(false);
    expect(usable(makeCa('other', validity(10)), serving, names, now)).toBe(false);
    expect(usable(ca, { cert: serving.cert, key: ca.key }, names, now)).toBe(false);
    expect(usable(ca, { cert: 'garbage', key: serving.key }, names, now)).toBe(false);
    expect(caUsable(ca, now)).toBe(true);
    expect(caUsable(ca, new Date(now.getTime() + 3651 * day))).toBe(false);
    expect(caUsable({ cert: serving.cert, key: serving.key }, now)).toBe(false);
  });

  test('dates from 2050 are GeneralizedTime', () => {
    const late = makeCa('late', { notBefore: now, notAfter: new Date('2051-01-02T03:04:05Z') });
    expect(new Date(new X509Certificate(late.cert).validTo).toISOString()).toBe('2051-01-02T03:04:05.000Z');
  });
});
