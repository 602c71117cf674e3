import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lifetime, makeAgentCertificate, makeCa } from '../operator/certificates.ts';
import { renewalTime, requestOutcome, writeTlsDir } from './identity.ts';
import { readTlsDir } from './link-tls.ts';

const now = new Date('2026-12-04T12:00:00Z');
const ca = makeCa('naat-ca', lifetime(now, 86_400_000));
function pair(node = 'gateway-a') {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return {
    cert: makeAgentCertificate(ca, publicKey, node, ['10.0.0.5'], lifetime(now, 3_600_000)),
    key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
  };
}

describe("an agent's TLS directory", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'naat-identity-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('holds the bundle and the pair, and nothing else once written', async () => {
    await expect(readTlsDir(dir)).rejects.toThrow(/cannot read/);
    const first = { ca: ca.cert, ...pair() };
    await writeTlsDir(dir, first);
    expect(await readTlsDir(dir)).toMatchObject(first);
    expect((await readdir(dir)).sort()).toEqual(['ca.crt', 'tls.crt', 'tls.key']);
    const second = { ca: ca.cert, ...pair() };
    await writeTlsDir(dir, second);
    expect(await readTlsDir(dir)).toMatchObject(second);
  });

  test('a key that does not match the certificate reads as not there yet', async () => {
    const [first, second] = [pair(), pair()];
    await writeTlsDir(dir, { ca: ca.cert, ...first });
    // Between the two renames of a renewal: the new key beside the old certificate.
    await writeFile(join(dir, 'tls.key'), second.key);
    await expect(readTlsDir(dir)).rejects.toThrow(/mid-rotation/);
    await writeFile(join(dir, 'tls.crt'), 'garbage');
    await expect(readTlsDir(dir)).rejects.toThrow(/not a PEM certificate/);
  });
});

test('a certificate is renewed when two thirds of what was left of it at receipt have passed', () => {
  const { cert } = pair();
  // Valid until now + 1 h; received 30 min before that.
  const received = new Date(now.getTime() + 1_800_000);
  expect(renewalTime(cert, received).toISOString()).toBe(new Date(now.getTime() + 3_000_000).toISOString());
});

test("a request's outcome: waiting, signed, or refused with the signer's message", () => {
  expect(requestOutcome({ spec: { request: '', signerName: 'naat.dev/agent' } })).toBeUndefined();
  expect(
    requestOutcome({
      spec: { request: '', signerName: 'naat.dev/agent' },
      status: {
        conditions: [{ type: 'Approved', status: 'True' }],
        certificate: Buffer.from('PEM').toString('base64'),
      },
    }),
  ).toEqual({ certificate: 'PEM' });
  expect(
    requestOutcome({
      spec: { request: '', signerName: 'naat.dev/agent' },
      status: { conditions: [{ type: 'Denied', status: 'True', reason: 'WrongNode', message: 'the subject is …' }] },
    }),
  ).toEqual({ refused: 'Denied (WrongNode): the subject is …' });
});
