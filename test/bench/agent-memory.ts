// The dataplane agent's memory as its goal names it: the compiled agent started as its image and
// DaemonSet start it, at scale, holding many open flows with its attribution log full. The flows
// are conntrack entries made with `conntrack -R` (a file of -I and -D commands: thousands a
// second), each with the mark of one of the agent's uplinks, from the config's pods: the agent
// learns of them as of any flow, from its conntrack event stream, and keeps them in its flow
// table and its log. Entries have no packets, so no traffic leaves the namespace.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { until } from '../e2e/topology.ts';
import { imageArgv, type ImageBuild } from './image.ts';
import { memory } from './process.ts';

export interface AgentGoalOptions {
  /** A network namespace with the config's uplink interfaces, where the agent runs. */
  ns: string;
  dir: string;
  image: ImageBuild;
  /** The gateway config, with `hash`; its pods own the flows' sources. */
  config: {
    hash: string;
    pods: Array<{ addresses: string[] }>;
    uplinks: Array<{ name: string; snat: { addresses: string[] } }>;
  };
  /** NODE_OPTIONS of the agent's container (the DaemonSet's, else the image's). */
  nodeOptions: string;
  /** The agent's arguments after `run --config FILE --node gw --state-dir DIR`. */
  args: string[];
  /** Records the log holds at most (--attribution-records). */
  records: number;
  /** Flows held open at the end. */
  flows: number;
  /** Entries made (and ended) per `conntrack -R`, each batch handled before the next: a few hundred. */
  batch: number;
  /** How long the agent runs with its flows before its memory is read: a flow-table listing or more. */
  settleMs: number;
}

export interface AgentGoalMemory {
  /** VmRSS and VmHWM, MiB. */
  rss: number;
  peak: number;
  /** V8's heap in use and the memory of its external objects (buffers), MiB, from /metrics. */
  heapUsed: number;
  heapTotal: number;
  external: number;
  /** What the agent held when its memory was read. */
  flows: number;
  records: number;
  dropped: number;
  /** Seconds the log took to fill, and the flows to open. */
  fillSeconds: number;
  openSeconds: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Flow `i`'s original and reply tuples: a pod's port to an address of its own, translated to a port of its own. */
function entry(i: number, pods: string[], uplink: { id: number; address: string }): string {
  const source = pods[i % pods.length]!;
  const sport = 10_000 + (Math.floor(i / pods.length) % 50_000);
  const destination = `198.${18 + ((i >> 16) & 1)}.${(i >> 8) & 255}.${i & 255}`;
  const mapped = 1024 + (i % 60_000);
  return (
    `-p tcp -s ${source} -d ${destination} --sport ${sport} --dport 443 ` +
    `-r ${destination} -q ${uplink.address} --reply-port-src 443 --reply-port-dst ${mapped}`
  );
}

export async function agentGoalMemory(o: AgentGoalOptions): Promise<AgentGoalMemory> {
  // nsenter rather than `ip netns exec`, which remounts /sys for each command: thousands are run.
  const inNs = (argv: string[]) => ['nsenter', `--net=/var/run/netns/${o.ns}`, ...argv];
  const run = (argv: string[]) =>
    new Promise<string>((resolve, reject) => {
      const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => (out += chunk));
      child.stderr.setEncoding('utf8').on('data', (chunk: string) => (err += chunk));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`${argv.join(' ')}: ${err.trim()}`))));
    });
  const get = (path: string) => run(inNs(['curl', '-sf', `http://127.0.0.1:7741${path}`]));
  const metric = async (name: string) => {
    const text = await get('/metrics');
    const value = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text)?.[1];
    if (value === undefined) throw new Error(`the agent's /metrics has no ${name}`);
    return Number(value);
  };
  const file = join(o.dir, 'goal.json');
  await writeFile(file, JSON.stringify(o.config));
  const logFile = join(o.dir, 'goal.log');
  const log = openSync(logFile, 'a');
  const argv = [
    ...imageArgv(o.image),
    'run',
    '--config',
    file,
    '--node',
    'gw',
    '--state-dir',
    join(o.dir, 'goal-state'),
  ];
  const [enter, ...command] = inNs([...argv, ...o.args]);
  // nsenter execs the agent: the child's pid is the agent's.
  const agent: ChildProcess = spawn(enter!, command, {
    cwd: o.image.app,
    stdio: ['ignore', log, log],
    env: { ...process.env, ...o.image.env, NODE_OPTIONS: o.nodeOptions },
  });
  closeSync(log);
  try {
    const report = await until(
      'the agent at its goal',
      async () => {
        const r = JSON.parse(await get('/status').catch(() => '{}')) as Partial<AgentReport>;
        return r.appliedHash === o.config.hash ? (r as AgentReport) : undefined;
      },
      120_000,
    );
    const pods = o.config.pods.map((p) => p.addresses[0]!);
    // Each uplink's id, and its first SNAT address as the flows' translated address.
    const uplinks = report.uplinks.map((u) => ({
      id: u.id,
      address: o.config.uplinks.find((c) => c.name === u.name)!.snat.addresses[0]!,
    }));
    // Each batch through one conntrack -R, then until the agent has handled it. A few hundred
    // events at a time: conntrack -R makes them faster than an event listener reads them, and the
    // kernel drops the events that overflow its socket (ENOBUFS), the agent's as any other's. The
    // flow table gets a lost flow back at its next listing, the log does not: more are made.
    let next = 0;
    const open = async (count: number) => {
      const lines = Array.from({ length: count }, () => {
        const i = next++;
        const uplink = uplinks[i % uplinks.length]!;
        // -u before -m: conntrack 1.4.7 sets the mark to the status bits when -u comes after it.
        return `-I ${entry(i, pods, uplink)} --state ESTABLISHED -t 7200 -u SEEN_REPLY,ASSURED -m ${uplink.id}`;
      });
      const load = join(o.dir, 'goal-entries.txt');
      await writeFile(load, lines.join('\n') + '\n');
      await run(inNs(['conntrack', '-R', load]));
    };
    const fill = async (held: () => Promise<number>, want: number) => {
      for (let now = await held(); now < want; now = await held()) {
        const count = Math.min(o.batch, want - now);
        await open(count);
        await until('a batch handled', async () => ((await held()) >= now + count ? true : undefined), 2000).catch(
          () => undefined,
        );
      }
    };
    const flows = () => metric('naat_flows');
    const records = () => metric('naat_attribution_records');
    // The log fills with flows that end, as it does over a day: opened, then ended all at once by a
    // flush (conntrack -D of one flow looks through the whole table), whose DESTROY events the
    // kernel delivers late rather than drop. The ended records stay in the log.
    let started = performance.now();
    await fill(records, o.records);
    await run(inNs(['conntrack', '-F']));
    await until('the agent to end the flows', async () => ((await flows()) === 0 ? true : undefined), 60_000);
    const fillSeconds = (performance.now() - started) / 1000;
    // Then the flows open, and their records take the place of the oldest ended ones.
    started = performance.now();
    await fill(flows, o.flows);
    const openSeconds = (performance.now() - started) / 1000;
    await sleep(o.settleMs);
    const mib = async (name: string) => (await metric(name)) / 2 ** 20;
    const result: AgentGoalMemory = {
      ...(await memory(agent.pid!)),
      heapUsed: await mib('nodejs_heap_size_used_bytes'),
      heapTotal: await mib('nodejs_heap_size_total_bytes'),
      external: await mib('nodejs_external_memory_bytes'),
      flows: await metric('naat_flows'),
      records: await metric('naat_attribution_records'),
      dropped: await metric('naat_attribution_records_dropped_total'),
      fillSeconds,
      openSeconds,
    };
    if (result.flows < o.flows || result.records !== o.records) {
      throw new Error(
        `the agent holds ${result.flows} flows and ${result.records} records, not ${o.flows} and ${o.records}`,
      );
    }
    return result;
  } catch (error) {
    console.log(`goal agent log:\n${await readFile(logFile, 'utf8').catch(() => '')}`);
    throw error;
  } finally {
    agent.kill('SIGKILL');
    await run(inNs(['conntrack', '-F'])).catch(() => undefined);
    await run(inNs(['nft', 'delete', 'table', 'inet', 'naat'])).catch(() => undefined);
  }
}
