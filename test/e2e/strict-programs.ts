// The programs and rules of the Strict-mode end-to-end tests (with the sidecar, strict.test.ts, and
// with the Node driver, strict-node.test.ts): curl and python3 each sent through an uplink of
// their own, and python3 denied one port, which an unclassified flow would pass under PodRules.
import { NaaGateway, type NaaGatewayOptions } from './naa-harness.ts';
import { server } from './topology.ts';

export const strictPorts = { curl: 8080, python: 8082, denied: 8081, unstamped: 8083 };

/**
 * The gateway of a strict pod in `namespace`, with two uplinks, under PodRules, with these rules
 * (matching `containerName` too when given) and `more` options.
 */
export function strictGateway(namespace: string, containerName?: string, more: Partial<NaaGatewayOptions> = {}) {
  return new NaaGateway({
    kubeconfig: process.env.KUBECONFIG!,
    namespace,
    node: 'gateway-a',
    uplinks: 2,
    unassociatedFlows: 'PodRules',
    strict: true,
    rules: (podIp) => strictRules(namespace, podIp, containerName),
    ...more,
  });
}

/** The gateway's rules for the pod at `podIp`; with `containerName`, each matches that container too. */
export function strictRules(namespace: string, podIp: string, containerName?: string): object[] {
  const app = (processName: string) => ({ processName, ...(containerName ? { containerName } : {}) });
  return [
    {
      policy: `${namespace}/apps`,
      rule: 'python-not-8081',
      priority: 1,
      sources: [podIp],
      applications: [app('python3')],
      destinations: [{ cidr: `${server.v4}/32`, protocol: 'TCP', ports: [{ port: strictPorts.denied }] }],
      action: 'Deny',
    },
    {
      policy: `${namespace}/apps`,
      rule: 'curl-via-isp1',
      priority: 2,
      sources: [podIp],
      applications: [app('curl')],
      action: 'Allow',
      uplinks: { allowed: ['isp1'] },
    },
    {
      policy: `${namespace}/apps`,
      rule: 'python-via-isp2',
      priority: 3,
      sources: [podIp],
      applications: [app('python3')],
      action: 'Allow',
      uplinks: { allowed: ['isp2'] },
    },
  ];
}

/** Shell: `count` curl processes, eight at a time, each one connection; prints x for each that failed. */
export const curlConnects = (count: number) =>
  `for i in $(seq ${count}); do (curl -s -m 4 -o /dev/null telnet://${server.v4}:${strictPorts.curl} </dev/null || echo x) & ` +
  `[ $((i % 8)) -eq 0 ] && wait; done; wait`;

/** Python: `count` sequential connections, each closed once the server answered; prints connect() times (ms). */
export const pythonConnects = (port: number, count: number) => `python3 - <<'EOF'
import socket, time
times = []
for _ in range(${count}):
    started = time.perf_counter()
    s = socket.create_connection(('${server.v4}', ${port}), timeout=4)
    times.append((time.perf_counter() - started) * 1000)
    s.recv(100)
    s.close()
print(' '.join('%.3f' % t for t in times))
EOF`;

/** Python: `count` connections to the denied port at once; prints how many connected or were refused by the server. */
export const deniedConnects = (count: number) => `python3 - <<'EOF'
import socket, select, time
socks = []
for _ in range(${count}):
    s = socket.socket(); s.setblocking(False)
    s.connect_ex(('${server.v4}', ${strictPorts.denied})); socks.append(s)
time.sleep(1.5)
_, writable, _ = select.select([], socks, [], 0)
print(sum(1 for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) in (0, 111)))
EOF`;

/** What a strict run observed: each program's new flows per uplink, and the gateway's strict counters. */
export interface StrictOutcome {
  curlFailures: string;
  curlFlows: number[];
  pythonFlows: number[];
  deniedFlows: number[];
  /** What `deniedConnects` printed. */
  denied: string;
  counters: { newFlows: number; stamped: number };
}

/**
 * `connections` of each program each left through its application's uplink, none of the denied
 * SYNs got through, and every new-flow packet of the pod arrived stamped (the denied SYNs and
 * their retries included).
 */
export function expectClassified(outcome: StrictOutcome, connections: number): void {
  expect(outcome.curlFailures).toBe('');
  expect(outcome.curlFlows).toEqual([connections, 0]);
  expect(outcome.pythonFlows).toEqual([0, connections]);
  expect(outcome.deniedFlows).toEqual([0, 0]);
  expect(Number(outcome.denied.trim())).toBe(0);
  expect(outcome.counters.newFlows).toBeGreaterThanOrEqual(3 * connections);
  expect(outcome.counters.stamped).toBe(outcome.counters.newFlows);
}
