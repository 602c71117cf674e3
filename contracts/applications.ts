// An application matcher, defined once for every component. Its fields are those of the
// EgressPolicy schema's Application (crds/v1alpha1/egress-policy.ts, the single source); this
// module says what each field means: how it matches an application a driver reports, when two
// matchers can match one application, and which field of the NAA protocol carries it. A field
// added to the schema does not type-check here until it is given all three.
import type { Application as ApplicationMatcher } from '../crds/index.ts';
// Types only: the operator uses this module and must not load the generated protocol code.
import type { Application, ApplicationMatch } from '../proto/index.ts';

export type { ApplicationMatcher };

type KeysOf<T, V> = { [K in keyof T]-?: NonNullable<T[K]> extends V ? K : never }[keyof T];

/** How a field of one type compares, and the fields of the protocol's messages that carry it. */
type FieldMeaning<V> = V extends string
  ? { compare: 'equal' | 'glob'; reported: KeysOf<Application, string>; match: KeysOf<ApplicationMatch, string> }
  : { compare: 'equal'; reported: KeysOf<Application, V>; match: KeysOf<ApplicationMatch, V> };

const fields: { [K in keyof Required<ApplicationMatcher>]: FieldMeaning<NonNullable<ApplicationMatcher[K]>> } = {
  processName: { compare: 'equal', reported: 'processName', match: 'processName' },
  executable: { compare: 'glob', reported: 'executable', match: 'executableGlob' },
  container: { compare: 'equal', reported: 'containerName', match: 'containerName' },
  uid: { compare: 'equal', reported: 'uid', match: 'uid' },
};

/** The matcher's fields, in the order the schema declares them. */
export const matcherFields = Object.keys(fields) as (keyof ApplicationMatcher)[];

const entries = Object.entries(fields) as [keyof ApplicationMatcher, FieldMeaning<string | number>][];

const setsAField = (matcher: ApplicationMatcher) => matcherFields.some((name) => matcher[name] !== undefined);

/** Every field the matcher sets must match; a matcher that sets none matches nothing (the schema forbids it). */
export function matchesApplication(matcher: ApplicationMatcher, application: Application): boolean {
  return (
    setsAField(matcher) &&
    entries.every(([name, field]) => {
      const wanted = matcher[name];
      if (wanted === undefined) return true;
      const reported = application[field.reported];
      return field.compare === 'glob' ? matchesGlob(wanted as string, reported as string) : wanted === reported;
    })
  );
}

/** Whether some application matches both: each field that both set can take one value that satisfies both. */
export function matchersOverlap(a: ApplicationMatcher, b: ApplicationMatcher): boolean {
  return (
    setsAField(a) &&
    setsAField(b) &&
    entries.every(([name, field]) => {
      const x = a[name];
      const y = b[name];
      if (x === undefined || y === undefined) return true;
      return field.compare === 'glob' ? globsOverlap(x as string, y as string) : x === y;
    })
  );
}

/** The matcher as the NAA protocol carries it to drivers: an unset text field is empty, an unset uid absent. */
export function toApplicationMatch(matcher: ApplicationMatcher): ApplicationMatch {
  const match: ApplicationMatch = { processName: '', executableGlob: '', containerName: '' };
  for (const [name, field] of entries) {
    if (matcher[name] !== undefined) Object.assign(match, { [field.match]: matcher[name] });
  }
  return match;
}

// Globs over paths: `*` matches within a path segment, `**` across segments, `?` one character
// other than `/`; every other character stands for itself.
type Token = { kind: 'literal'; char: string } | { kind: 'one' } | { kind: 'segment' } | { kind: 'any' };

function tokenize(glob: string): Token[] {
  const tokens: Token[] = [];
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      tokens.push({ kind: 'any' });
      i++;
    } else if (c === '*') tokens.push({ kind: 'segment' });
    else if (c === '?') tokens.push({ kind: 'one' });
    else tokens.push({ kind: 'literal', char: c });
  }
  return tokens;
}

const compiled = new Map<string, RegExp>();

/** Whether `text` matches `glob` as a whole. */
export function matchesGlob(glob: string, text: string): boolean {
  let re = compiled.get(glob);
  if (!re) {
    const source = tokenize(glob)
      .map((t) =>
        t.kind === 'any'
          ? '.*'
          : t.kind === 'segment'
            ? '[^/]*'
            : t.kind === 'one'
              ? '[^/]'
              : t.char.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'),
      )
      .join('');
    re = new RegExp(`^${source}$`, 's');
    compiled.set(glob, re);
  }
  return re.test(text);
}

/** `*` and `**` stand for any number of characters; the others for exactly one. */
const repeats = (t: Token) => t.kind === 'segment' || t.kind === 'any';

/** Whether some single character can stand for both tokens. */
function meet(s: Token, t: Token): boolean {
  if (s.kind === 'literal' && t.kind === 'literal') return s.char === t.char;
  if (s.kind === 'literal') return s.char !== '/' || t.kind === 'any';
  if (t.kind === 'literal') return t.char !== '/' || s.kind === 'any';
  // Two wildcards: any character other than `/` will do.
  return true;
}

/**
 * Whether some string matches both globs. Walks the product of the two globs' automata: a state is
 * a position in each, a step consumes one character both can take there, and the globs overlap
 * when both ends are reached together. At most (|a|+1)·(|b|+1) states, each visited once.
 */
export function globsOverlap(a: string, b: string): boolean {
  if (a === b) return true;
  const x = tokenize(a);
  const y = tokenize(b);
  const width = y.length + 1;
  const seen = new Uint8Array((x.length + 1) * width);
  const pending: [number, number][] = [[0, 0]];
  const visit = (i: number, j: number) => {
    if (!seen[i * width + j]) {
      seen[i * width + j] = 1;
      pending.push([i, j]);
    }
  };
  seen[0] = 1;
  for (let next = pending.pop(); next; next = pending.pop()) {
    const [i, j] = next;
    if (i === x.length && j === y.length) return true;
    const s = x[i];
    const t = y[j];
    // A star may also stand for nothing.
    if (s && repeats(s)) visit(i + 1, j);
    if (t && repeats(t)) visit(i, j + 1);
    if (s && t && meet(s, t)) visit(repeats(s) ? i : i + 1, repeats(t) ? j : j + 1);
  }
  return false;
}
