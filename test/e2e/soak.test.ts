// The soak's short form for CI (test/e2e/soak.ts; `npm run soak` runs it for 20 minutes): a
// minute of churn of short flows and of the gateway's rules and pods, with a long flow alongside,
// against the real agent and sidecar. Memory, descriptors and nft objects stay flat after
// warm-up, the tables stay within their limits and the long flow never breaks.
import { check, runSoak } from './soak.ts';

test('a minute of churn leaves memory, descriptors and nft objects flat and the long flow intact', async () => {
  const result = await runSoak({
    kubeconfig: process.env.KUBECONFIG!,
    namespace: `soak-${process.pid}`,
    // A gateway node of the test cluster (test/integration/global-setup.ts).
    node: 'gateway-a',
    seconds: 60,
    warmupSeconds: 20,
    // ~400 short flows a second fill it within the warm-up, and the heap bound sits above the
    // live set so that garbage is collected rather than deferred.
    attributionRecords: 5_000,
    agentHeapMiB: 64,
  });
  const verdict = check(result);
  console.log(verdict.summary);
  expect(verdict.problems).toEqual([]);
}, 90_000);
