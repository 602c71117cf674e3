// Every command the README and the docs tell a user to run works as written on the project's own
// runtime: each documented `npm run` names a script of package.json, and each documented command
// line of one of naat's programs, run as written with `--help` added, gets past the program's
// command-line parsing (every option it names exists) and prints the usage. Every program answers
// an unknown option with one line naming it, the usage and exit status 2, no stack trace; naat's
// components do the same with an unknown log level in NAAT_LOG_LEVEL.
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const root = join(import.meta.dirname, '..');
const scripts: Record<string, string> = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).scripts;
/** naat's own programs: the scripts that run one of its TypeScript entry points. */
const programs = Object.keys(scripts).filter((name) => name !== 'test' && /^node \S+\.ts$/.test(scripts[name]!));

const documents = ['README.md', 'charts/naat/README.md', ...readdirSync(join(root, 'docs')).map((f) => `docs/${f}`)];

/** The `npm run …` lines of the documents' code blocks, without their comments, and where each is. */
function documentedCommands(): Array<{ where: string; command: string }> {
  const found: Array<{ where: string; command: string }> = [];
  for (const document of documents.filter((d) => d.endsWith('.md'))) {
    let inCode = false;
    readFileSync(join(root, document), 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (line.trimStart().startsWith('```')) inCode = !inCode;
        const command = line.replace(/\s#\s.*$/, '').trim();
        if (inCode && /^npm run \S/.test(command)) found.push({ where: `${document}:${i + 1}`, command });
      });
  }
  return found;
}

const scriptOf = (command: string) => command.replace(/^npm run (--silent )?/, '').split(/\s/)[0]!;

function run(
  file: string,
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd: root, env }, (error, stdout, stderr) =>
      resolve({ code: error ? (error.code as number) : 0, stdout, stderr }),
    );
  });
}

const commands = documentedCommands();

test('the documents name commands, and every documented npm script exists', () => {
  expect(commands.length).toBeGreaterThan(20);
  const missing = commands.filter(({ command }) => !(scriptOf(command) in scripts));
  expect(missing).toEqual([]);
});

const programCommands = commands.filter(({ command }) => programs.includes(scriptOf(command)));

test.each(programCommands.map(({ where, command }) => [command, where]))(
  '%s (%s) with --help prints the usage',
  async (command) => {
    // `npm run lab` and `npm run setup` take no `--` of their own when documented bare.
    const withHelp = command.includes(' -- ') ? `${command} --help` : `${command} -- --help`;
    const result = await run('sh', ['-c', withHelp.replace(/^npm run (--silent )?/, 'npm run --silent ')]);
    expect(result).toEqual({ code: 0, stdout: expect.stringMatching(/^usage: /), stderr: '' });
  },
  60_000,
);

test.each(programs)(
  'npm run %s -- --bogus is a usage error',
  async (script) => {
    const bogus = await run('npm', ['run', '--silent', script, '--', '--bogus']);
    expect(bogus.code).toBe(2);
    expect(bogus.stdout).toBe('');
    const [first, ...rest] = bogus.stderr.trim().split('\n');
    expect(first).toMatch(/--bogus/);
    expect(rest.join('\n')).toContain('usage: ');
    expect(bogus.stderr).not.toMatch(/^\s+at /m);
  },
  60_000,
);

// The components the operator passes its log level to.
test.each(['dataplane', 'operator', 'sidecar'])(
  'npm run %s with NAAT_LOG_LEVEL=verbose is a usage error naming the variable',
  async (script) => {
    const result = await run('npm', ['run', '--silent', script], { ...process.env, NAAT_LOG_LEVEL: 'verbose' });
    expect(result.code).toBe(2);
    expect(result.stderr.split('\n')[0]).toBe(
      'NAAT_LOG_LEVEL is "verbose"; it must be one of debug, info, warn, error',
    );
    expect(result.stderr).not.toMatch(/^\s+at /m);
  },
  60_000,
);
