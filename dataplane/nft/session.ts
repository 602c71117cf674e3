// A long-lived `nft -i` that applies small transactions without a process start each. nft reads
// its input a line at a time and commits each line as one batch, all or nothing, so a transaction
// goes as one line. nft prints nothing when a line succeeds: a marker line after it, which nft
// refuses with an error that echoes it, tells where the transaction's own error text ends.
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';
import { exec, type Command, type ExecResult } from '../exec.ts';

/**
 * The longest transaction line the session takes, in bytes. With its marker it stays within the
 * 4,096 bytes (PIPE_BUF) that a pipe takes in one piece: a line reaches nft whole or not at all,
 * even if the agent dies while writing it (nft would commit a line cut short at a command's
 * end). nft -i also reads a byte at a time, about 1 µs a byte: longer transactions go faster
 * through `nft -f`.
 */
export const sessionLineBytes = 4000;

/**
 * Transactions one nft applies before the next one takes over: nft -i keeps every line in its
 * history, in memory, for as long as it runs (about 0.5 kB a transaction, 10 MB after 20,000).
 */
export const sessionTransactions = 1000;

export class NftSessionError extends Error {}

/**
 * Whether `commands` go on one line of the session: ASCII only, as nft -i's line editor (libedit)
 * silently drops every other character (a rule named in another script would lose its name in the
 * kernel), and within the longest line.
 */
export function sessionTakes(commands: readonly string[]): boolean {
  let bytes = -2;
  for (const command of commands) {
    // Only ASCII takes one UTF-8 byte a UTF-16 unit.
    if (Buffer.byteLength(command) !== command.length) return false;
    bytes += command.length + 2;
    if (bytes > sessionLineBytes) return false;
  }
  return commands.length > 0;
}

/**
 * The commands as one line. A command may not hold a line break or an unquoted `#`: the one would
 * split the transaction, the other would make the rest of the line a comment.
 */
export function transactionLine(commands: readonly string[]): string {
  for (const command of commands) {
    if (/[\r\n]/.test(command) || command.replace(/"[^"]*"/g, '').includes('#')) {
      throw new NftSessionError(`nft command cannot go on a line with others: ${JSON.stringify(command)}`);
    }
  }
  return commands.join('; ');
}

/**
 * nft's answer to the line before `marker`: what it printed up to the error block that echoes the
 * marker (the error's message, the marker, a caret line), and what follows; undefined until all
 * of that has arrived.
 */
export function takeReply(output: string, marker: string): { reply: string; rest: string } | undefined {
  const found = new RegExp(`(^|\\n)Error: [^\\n]*\\n${marker}\\n[ ^~]*\\n`).exec(output);
  if (!found) return undefined;
  return { reply: output.slice(0, found.index + found[1]!.length), rest: output.slice(found.index + found[0].length) };
}

/**
 * nft's errors about a transaction line, each narrowed to the command it is about, as `nft -f`
 * shows it: nft echoes the whole line with a caret under the failing part, which for a long
 * transaction would bury the command that failed.
 */
export function narrowErrors(reply: string, commands: readonly string[]): string {
  const line = commands.join('; ');
  const lines = reply.split('\n');
  for (let i = 0; i + 1 < lines.length; i++) {
    const caret = lines[i + 1]!;
    const column = caret.search(/[\^~]/);
    if (lines[i] !== line || column < 0) continue;
    let start = 0;
    for (const command of commands) {
      if (column < start + command.length + 2) {
        lines[i] = command;
        lines[i + 1] = caret.slice(start).trimEnd();
        break;
      }
      start += command.length + 2;
    }
  }
  return lines.join('\n');
}

interface Pending {
  marker: string;
  commands: readonly string[];
  resolve: (result: ExecResult) => void;
}

interface Running {
  child: ChildProcess;
  transactions: number;
  output: string;
  pending: Pending | undefined;
  ended: boolean;
}

/**
 * One nft process, started on the first transaction and again after it died, one transaction in
 * flight at a time. A transaction in flight when nft dies fails: nft may have committed it or
 * not, which only listing the table tells.
 */
export class NftSession {
  readonly #command: Command;
  #running: Running | undefined;
  #queue: Promise<unknown> = Promise.resolve();
  #markers = 0;

  /** `command` runs nft (with a prefix such as `ip netns exec NAME`); the session adds `-i`. */
  constructor(command: Command) {
    this.#command = command;
  }

  /**
   * Applies `commands` as one transaction: code 0 when nft committed it, else 1 and nft's errors,
   * or why nft gave no answer. A transaction too long for one line goes to an nft of its own, on
   * its standard input.
   */
  run(commands: readonly string[]): Promise<ExecResult> {
    const line = sessionTakes(commands) ? transactionLine(commands) : undefined;
    // In the order asked for, whichever nft applies them.
    const result = this.#queue.then(() =>
      line === undefined ? exec(this.#command, ['-f', '-'], `${commands.join('\n')}\n`) : this.#send(line, commands),
    );
    this.#queue = result.catch(() => {});
    return result;
  }

  /** Ends nft once the transactions asked for are done; a later transaction starts it again. */
  close(): Promise<void> {
    const closed = this.#queue.then(async () => {
      const running = this.#running;
      this.#running = undefined;
      if (!running || running.ended) return;
      const exited = new Promise((resolve) => running.child.once('close', resolve));
      hold(running.child, true);
      running.child.stdin!.end();
      await exited;
    });
    this.#queue = closed;
    return closed;
  }

  #send(line: string, commands: readonly string[]): Promise<ExecResult> {
    if (this.#running && this.#running.transactions >= sessionTransactions) {
      this.#running.child.stdin!.end();
      this.#running = undefined;
    }
    const running = this.#running ?? this.#start();
    running.transactions++;
    const marker = `naat-transaction-${++this.#markers}-done`;
    return new Promise((resolve) => {
      running.pending = { marker, commands, resolve };
      hold(running.child, true);
      running.child.stdin!.write(`${line}\n${marker}\n`);
    });
  }

  #start(): Running {
    const [file, ...prefix] = this.#command;
    // nft -i writes its history to $HOME/.nft.history when its input ends: a HOME that can hold no
    // file keeps the transactions out of root's history.
    const child = spawn(file!, [...prefix, '-i'], {
      stdio: ['pipe', 'ignore', 'pipe'],
      env: { ...process.env, HOME: '/dev/null' },
    });
    const running: Running = { child, transactions: 0, output: '', pending: undefined, ended: false };
    this.#running = running;
    hold(child, false);
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      running.output += chunk;
      const pending = running.pending;
      const reply = pending && takeReply(running.output, pending.marker);
      if (!pending || !reply) return;
      running.output = reply.rest;
      running.pending = undefined;
      hold(child, false);
      const errors = narrowErrors(reply.reply, pending.commands).trim();
      pending.resolve({ code: /^Error: /m.test(errors) ? 1 : 0, stdout: '', stderr: errors });
    });
    // A write to an nft that has died fails with EPIPE; its end says why.
    child.stdin!.on('error', () => {});
    const end = (why: string) => {
      if (running.ended) return;
      running.ended = true;
      if (this.#running === running) this.#running = undefined;
      running.pending?.resolve({
        code: 1,
        stdout: '',
        stderr: `nft ${why} before it answered: the transaction may or may not have been applied`,
      });
      running.pending = undefined;
    };
    child.on('error', (error) => end(`failed (${error.message})`));
    child.on('close', (code, signal) => end(`ended (${signal ?? `exit code ${code}`})`));
    return running;
  }
}

/** An idle nft keeps no agent from exiting; nft itself exits when its input ends with the agent. */
function hold(child: ChildProcess, busy: boolean): void {
  for (const handle of [child, child.stdin as Socket | null, child.stderr as Socket | null]) {
    if (busy) handle?.ref();
    else handle?.unref();
  }
}
