import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { fromPem, toPem } from './der.ts';
import { certificationRequest, parseCertificationRequest, RequestError } from './pkcs10.ts';

const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const request = certificationRequest('gateway-a', publicKey, privateKey);
const derOf = (pem: string) => fromPem('CERTIFICATE REQUEST', pem);
const pemOf = (der: Buffer) => toPem('CERTIFICATE REQUEST', der);
const refusal = (pem: string) => {
  try {
    parseCertificationRequest(pem);
  } catch (error) {
    expect(error).toBeInstanceOf(RequestError);
    return (error as Error).message;
  }
  throw new Error('the request was read');
};

describe('PKCS#10 requests', () => {
  test('round trip: the subject and the key come back, the signature checked', () => {
    const parsed = parseCertificationRequest(request);
    expect(parsed.subject).toEqual([{ type: '2.5.4.3', value: 'gateway-a' }]);
    expect(parsed.publicKey.equals(publicKey)).toBe(true);
  });

  test('openssl reads the request and verifies its signature', () => {
    const out = execFileSync('openssl', ['req', '-noout', '-verify', '-subject'], {
      input: request,
      stdio: ['pipe', 'pipe', 'ignore'],
    }).toString();
    expect(out).toMatch(/subject=CN\s*=\s*gateway-a/);
  });

  test('a request openssl made is read as well', () => {
    const dir = mkdtempSync(join(tmpdir(), 'naat-pkcs10-'));
    try {
      writeFileSync(join(dir, 'key.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
      const pem = execFileSync('openssl', [
        'req',
        '-new',
        '-key',
        join(dir, 'key.pem'),
        '-subj',
        '/CN=node-b',
        '-sha256',
      ]);
      const parsed = parseCertificationRequest(pem.toString());
      expect(parsed.subject).toEqual([{ type: '2.5.4.3', value: 'node-b' }]);
    } finally {
      rmSync(dir, { recursive: true });
    }
  });

  test('a request whose signed part was changed is refused', () => {
    const der = derOf(request);
    const at = der.indexOf(Buffer.from('gateway-a'));
    der[at] = 'h'.charCodeAt(0);
    expect(refusal(pemOf(der))).toBe("the request's signature does not verify with its public key");
  });

  test('a request signed by another key is refused', () => {
    const other = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const forged = certificationRequest('gateway-a', publicKey, other.privateKey);
    expect(refusal(forged)).toBe("the request's signature does not verify with its public key");
  });

  test('malformed requests are refused with a message that says what is wrong', () => {
    expect(refusal('')).toBe('malformed certification request: expected one PEM block "CERTIFICATE REQUEST", found 0');
    expect(refusal(request + request)).toMatch(/found 2$/);
    expect(refusal(pemOf(Buffer.from([0x30, 0x05, 0x02])))).toBe(
      'malformed certification request: a value is longer than what holds it',
    );
    expect(refusal(pemOf(Buffer.from([0x30, 0x80, 0x00, 0x00])))).toBe(
      'malformed certification request: indefinite lengths are not DER',
    );
    expect(refusal(pemOf(Buffer.from([0x02, 0x01, 0x00])))).toBe(
      'malformed certification request: the request is not a SEQUENCE',
    );
    const der = derOf(request);
    expect(refusal(pemOf(der.subarray(0, der.length - 1)))).toMatch(/^malformed certification request: /);
    expect(refusal(pemOf(Buffer.concat([der, Buffer.from([0])])))).toBe(
      'malformed certification request: 1 bytes after the value',
    );
  });

  test('any bytes are read or refused with a RequestError, nothing else', () => {
    const der = derOf(request);
    fc.assert(
      fc.property(
        fc.oneof(
          fc.uint8Array({ maxLength: 400 }).map((bytes) => Buffer.from(bytes)),
          // The valid request with bytes changed, so the reader gets deep into it.
          fc
            .array(fc.tuple(fc.nat(der.length - 1), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 })
            .map((changes) => {
              const copy = Buffer.from(der);
              for (const [at, value] of changes) copy[at] = value;
              return copy;
            }),
        ),
        (bytes) => {
          try {
            parseCertificationRequest(pemOf(bytes));
          } catch (error) {
            if (!(error instanceof RequestError)) throw error;
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});
