// Every program a user runs, through the npm script the docs give for it, answers `--help` with its
// usage and an unknown option with one line naming it, the usage and exit status 2, no stack trace.
import { execFile } from 'node:child_process';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const scripts = [
  'dataplane',
  'operator',
  'sidecar',
  'lab',
  'setup',
  'bench',
  'bench:naa',
  'bench:naa-gateway',
  'bench:dataplane',
  'bench:operator',
  'bench:strict',
  'soak',
];

function npmRun(script: string, arg: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('npm', ['run', '--silent', script, '--', arg], { cwd: root }, (error, stdout, stderr) =>
      resolve({ code: error ? (error.code as number) : 0, stdout, stderr }),
    );
  });
}

test.each(scripts)(
  'npm run %s -- --help prints the usage; --bogus is a usage error',
  async (script) => {
    const [help, bogus] = await Promise.all([npmRun(script, '--help'), npmRun(script, '--bogus')]);
    expect(help).toEqual({ code: 0, stdout: expect.stringMatching(/^usage: /), stderr: '' });
    expect(bogus.code).toBe(2);
    expect(bogus.stdout).toBe('');
    const [first, ...rest] = bogus.stderr.trim().split('\n');
    expect(first).toMatch(/--bogus/);
    expect(rest.join('\n')).toContain('usage: ');
    expect(bogus.stderr).not.toMatch(/^\s+at /m);
  },
  60_000,
);
