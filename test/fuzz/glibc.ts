// Jazzer.js's prebuilt libFuzzer addon is built with GCC 13 against glibc 2.38, so it does not load
// with the glibc 2.36 and libstdc++ of GCC 12 of Debian 12. It needs of them only:
// - the C23 `strtol` and `strtoul` (`__isoc23_strtol`, which also read a `0b` prefix): libFuzzer
//   parses its decimal flags with them, as the C99 functions of glibc 2.2.5 do;
// - `std::ios_base_library_init` of GLIBCXX_3.4.32, a symbol <iostream> names only so that the
//   link takes a libstdc++ that initialises the standard streams itself: nothing calls it.
// `forOlderGlibc` makes a copy of the addon that asks for the C99 functions instead (it renames the
// two undefined symbols to their unprefixed tails, the same bytes of the string table nine on, and
// gives them that version) and marks both newer requirements weak, so that the loader no longer
// refuses the file for them. Nothing else of the file changes.

const shtDynsym = 11;
const shtGnuVerneed = 0x6ffffffe;
const shtGnuVersym = 0x6fffffff;
const verFlagWeak = 0x2;
const c23Prefix = '__isoc23_';
const c23Version = 'GLIBC_2.38';
const c99Version = 'GLIBC_2.2.5';
/** Requirements only for symbols that are renamed or never bound. */
const weakened = [c23Version, 'GLIBCXX_3.4.32'];

interface Section {
  type: number;
  offset: number;
  size: number;
  link: number;
  info: number;
}

/** Whether this glibc (`process.report`'s `glibcVersionRuntime`, e.g. `2.36`) lacks the C23 functions. */
export function lacksC23(glibcVersion: string | undefined): boolean {
  if (!glibcVersion) return false;
  const [major = 0, minor = 0] = glibcVersion.split('.').map(Number);
  return major < 2 || (major === 2 && minor < 38);
}

/** The 64-bit little-endian ELF `image` with its C23 imports turned into C99 ones; undefined when it has none. */
export function forOlderGlibc(image: Uint8Array): Uint8Array | undefined {
  const elf = Buffer.from(image);
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2 || elf[5] !== 1)
    throw new Error('not a 64-bit little-endian ELF file');
  const sections = readSections(elf);
  const of = (type: number) => sections.find((s) => s.type === type);
  const dynsym = of(shtDynsym);
  const versym = of(shtGnuVersym);
  const verneed = of(shtGnuVerneed);
  if (!dynsym || !versym || !verneed) return undefined;
  const strings = sections[dynsym.link]!.offset;
  const text = (at: number) => elf.toString('latin1', at, elf.indexOf(0, at));

  // The version indexes the file asks for, and where each requirement's flags are.
  const versions = new Map<string, { index: number; flagsAt: number }>();
  for (let need = verneed.offset, n = 0; n < verneed.info; n++) {
    const count = elf.readUInt16LE(need + 2);
    for (let aux = need + elf.readUInt32LE(need + 8), i = 0; i < count; i++) {
      versions.set(text(strings + elf.readUInt32LE(aux + 8)), { index: elf.readUInt16LE(aux + 6), flagsAt: aux + 4 });
      aux += elf.readUInt32LE(aux + 12);
    }
    need += elf.readUInt32LE(need + 12);
  }
  const c23 = versions.get(c23Version);
  const c99 = versions.get(c99Version);
  if (!c23 || !c99) return undefined;

  let renamed = 0;
  for (let i = 0; i < dynsym.size / 24; i++) {
    const symbol = dynsym.offset + i * 24;
    const name = elf.readUInt32LE(symbol);
    const undefinedSymbol = elf.readUInt16LE(symbol + 6) === 0;
    if (!undefinedSymbol || !text(strings + name).startsWith(c23Prefix)) continue;
    if ((elf.readUInt16LE(versym.offset + i * 2) & 0x7fff) !== c23.index) continue;
    elf.writeUInt32LE(name + c23Prefix.length, symbol);
    elf.writeUInt16LE(c99.index, versym.offset + i * 2);
    renamed++;
  }
  if (!renamed) return undefined;
  for (const name of weakened) {
    const version = versions.get(name);
    if (version) elf.writeUInt16LE(elf.readUInt16LE(version.flagsAt) | verFlagWeak, version.flagsAt);
  }
  return elf;
}

function readSections(elf: Buffer): Section[] {
  const start = Number(elf.readBigUInt64LE(0x28));
  const size = elf.readUInt16LE(0x3a);
  const count = elf.readUInt16LE(0x3c);
  return Array.from({ length: count }, (_, i) => {
    const at = start + i * size;
    return {
      type: elf.readUInt32LE(at + 4),
      offset: Number(elf.readBigUInt64LE(at + 24)),
      size: Number(elf.readBigUInt64LE(at + 32)),
      link: elf.readUInt32LE(at + 40),
      info: elf.readUInt32LE(at + 44),
    };
  });
}
