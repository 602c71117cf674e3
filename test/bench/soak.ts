// The soak (`npm run soak`, as root; --quick, --smoke, --json: test/bench/harness.ts): churn of
// short flows and of the gateway's rules and pods with a long flow alongside, against the real
// agent and sidecar in network namespaces and a control plane of its own (test/e2e/soak.ts). The
// full form lasts SOAK_MINUTES (20 by default), the quick one a minute (as the CI test), the smoke
// one 16 s. Prints a sample line every few seconds and the figures at the end: each sampled
// quantity at the end against its post-warm-up median. Fails if memory, descriptors or nft
// objects grew after warm-up, a table passed its limit or the long flow broke.
import { startCluster } from '../cluster/cluster.ts';
import { check, runSoak, type SoakOptions } from '../e2e/soak.ts';
import { runBenchmark } from './harness.ts';

type Size = Pick<SoakOptions, 'seconds' | 'warmupSeconds' | 'attributionRecords' | 'agentHeapMiB' | 'sampleEveryMs'>;

const minutes = Number(process.env.SOAK_MINUTES ?? 20);
if (!(minutes > 0)) throw new Error('SOAK_MINUTES takes a number of minutes above 0');
const seconds = Math.round(minutes * 60);
const node = 'gateway-a';

// The short forms fill a small attribution log during warm-up, with the heap bound above the live
// set, so that garbage is collected rather than deferred (as test/e2e/soak.test.ts does).
const short = { attributionRecords: 5_000, agentHeapMiB: 64 };

await runBenchmark<Size>({
  name: 'soak',
  sizes: {
    full: {
      seconds,
      // A fifth of the run, at least 20 s: caches, JIT and the attribution log fill up first.
      warmupSeconds: Math.max(20, Math.round(seconds / 5)),
      // The default attribution log (100,000 records, ~60 MiB) and the rest of the live set fit.
      agentHeapMiB: 192,
      sampleEveryMs: seconds > 300 ? 10_000 : 3000,
    },
    quick: { seconds: 60, warmupSeconds: 20, sampleEveryMs: 3000, ...short },
    smoke: { seconds: 16, warmupSeconds: 6, sampleEveryMs: 1500, ...short },
  },
  async run(bench, size) {
    const cluster = await startCluster({
      workloads: true,
      nodes: [{ name: node }],
      progress: (line) => console.error(line),
    });
    try {
      const result = await runSoak({
        kubeconfig: cluster.kubeconfig,
        namespace: 'soak',
        node,
        ...size,
        log: (line) => console.error(line),
      });
      const verdict = check(result);
      console.log(verdict.summary);
      bench.section(`soak of ${size.seconds} s, judged after ${size.warmupSeconds} s of warm-up:`);
      const trend = (
        key: string,
        label: string,
        unit: string,
        { base, last, max }: { base: number; last: number; max: number },
      ) => {
        bench.figure({ key: `${key}.warm`, label: `${label}, post-warm-up median (baseline)`, value: base, unit });
        bench.figure({
          key: `${key}.end`,
          label: `${label}, at the end`,
          value: last,
          unit,
          baseline: `${key}.warm`,
          note: `max ${max.toFixed(1)} ${unit}`,
        });
      };
      trend('agent-rss', 'agent RSS', 'MiB', verdict.trends.agentRssMiB);
      trend('sidecar-rss', 'sidecar RSS', 'MiB', verdict.trends.sidecarRssMiB);
      trend('agent-fds', 'agent file descriptors', 'fds', verdict.trends.agentFds);
      trend('sidecar-fds', 'sidecar file descriptors', 'fds', verdict.trends.sidecarFds);
      trend('chains', 'nft chains', 'chains', verdict.trends.chains);
      trend('sets', 'nft sets and maps', 'sets', verdict.trends.sets);
      const { attempts, failures } = result.shortFlows;
      bench.figure({ key: 'short-flows', label: 'short flows', value: attempts, unit: 'flows', digits: 0 });
      bench.figure({
        key: 'short-flows.failed',
        label: 'of which failed',
        value: failures,
        unit: 'flows',
        digits: 0,
        note: `(at most 1 % may)`,
      });
      bench.figure({
        key: 'config-rewrites',
        label: 'config rewrites',
        value: result.configRewrites,
        unit: 'rewrites',
        digits: 0,
      });
      bench.figure({
        key: 'long-flow.expected',
        label: 'long flow, bytes sent (baseline)',
        value: result.longFlow.expected,
        unit: 'B',
        digits: 0,
      });
      bench.figure({
        key: 'long-flow.received',
        label: 'long flow, bytes received',
        value: result.longFlow.bytes,
        unit: 'B',
        digits: 0,
        baseline: 'long-flow.expected',
      });
      if (verdict.problems.length) throw new Error(`the soak did not hold: ${verdict.problems.join('; ')}`);
    } finally {
      await cluster.stop();
    }
  },
});
