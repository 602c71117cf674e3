// A bounded soak of the application-aware gateway (test/e2e/naa-harness.ts: the real agent and the
// real sidecar in network namespaces, against a real apiserver). For its whole length it keeps up
// churn: short flows opened and closed by real programs, the gateway config's rules and pods
// rewritten every few seconds, and a long flow alongside. Every few seconds it samples the agent's
// and the sidecar's memory (RSS) and open file descriptors, the nft objects of the table (chains,
// sets and maps, and the elements of the association maps), and the agent's flow, association and
// attribution counts. `check` says what held after warm-up; `summary` prints the figures.
// test/bench/soak.ts runs it for minutes (`npm run soak`), test/e2e/soak.test.ts for about a minute.
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import { NaaGateway } from './naa-harness.ts';
import { server } from './topology.ts';
import { connectMany, startStreamServer, startTransfer, startWhoami, type TransferResult } from './traffic.ts';

export interface SoakOptions {
  kubeconfig: string;
  /** A namespace to create for the pod. */
  namespace: string;
  /** A gateway node of the control plane: the agent accepts only pods on its own node. */
  node: string;
  seconds: number;
  /** Samples before this are warm-up and not judged. */
  warmupSeconds: number;
  /**
   * The agent's attribution log bound (`--attribution-records`): memory is judged flat once the
   * bounded tables are full, so a short soak fills a small one during warm-up.
   */
  attributionRecords?: number;
  /**
   * The agent's V8 old-space bound (MiB). Without one, V8 on a large machine defers collection
   * until its heap is gigabytes large, so RSS rises for minutes with garbage, not with leaks; a
   * bound near the live set makes a leak show as growth (or as the agent running out of memory).
   */
  agentHeapMiB?: number;
  sampleEveryMs?: number;
  log?: (line: string) => void;
}

export interface Sample {
  atSeconds: number;
  agentRssMiB: number;
  sidecarRssMiB: number;
  agentFds: number;
  sidecarFds: number;
  chains: number;
  /** Sets and maps of the table. */
  sets: number;
  /** Elements of the association maps (flows4, flows6). */
  flowElements: number;
  flows: number;
  associations: number;
  attributionRecords: number;
}

export interface SoakResult {
  samples: Sample[];
  warmupSeconds: number;
  shortFlows: { attempts: number; failures: number };
  configRewrites: number;
  longFlow: TransferResult;
  /** The agent's flow table bound and its attribution bound. */
  limits: { flows: number; attributionRecords: number };
}

const whoamiPort = 9000;
const streamPort = 9100;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** The rules of the n-th rewrite: the pod's own rules stay, others come and go with their pods. */
function rulesOf(
  podIp: string,
  namespace: string,
  n: number,
): { rules: object[]; pods: Array<{ namespace: string; name: string; addresses: string[] }> } {
  const fakePods = Array.from({ length: 5 + (n % 7) }, (_, i) => ({
    namespace,
    name: `churn-${n}-${i}`,
    addresses: [`10.250.${n % 200}.${i + 1}`],
  }));
  const rules: object[] = [
    {
      policy: `${namespace}/apps`,
      rule: 'no-curl',
      priority: 1,
      sources: [podIp],
      applications: [{ processName: 'curl' }],
      destinations: [{ cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port: whoamiPort }] }],
      action: 'Deny',
    },
    // Rules of pods that come and go, each naming an application of its own.
    ...fakePods.map((pod, i) => ({
      policy: `${namespace}/churn-${n % 3}`,
      rule: `app-${i}`,
      priority: 10 + i,
      sources: pod.addresses,
      applications: [{ processName: `app-${(n + i) % 4}` }],
      action: i % 2 ? 'Deny' : 'Allow',
    })),
  ];
  return { rules, pods: fakePods };
}

async function rssMiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) / 1024;
}

async function fds(pid: number): Promise<number> {
  return (await readdir(`/proc/${pid}/fd`)).length;
}

interface NftJson {
  nftables: Array<{
    chain?: unknown;
    set?: { name: string; elem?: unknown[] };
    map?: { name: string; elem?: unknown[] };
  }>;
}

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const say = options.log ?? (() => {});
  const gateway = new NaaGateway({
    kubeconfig: options.kubeconfig,
    namespace: options.namespace,
    node: options.node,
    uplinks: 2,
    unassociatedFlows: 'PodRules',
    rules: (podIp) => rulesOf(podIp, options.namespace, 0).rules,
    ...(options.agentHeapMiB ? { agentEnv: { NODE_OPTIONS: `--max-old-space-size=${options.agentHeapMiB}` } } : {}),
    ...(options.attributionRecords ? { agentArgs: ['--attribution-records', String(options.attributionRecords)] } : {}),
  });
  const stops: Array<() => Promise<unknown>> = [];
  try {
    await gateway.start();
    const { topology, pod } = gateway;
    const whoami = await startWhoami(topology, whoamiPort);
    stops.push(() => whoami.stop());
    const streams = await startStreamServer(topology, streamPort);
    stops.push(() => streams.stop());
    const sidecar = await gateway.startSidecar({ log: 'sidecar.log', scanIntervalMs: 100 });
    say('Started the agent, the sidecar and the servers');

    // The long flow: a steady download for the whole soak and a little more.
    const transfer = startTransfer(topology, pod.netns, server.v4, streamPort, {
      seconds: options.seconds + 5,
      bytesPerSecond: 50_000,
    });
    await transfer.receiving;

    const started = performance.now();
    const elapsed = () => (performance.now() - started) / 1000;
    const running = () => elapsed() < options.seconds;
    const shortFlows = { attempts: 0, failures: 0 };
    let configRewrites = 0;

    const churnFlows = async () => {
      while (running()) {
        const answers = await connectMany(topology, pod.netns, server.v4, whoamiPort, 40, {
          concurrency: 10,
          timeoutMs: 3000,
        });
        shortFlows.attempts += 40;
        shortFlows.failures += answers.failures;
      }
    };
    const churnConfig = async () => {
      const path = join(gateway.dir, 'gateway.json');
      while (running()) {
        await sleep(3000);
        const config = JSON.parse(await readFile(path, 'utf8'));
        const { rules, pods } = rulesOf(pod.ip, options.namespace, ++configRewrites);
        config.rules = rules;
        config.pods = [config.pods[0], ...pods];
        config.sources = [pod.ip, ...pods.flatMap((p) => p.addresses)];
        config.hash = `naa-soak-${configRewrites}`;
        await writeFile(path, JSON.stringify(config));
      }
    };
    const samples: Sample[] = [];
    const sample = async () => {
      const nft = JSON.parse(
        (await topology.exec(topology.ns.gw, ['nft', '-j', 'list', 'table', 'inet', 'naat'])).stdout,
      ) as NftJson;
      const status = await gateway.agentGet<AgentReport>('/status');
      const one: Sample = {
        atSeconds: Math.round(elapsed()),
        agentRssMiB: await rssMiB(gateway.agent.pid!),
        sidecarRssMiB: await rssMiB(sidecar.pid!),
        agentFds: await fds(gateway.agent.pid!),
        sidecarFds: await fds(sidecar.pid!),
        chains: nft.nftables.filter((o) => o.chain).length,
        sets: nft.nftables.filter((o) => o.set || o.map).length,
        flowElements: nft.nftables
          .map((o) => o.map ?? o.set)
          .filter((s) => s && /^flows[46]$/.test(s.name))
          .reduce((sum, s) => sum + (s!.elem?.length ?? 0), 0),
        flows: status.flows,
        associations: status.associations,
        attributionRecords: await gateway.metric('naat_attribution_records'),
      };
      samples.push(one);
      say(JSON.stringify(one));
    };
    const sampling = async () => {
      while (running()) {
        await sample();
        await sleep(options.sampleEveryMs ?? 3000);
      }
      await sample();
    };
    await Promise.all([churnFlows(), churnConfig(), sampling()]);
    const longFlow = await transfer.result;
    await gateway.printErrorsLogged(['agent.log', 'sidecar.log']);
    return {
      samples,
      warmupSeconds: options.warmupSeconds,
      shortFlows,
      configRewrites,
      longFlow,
      limits: { flows: 200_000, attributionRecords: 100_000 },
    };
  } finally {
    for (const stop of stops.reverse()) await stop().catch(() => {});
    await gateway.stop();
  }
}

const median = (values: number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
};

/** A sampled quantity over the run: first sample, post-warm-up median, end (median of the last 3), max. */
export interface Trend {
  first: number;
  base: number;
  last: number;
  max: number;
}

export interface Verdict {
  /** What failed, in words; empty when the soak held. */
  problems: string[];
  summary: string;
  trends: Record<SampledKey, Trend>;
}

type SampledKey = Exclude<keyof Sample, 'atSeconds'>;

/**
 * After warm-up: memory within 15 MiB or 20 % (whichever is larger) of its post-warm-up median,
 * file descriptors settled within 3 of it, nft chains and sets no higher in the second half than
 * in the first,
 * tables within their limits, the long flow unbroken and short flows answered.
 */
export function check(result: SoakResult): Verdict {
  const judged = result.samples.filter((s) => s.atSeconds >= result.warmupSeconds);
  const problems: string[] = [];
  if (judged.length < 4) problems.push(`only ${judged.length} samples after warm-up`);
  const half = Math.floor(judged.length / 2);
  const early = judged.slice(0, half);
  const late = judged.slice(half);
  const end = judged.slice(-3);
  const rows: string[] = [];
  const trends = {} as Record<SampledKey, Trend>;
  const figure = (key: SampledKey, unit = '') => {
    const base = median(judged.map((s) => s[key]));
    const last = median(end.map((s) => s[key]));
    const all = result.samples.map((s) => s[key]);
    trends[key] = { first: all[0]!, base, last, max: Math.max(...all) };
    rows.push(
      `${key.padEnd(20)} first ${all[0]!.toFixed(1)}${unit}  post-warm-up median ${base.toFixed(1)}${unit}  end ${last.toFixed(1)}${unit}  max ${Math.max(...all).toFixed(1)}${unit}`,
    );
    return {
      base,
      last,
      earlyMax: Math.max(...early.map((s) => s[key])),
      lateMax: Math.max(...late.map((s) => s[key])),
      floor: Math.min(...end.map((s) => s[key])),
    };
  };
  for (const key of ['agentRssMiB', 'sidecarRssMiB'] as const) {
    const { base, last } = figure(key, ' MiB');
    if (last - base > Math.max(15, base * 0.2))
      problems.push(`${key} grew from ${base.toFixed(1)} to ${last.toFixed(1)} MiB`);
  }
  for (const key of ['agentFds', 'sidecarFds'] as const) {
    // Descriptors come and go with requests in flight (two of the last three samples can catch a
    // burst); a leak never gives them back, so it shows in the lowest of the last samples.
    const { base, floor } = figure(key);
    if (floor > base + 3) problems.push(`${key} settled at ${floor}, up from ${base}`);
  }
  for (const key of ['chains', 'sets'] as const) {
    const { earlyMax, lateMax } = figure(key);
    if (lateMax > earlyMax) problems.push(`${key} rose from at most ${earlyMax} to ${lateMax}`);
  }
  for (const key of ['flowElements', 'flows', 'associations', 'attributionRecords'] as const) figure(key);
  const peak = (key: SampledKey) => Math.max(...result.samples.map((s) => s[key]));
  if (peak('flows') > result.limits.flows) problems.push(`the flow table held ${peak('flows')} flows`);
  if (peak('attributionRecords') > result.limits.attributionRecords) {
    problems.push(`the attribution log held ${peak('attributionRecords')} records`);
  }
  if (peak('associations') > peak('flows') + peak('flowElements')) {
    problems.push(`associations (${peak('associations')}) outgrew the flows they belong to`);
  }
  if (!result.longFlow.ok) {
    problems.push(
      `the long flow broke: ${result.longFlow.bytes} of ${result.longFlow.expected} bytes (${result.longFlow.error})`,
    );
  }
  const { attempts, failures } = result.shortFlows;
  if (failures > attempts * 0.01) problems.push(`${failures} of ${attempts} short flows failed`);
  rows.push(
    `short flows ${attempts} (${failures} failed), config rewrites ${result.configRewrites}, long flow ${result.longFlow.bytes}/${result.longFlow.expected} bytes ${result.longFlow.ok ? 'intact' : 'BROKEN'}`,
  );
  const seconds = result.samples.at(-1)?.atSeconds ?? 0;
  return {
    problems,
    trends,
    summary: `soak of ${seconds}s (warm-up ${result.warmupSeconds}s, ${result.samples.length} samples):\n${rows.join('\n')}`,
  };
}
