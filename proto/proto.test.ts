// The protocol's generated code is current, its style is clean, and it stays wire- and
// JSON-compatible with the released contract in proto/released/.
import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const protoDir = dirname(fileURLToPath(import.meta.url));
const buf = join(protoDir, '..', 'node_modules', '.bin', 'buf');
const env = { ...process.env, PATH: `${dirname(process.execPath)}:${process.env.PATH}` };
const bufRun = (args: string[]) => run(buf, args, { cwd: protoDir, env });

async function files(dir: string): Promise<Map<string, string>> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  const result = new Map<string, string>();
  for (const entry of entries.filter((e) => e.isFile())) {
    const path = join(entry.parentPath, entry.name);
    result.set(relative(dir, path), await readFile(path, 'utf8'));
  }
  return result;
}

test('the generated TypeScript is what buf and ts-proto make of the .proto files (run `npm run generate:proto`)', async () => {
  const out = await mkdtemp(join(tmpdir(), 'naat-proto-'));
  try {
    await bufRun(['generate', '--output', out]);
    expect(await files(join(protoDir, 'generated'))).toEqual(await files(join(out, 'generated')));
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});

test('the protocol passes buf lint', async () => {
  await expect(bufRun(['lint'])).resolves.toBeDefined();
});

test('the protocol makes no breaking change against the released contract', async () => {
  await expect(bufRun(['breaking', '--against', 'released/naa-v1.json'])).resolves.toBeDefined();
});
