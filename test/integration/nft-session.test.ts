// ExecNftables against real nft in a network namespace of its own: small transactions through
// its long-lived nft (dataplane/nft/session.ts), long ones through an nft of their own, each
// atomic, each failure naming what failed, and the long-lived nft started again when it died.
// Needs root.
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '../../dataplane/exec.ts';
import { ExecNftables, type Operation } from '../../dataplane/nft/nftables.ts';
import { sessionLineBytes, sessionTransactions } from '../../dataplane/nft/session.ts';
import { tableFamily, tableName } from '../../dataplane/nft/model.ts';

const namespace = `naat-nft-session-${process.pid}`;
const nftCommand = ['ip', 'netns', 'exec', namespace, 'nft'];
let dir: string;
let nft: ExecNftables;

beforeAll(async () => {
  const { code, stderr } = await exec(['ip'], ['netns', 'add', namespace]);
  if (code !== 0) throw new Error(`ip netns add failed: ${stderr}`);
  dir = await mkdtemp(join(tmpdir(), 'naat-nft-session-'));
});

afterAll(async () => {
  await exec(['ip'], ['netns', 'delete', namespace]);
  await rm(dir, { recursive: true, force: true });
});

beforeEach(async () => {
  nft = new ExecNftables(nftCommand, dir);
  await nft.run([
    { op: 'add', what: 'table' },
    { op: 'add', what: 'set', set: { name: 'addresses', type: 'ipv4_addr' } },
    { op: 'add', what: 'chain', chain: { name: 'c' } },
  ]);
});

afterEach(async () => {
  await nft.run([{ op: 'delete', what: 'table' }]);
  await nft.close();
});

const elementsOf = (set: string, addresses: string[]): Operation => ({
  op: 'add',
  what: 'element',
  set,
  elements: addresses.map((address) => ({ key: [{ kind: 'address', address }] })),
});
const add = (...addresses: string[]) => elementsOf('addresses', addresses);

async function elements(): Promise<string[]> {
  const { code, stdout, stderr } = await exec(nftCommand, ['-j', 'list', 'set', tableFamily, tableName, 'addresses']);
  if (code !== 0) throw new Error(`nft list set failed: ${stderr}`);
  const [, set] = (JSON.parse(stdout) as { nftables: Array<{ set?: { elem?: string[] } }> }).nftables;
  return (set?.set?.elem ?? []).sort();
}

/** The pids of this process's children that run nft in the test's namespace (`ip netns exec` becomes nft). */
async function nftChildren(): Promise<number[]> {
  const { ino } = await stat(`/run/netns/${namespace}`);
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const status = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    // pid (comm) state ppid …
    const found = /^\d+ \((.*)\) \S+ (\d+)/.exec(status);
    if (found?.[1] !== 'nft' || Number(found[2]) !== process.pid) continue;
    const net = await stat(`/proc/${entry}/ns/net`).catch(() => undefined);
    if (net?.ino === ino) pids.push(Number(entry));
  }
  return pids;
}

test('small transactions go through one nft, each applied', async () => {
  await nft.run([add('10.0.0.1')]);
  await nft.run([add('10.0.0.2', '10.0.0.3'), { op: 'add', what: 'chain', chain: { name: 'd' } }]);
  expect(await elements()).toEqual(['10.0.0.1', '10.0.0.2', '10.0.0.3']);
  expect((await nft.list())?.chains.sort()).toEqual(['c', 'd']);
  expect(await nftChildren()).toHaveLength(1);
});

test("lists only its own table's names, and none when its table is gone", async () => {
  const other = new ExecNftables(nftCommand, dir, `${tableName}-other`);
  await other.run([
    { op: 'add', what: 'table' },
    { op: 'add', what: 'set', set: { name: 'elsewhere', type: 'ipv4_addr' } },
    { op: 'add', what: 'chain', chain: { name: 'e' } },
  ]);
  try {
    expect(await nft.list()).toEqual({ chains: ['c'], sets: ['addresses'], maps: [], objects: [] });
    await nft.run([{ op: 'delete', what: 'table' }]);
    expect(await nft.list()).toBeUndefined();
    expect((await other.list())?.chains).toEqual(['e']);
  } finally {
    await nft.run([{ op: 'add', what: 'table' }]);
    await other.run([{ op: 'delete', what: 'table' }]);
    await other.close();
  }
});

test('a rule named in any script keeps its name in the kernel, though nft -i would drop all but ASCII', async () => {
  const names = ['shop/a0#egress', 'shop/a0#sortie-été', 'shop/a0#出口', 'shop/a0#😀'];
  for (const comment of names) {
    await nft.run([{ op: 'add', what: 'rule', chain: 'c', rule: { match: [], then: [{ kind: 'counter' }], comment } }]);
  }
  const { stdout } = await exec(nftCommand, ['-j', 'list', 'chain', tableFamily, tableName, 'c']);
  const rules = (JSON.parse(stdout) as { nftables: Array<{ rule?: { comment?: string } }> }).nftables;
  expect(rules.flatMap(({ rule }) => (rule ? [rule.comment] : []))).toEqual(names);
});

test('a failing transaction names the failing command, applies nothing, and the next one is applied', async () => {
  const failing = nft.run([add('10.0.0.1'), elementsOf('nosuch', ['10.0.0.2'])]);
  await expect(failing).rejects.toThrow(
    /^nft transaction failed: Error: [^\n]*No such file or directory[^\n]*\nadd element inet naat nosuch \{ 10\.0\.0\.2 \}\n {22}\^{6}$/,
  );
  expect(await elements()).toEqual([]);
  await nft.run([add('10.0.0.3')]);
  expect(await elements()).toEqual(['10.0.0.3']);
});

test('a transaction in flight when nft dies fails, and the next one starts nft again', async () => {
  await nft.run([add('10.0.0.1')]);
  const [pid] = await nftChildren();
  // Stopped, nft cannot read the transaction; killed, it never will.
  process.kill(pid!, 'SIGSTOP');
  const inFlight = nft.run([add('10.0.0.2')]);
  process.kill(pid!, 'SIGKILL');
  await expect(inFlight).rejects.toThrow(
    'nft transaction failed: nft ended (SIGKILL) before it answered: the transaction may or may not have been applied',
  );
  await nft.run([add('10.0.0.3')]);
  expect(await elements()).toEqual(['10.0.0.1', '10.0.0.3']);
  expect(await nftChildren()).not.toContain(pid);
});

test('close ends nft; a later transaction starts it again', async () => {
  await nft.run([add('10.0.0.1')]);
  expect(await nftChildren()).toHaveLength(1);
  await nft.close();
  expect(await nftChildren()).toEqual([]);
  await nft.run([add('10.0.0.2')]);
  expect(await elements()).toEqual(['10.0.0.1', '10.0.0.2']);
});

test('a transaction of several MB is applied whole, or, failing at its end, not at all', async () => {
  const many = Array.from({ length: 200_000 }, (_, i) => `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`);
  const batches = (addresses: string[]) =>
    Array.from({ length: addresses.length / 1000 }, (_, i) => add(...addresses.slice(i * 1000, i * 1000 + 1000)));
  const failing = nft.run([...batches(many), elementsOf('nosuch', ['10.0.0.2'])]);
  await expect(failing).rejects.toThrow(/nosuch/);
  expect(await elements()).toEqual([]);
  await nft.run(batches(many));
  expect((await elements()).length).toBe(many.length);
});

test('a transaction at the longest line the session takes is applied', async () => {
  const addresses: string[] = [];
  const text = (a: string[]) => `add element inet naat addresses { ${a.join(', ')} }`;
  for (let i = 0; text([...addresses, `10.1.${i >> 8}.${i & 255}`]).length <= sessionLineBytes; i++) {
    addresses.push(`10.1.${i >> 8}.${i & 255}`);
  }
  await nft.run([add(...addresses)]);
  expect((await elements()).length).toBe(addresses.length);
  expect(await nftChildren()).toHaveLength(1);
});

test('another nft takes over after a bounded number of transactions, and none leaves a history file', async () => {
  const home = process.env.HOME;
  process.env.HOME = dir;
  try {
    const [first] = await nftChildren();
    for (let i = 1; i <= sessionTransactions; i++) await nft.run([add(`10.2.${i >> 8}.${i & 255}`)]);
    // The first one ends once its input does.
    let children = await nftChildren();
    for (let tries = 0; children.includes(first!) && tries < 100; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      children = await nftChildren();
    }
    expect(children).toHaveLength(1);
    expect(children).not.toContain(first);
    expect((await elements()).length).toBe(sessionTransactions);
    await nft.close();
    await expect(stat(join(dir, '.nft.history'))).rejects.toThrow('ENOENT');
  } finally {
    process.env.HOME = home;
  }
});

test('a process waits for close to end nft, and exits with its session idle', async () => {
  const script = `
    const { NftSession } = await import(${JSON.stringify(join(import.meta.dirname, '../../dataplane/nft/session.ts'))});
    const session = new NftSession(${JSON.stringify(nftCommand)});
    const add = (name) => session.run([\`add chain inet naat \${name}\`]);
    await add('closed');
    await session.close();
    console.log('closed');
    await add('left');
  `;
  const { code, stdout, stderr } = await exec([process.execPath], ['--input-type=module', '-e', script]);
  expect({ code, stdout, stderr }).toEqual({ code: 0, stdout: 'closed\n', stderr: '' });
  expect((await nft.list())?.chains.sort()).toEqual(['c', 'closed', 'left']);
});
