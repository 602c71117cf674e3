// Runs a kernel tool (nft, ip, conntrack) to completion, its script on standard input. A
// command prefix (such as `ip netns exec NAME`) runs it in another network namespace.
import { spawn } from 'node:child_process';

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export type Command = readonly string[];

export function exec(command: Command, args: string[], input?: string): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const stdin = input === undefined ? 'ignore' : 'pipe';
    const child = spawn(command[0]!, [...command.slice(1), ...args], { stdio: [stdin, 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    // A tool that exits before reading all its input closes the pipe; its exit status tells why.
    child.stdin?.on('error', () => {});
    child.stdin?.end(input);
  });
}
