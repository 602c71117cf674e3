// What the benchmarks read of a running process from /proc: its memory and the CPU time it used.
import { readdir, readFile } from 'node:fs/promises';

/** VmRSS and VmHWM (the peak of VmRSS) of a process, in MiB. */
export async function memory(pid: number): Promise<{ rss: number; peak: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const mib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1]) / 1024;
  return { rss: mib('VmRSS'), peak: mib('VmHWM') };
}

/**
 * Seconds a process has run on a CPU, all its threads, from the scheduler's nanosecond counters
 * (schedstat of each task in /proc/<pid>/task): an idle process uses less than one clock tick of
 * /proc/<pid>/stat's user and system time in a short sample.
 */
export async function cpuSeconds(pid: number): Promise<number> {
  let total = 0;
  for (const task of await readdir(`/proc/${pid}/task`)) {
    const text = await readFile(`/proc/${pid}/task/${task}/schedstat`, 'utf8').catch(() => '0');
    total += Number(text.split(' ')[0]) / 1e9;
  }
  return total;
}

/** The share of one core a process uses over `seconds`. */
export async function cpuShare(pid: number, seconds: number): Promise<number> {
  const before = await cpuSeconds(pid);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  return ((await cpuSeconds(pid)) - before) / seconds;
}
