// Waiting and stopping, for the processes of the test control plane and of the real node.
import type { ChildProcess } from 'node:child_process';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function waitFor(what: string, ready: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      if (await ready()) return;
    } catch (error) {
      last = error;
    }
    await sleep(200);
  }
  throw new Error(`${what} was not ready within ${timeoutMs / 1000}s${last ? `: ${(last as Error).message}` : ''}`);
}

export async function timed<T>(say: (line: string) => void, what: string, step: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const result = await step();
  say(`${what} (${((performance.now() - started) / 1000).toFixed(1)}s)`);
  return result;
}

/** Resolves once the process has exited: at once if it has, by its own exit or a signal. */
export function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** SIGTERM, then SIGKILL after five seconds; resolves once the process has exited. */
export async function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = exited(child);
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await gone;
  clearTimeout(timer);
}
