// The soak (`npm run soak`; SOAK_MINUTES, 20 by default): churn of short flows and of the gateway's
// rules and pods with a long flow alongside, against the real agent and sidecar in network
// namespaces and a control plane of its own (test/e2e/soak.ts). Prints a sample line every few
// seconds and the summary at the end; exits 1 if memory, descriptors or nft objects grew after
// warm-up, a table passed its limit or the long flow broke. Needs root.
import { startCluster } from '../cluster/cluster.ts';
import { check, runSoak } from '../e2e/soak.ts';

const minutes = Number(process.env.SOAK_MINUTES ?? 20);
if (!(minutes > 0)) throw new Error('SOAK_MINUTES takes a number of minutes above 0');
const node = 'gateway-a';
const cluster = await startCluster({
  workloads: true,
  nodes: [{ name: node }],
  progress: (line) => console.error(line),
});
try {
  const seconds = Math.round(minutes * 60);
  const result = await runSoak({
    kubeconfig: cluster.kubeconfig,
    namespace: 'soak',
    node,
    seconds,
    // A fifth of the run, at least 20 s: caches, JIT and the attribution log fill up first.
    warmupSeconds: Math.max(20, Math.round(seconds / 5)),
    // The default attribution log (100,000 records, ~60 MiB) and the rest of the live set fit.
    agentHeapMiB: 192,
    sampleEveryMs: seconds > 300 ? 10_000 : 3000,
    log: (line) => console.error(line),
  });
  const verdict = check(result);
  console.log(verdict.summary);
  if (verdict.problems.length) {
    console.log(`FAILED: ${verdict.problems.join('; ')}`);
    process.exitCode = 1;
  }
} finally {
  await cluster.stop();
}
