import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { httpProbe } from './http.ts';

let server: Server;
let port: number;
const paths: string[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    paths.push(req.url ?? '');
    res.statusCode = req.url === '/' || req.url === '/health' ? 204 : 404;
    res.end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as AddressInfo).port;
});
afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

const probe = (path?: string) =>
  httpProbe(
    {
      protocol: 'HTTP',
      target: '127.0.0.1',
      port,
      ...(path ? { path } : {}),
      sourceAddress: '127.0.0.1',
      timeoutMs: 2000,
    },
    4,
    {},
  );

test('an HTTP probe asks for / when the check names no path, and a 2xx answer is healthy', async () => {
  paths.length = 0;
  expect(await probe()).toMatchObject({ ok: true });
  expect(paths).toEqual(['/']);
});

test('an HTTP probe asks for the check path, and a 4xx answer is a failure that says so', async () => {
  paths.length = 0;
  expect(await probe('/health')).toMatchObject({ ok: true });
  expect(await probe('/missing')).toEqual({ ok: false, error: 'HTTP 404' });
  expect(paths).toEqual(['/health', '/missing']);
});
