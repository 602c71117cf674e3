import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { forOlderGlibc, lacksC23 } from './glibc.ts';

const require = createRequire(import.meta.url);
const fuzzer = dirname(createRequire(require.resolve('@jazzer.js/core')).resolve('@jazzer.js/fuzzer'));
const addon = readFileSync(join(fuzzer, '..', 'prebuilds', 'fuzzer-linux-x64.node'));

/** The byte offsets at which two images of the same length differ. */
const differences = (a: Uint8Array, b: Uint8Array) =>
  a.reduce<number[]>((d, byte, i) => (byte === b[i] ? d : [...d, i]), []);

test('glibc releases before 2.38 lack the C23 functions', () => {
  expect([lacksC23('2.36'), lacksC23('2.37'), lacksC23('2.38'), lacksC23('2.41'), lacksC23('3.0')]).toEqual([
    true,
    true,
    false,
    false,
    false,
  ]);
  expect(lacksC23(undefined)).toBe(false);
});

test("the addon's copy for an older glibc changes only the two symbols and the two requirements", () => {
  const patched = forOlderGlibc(addon)!;
  expect(patched.length).toBe(addon.length);
  // Per symbol its name offset (one byte) and its version index (one byte); per requirement its flags.
  expect(differences(addon, patched).length).toBe(2 * 2 + 2);
  const text = Buffer.from(patched).toString('latin1');
  expect(text).toContain('__isoc23_strtol\0');
  // The copy has nothing left to change.
  expect(forOlderGlibc(patched)).toBeUndefined();
});

test('an image that is not a 64-bit ELF file is refused', () => {
  expect(() => forOlderGlibc(Buffer.from('not an ELF file at all, but long enough'))).toThrow(/not a 64-bit/);
});
