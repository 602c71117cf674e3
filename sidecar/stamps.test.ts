import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Application } from '../proto/index.ts';
import { StampServer } from './stamps.ts';

const app = (processName: string, pid: number): Application => ({
  processName,
  executable: `/usr/bin/${processName}`,
  commandLine: [processName],
  containerName: 'app',
  containerId: '',
  uid: 1000,
  pid,
});

/** Asks as the preloaded library does: "<pid> <pid namespace>\n" (or an older one's "<pid>\n") → "<stamp>\n". */
const ask = (dir: string, pid: number, pidNamespace?: string) =>
  new Promise<number>((resolve, reject) => {
    const line = pidNamespace ? `${pid} ${pidNamespace}\n` : `${pid}\n`;
    const socket = createConnection(join(dir, 'stamp.sock'), () => socket.write(line));
    let text = '';
    socket.on('data', (d) => (text += d));
    socket.on('end', () => resolve(Number(text.trim())));
    socket.on('error', reject);
  });

let dir: string;
const processes = new Map<number, Application>([
  [10, app('curl', 10)],
  [11, app('curl', 11)],
  [12, app('python3', 12)],
]);
const announced: Array<[number, string]> = [];

function server(
  announce: (stamp: number, a: Application) => Promise<void> = async (stamp, a) => {
    announced.push([stamp, a.processName]);
  },
) {
  return new StampServer({
    dir,
    library: join(dir, 'built.so'),
    application: async (pid) => processes.get(pid),
    announce,
    log: () => {},
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'naat-stamps-'));
  writeFileSync(join(dir, 'built.so'), 'library');
  announced.length = 0;
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

test('one stamp per application identity, announced once, and 0 for a process that is gone', async () => {
  const stamps = server();
  await stamps.listen();
  expect(await ask(dir, 10)).toBe(1);
  expect(await ask(dir, 11, 'pid:[4026531836]')).toBe(1); // another run of curl, from today's library
  expect(await ask(dir, 12)).toBe(2);
  expect(await ask(dir, 99)).toBe(0);
  expect(announced).toEqual([
    [1, 'curl'],
    [2, 'python3'],
  ]);
  await stamps.close();
});

test('answers only once the gateway acknowledged, and 0 if the announcement fails', async () => {
  let acknowledge = () => {};
  const stamps = server(() => new Promise<void>((resolve) => (acknowledge = () => resolve())));
  await stamps.listen();
  let answered = false;
  const answer = ask(dir, 10).then((s) => ((answered = true), s));
  await new Promise((r) => setTimeout(r, 50));
  expect(answered).toBe(false);
  acknowledge();
  expect(await answer).toBe(1);
  await stamps.close();

  const failing = server(() => Promise.reject(new Error('no gateway')));
  await failing.listen();
  expect(await ask(dir, 12)).toBe(0);
  await failing.close();
});

test('a restarted sidecar keeps the numbers the running programs cached', async () => {
  const first = server();
  await first.listen();
  await ask(dir, 12);
  await ask(dir, 10);
  await first.close();
  const second = server();
  expect(second.stamps.map((s) => [s.stamp, s.application.processName])).toEqual([
    [1, 'python3'],
    [2, 'curl'],
  ]);
  await second.listen();
  expect(await ask(dir, 11)).toBe(2);
  await second.close();
});
