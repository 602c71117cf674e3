import fc from 'fast-check';
import { Application as ApplicationSchema } from '../crds/index.ts';
import type { Application } from '../proto/index.ts';
import {
  globsOverlap,
  matcherFields,
  matchersOverlap,
  matchesApplication,
  matchesGlob,
  toApplicationMatch,
  type ApplicationMatcher,
} from './applications.ts';

const curl: Application = {
  processName: 'curl',
  executable: '/usr/bin/curl',
  commandLine: ['curl', 'https://example.com'],
  containerName: 'app',
  containerId: 'c1',
  uid: 1000,
  pid: 42,
};

test('has exactly the fields of the schema', () => {
  expect(matcherFields).toEqual(Object.keys(ApplicationSchema.properties));
});

test.each([
  [{ processName: 'curl' }, true],
  [{ processName: 'wget' }, false],
  [{ executable: '/usr/bin/*' }, true],
  [{ executable: '/usr/*' }, false],
  [{ executable: '/usr/**' }, true],
  [{ executable: '/usr/bin/cur?' }, true],
  [{ container: 'app', uid: 1000 }, true],
  [{ container: 'app', uid: 0 }, false],
  [{ uid: 0 }, false],
  [{}, false],
] as [ApplicationMatcher, boolean][])('matcher %j matches curl: %s', (matcher, expected) => {
  expect(matchesApplication(matcher, curl)).toBe(expected);
});

test.each([
  ['/usr/bin/*', '/usr/bin/curl', true],
  ['/usr/bin/*', '/usr/bin/x/curl', false],
  ['/opt/**/java', '/opt/jdk/21/bin/java', true],
  ['/opt/**/java', '/opt/java', false],
  ['/usr/bin/?get', '/usr/bin/wget', true],
  ['/usr/bin/?get', '/usr/bin//get', false],
  ['/a.b+c(d)', '/a.b+c(d)', true],
  ['/a.b', '/axb', false],
])('glob %s against %s: %s', (glob, text, expected) => {
  expect(matchesGlob(glob, text)).toBe(expected);
});

test.each([
  ['/usr/bin/*', '/usr/bin/curl', true],
  ['/usr/bin/curl', '/usr/bin/*', true],
  ['/usr/bin/*', '/usr/bin/*/curl', false],
  ['/usr/**', '/usr/bin/*/curl', true],
  ['/opt/**/java', '*/java', false],
  ['/opt/**/java', '/**/java', true],
  ['/opt/*/java', '/opt/?/j*', true],
  ['/opt/*/java', '/opt/*/javac', false],
  ['/usr/bin/c?rl', '/usr/bin/?url', true],
  ['/usr/bin/?', '/usr/bin/', false],
  ['*', '/usr/bin/curl', false],
  ['**', '/usr/bin/curl', true],
])('globs %s and %s overlap: %s', (a, b, expected) => {
  expect(globsOverlap(a, b)).toBe(expected);
});

test.each([
  [{ executable: '/usr/bin/*' }, { executable: '/usr/bin/curl' }, true],
  [{ executable: '/usr/bin/*', uid: 0 }, { executable: '/usr/bin/curl', uid: 1000 }, false],
  [{ processName: 'curl' }, { executable: '/usr/bin/wget' }, true],
  [{ processName: 'curl' }, { processName: 'wget' }, false],
  [{ container: 'app' }, { container: 'app', uid: 0 }, true],
  [{}, { container: 'app' }, false],
] as [ApplicationMatcher, ApplicationMatcher, boolean][])('matchers %j and %j overlap: %s', (a, b, expected) => {
  expect(matchersOverlap(a, b)).toBe(expected);
  expect(matchersOverlap(b, a)).toBe(expected);
});

test('travels in the protocol with unset text fields empty and an unset uid absent', () => {
  expect(toApplicationMatch({ executable: '/usr/bin/*', uid: 0 })).toEqual({
    processName: '',
    executableGlob: '/usr/bin/*',
    containerName: '',
    uid: 0,
  });
  expect(toApplicationMatch({ processName: 'curl', container: 'app' })).toStrictEqual({
    processName: 'curl',
    executableGlob: '',
    containerName: 'app',
  });
});

// Brute force: two globs over {a, b, /, *, ?} overlap exactly when some string over {a, b, /}
// matches both. A shortest common string takes at most one character per glob character (a
// step that consumes no character of either glob would repeat a state), and a character that both
// wildcards accept can be `a`, so strings up to the sum of the glob lengths decide it.
const globLength = 4;
const strings = (length: number): string[] =>
  length === 0
    ? ['']
    : [...strings(length - 1), ...strings(length - 1).flatMap((s) => ['a', 'b', '/'].map((c) => s + c))];
const candidates = [...new Set(strings(2 * globLength))];
const glob = fc.string({ unit: fc.constantFrom('a', 'b', '/', '*', '?'), maxLength: globLength });

test('globsOverlap agrees with a search over every string short enough to decide it', () => {
  fc.assert(
    fc.property(glob, glob, (a, b) => {
      const witness = candidates.some((s) => matchesGlob(a, s) && matchesGlob(b, s));
      expect(globsOverlap(a, b)).toBe(witness);
    }),
    { numRuns: 1000 },
  );
});

test('globsOverlap is symmetric and every glob overlaps itself', () => {
  fc.assert(
    fc.property(glob, glob, (a, b) => {
      expect(globsOverlap(a, b)).toBe(globsOverlap(b, a));
      expect(globsOverlap(a, a)).toBe(true);
    }),
  );
});

test('matchersOverlap holds exactly when some application matches both', () => {
  const executables = [...new Set(strings(4))].map((s) => `/${s}`);
  const applications = executables.flatMap((executable) =>
    ['curl', 'java'].flatMap((processName) =>
      ['app', 'batch'].flatMap((containerName) =>
        [0, 1000].map((uid): Application => ({ ...curl, processName, executable, containerName, uid })),
      ),
    ),
  );
  const matcher = fc.record(
    {
      processName: fc.constantFrom('curl', 'java'),
      executable: fc.string({ unit: fc.constantFrom('a', '/', '*', '?'), maxLength: 2 }).map((g) => `/${g}`),
      container: fc.constantFrom('app', 'batch'),
      uid: fc.constantFrom(0, 1000),
    },
    { requiredKeys: [] },
  );
  fc.assert(
    fc.property(matcher, matcher, (a, b) => {
      const witness = applications.some((app) => matchesApplication(a, app) && matchesApplication(b, app));
      expect(matchersOverlap(a, b)).toBe(witness);
    }),
    { numRuns: 300 },
  );
});
