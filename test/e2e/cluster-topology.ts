// A small cluster in network namespaces, for cluster-wide egress:
//
//   pod1 ─ w1 ─┐                        ┌─ up1 ─ isp1 ─┐
//   pod2 ─ w2 ─┼─ underlay bridge (ul) ─┼─ g1           ├─ srv (203.0.113.10, 2001:db8:113::10)
//   pod3 ─ w3 ─┘     │                  └─ g2 ─ up1/up2 ┘
//                    └─ router ─────────────────────────┘
//
// Worker nodes w1–w3 run one pod each and a toy CNI of the test's own: per-node pod subnets
// routed between nodes over the underlay, and a masquerade of everything else the pods send
// (iptables-legacy on w1, iptables-nft on w2, nftables on w3), which would take it out through
// the underlay's router to the server with the node's address. Gateway nodes g1 and g2 each
// have an uplink to both ISPs and no default route. Every node filters reverse paths strictly
// and drops conntrack-INVALID packets in forward, as kube-proxy does. The server counts packets
// from pod and node addresses, so that tests can assert it never saw one.
//
// With `sharedUplinks`, each ISP i is one L2 segment instead (a bridge `lan` in its namespace) that
// both gateway nodes' up<i> join: the ISP at 100.64.<i>.1 / fd00:64:<i>::1, gateway node g at
// 100.64.<i>.1<g> / fd00:64:<i>::1<g>, and failover addresses 100.64.<i>.100–103 /
// fd00:64:<i>::100–103 on the same link, which the ISP reaches wherever they are claimed.
//
// What runs in a namespace runs in a CPU group of its own (test/cluster/cpu-groups.ts), as on a
// machine of its own.
import { server, type DualStack } from './topology.ts';
import {
  countedPackets,
  deleteNamespace,
  inNamespace,
  ipBatch,
  linksUp,
  run,
  stopProcess,
  unusedPrefix,
  until,
  type ExecOptions,
} from './topology.ts';
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { KeyPair } from '../../operator/certificates.ts';
import { writeTlsDir } from '../tls.ts';
import { inCpuGroup, removeCpuGroup } from '../cluster/cpu-groups.ts';

export const workers = [1, 2, 3] as const;
export const gateways = [1, 2] as const;
export const isps = [1, 2] as const;
export type Masquerade = 'iptables-legacy' | 'iptables-nft' | 'nftables';
/** Which form of the CNI's masquerade each worker has. */
export const masqueradeOf: Record<number, Masquerade> = { 1: 'iptables-legacy', 2: 'iptables-nft', 3: 'nftables' };

export const podNetwork: DualStack = { v4: '10.244.0.0/16', v6: 'fd00:244::/32' };
export const nodeNetwork: DualStack = { v4: '192.168.0.0/24', v6: 'fd00:192::/64' };
export const podAddress = (w: number): DualStack => ({ v4: `10.244.${w}.2`, v6: `fd00:244:${w}::2` });
export const podSubnet = (w: number): DualStack => ({ v4: `10.244.${w}.0/24`, v6: `fd00:244:${w}::/64` });
const podGateway = (w: number): DualStack => ({ v4: `10.244.${w}.1`, v6: `fd00:244:${w}::1` });
export const workerAddress = (w: number): DualStack => ({ v4: `192.168.0.2${w}`, v6: `fd00:192::2${w}` });
export const gatewayAddress = (g: number): DualStack => ({ v4: `192.168.0.1${g}`, v6: `fd00:192::1${g}` });
const router: DualStack = { v4: '192.168.0.1', v6: 'fd00:192::1' };
/** A host on the underlay that is no node of the cluster (addForeignHost). */
export const foreignAddress: DualStack = { v4: '192.168.0.99', v6: 'fd00:192::99' };
/** Gateway node g's address on its uplink to ISP i, and the ISP's (its next hop). */
export const uplinkAddress = (g: number, i: number): DualStack => ({
  v4: `100.64.${g}${i}.2`,
  v6: `fd00:64:${g}${i}::2`,
});
export const uplinkNextHop = (g: number, i: number): DualStack => ({
  v4: `100.64.${g}${i}.1`,
  v6: `fd00:64:${g}${i}::1`,
});

/**
 * Gateway node g's uplinks as a gateway config lists them (`g<g>-isp<i>`, dual-stack), each
 * health-checked with TCP connections to the server's IPv4 address at `healthPort`.
 */
export const gatewayUplinks = (g: number, healthPort: number) =>
  isps.map((i) => ({
    name: `g${g}-isp${i}`,
    nodes: [`g${g}`],
    interface: `up${i}`,
    nextHop: { ipv4: uplinkNextHop(g, i).v4, ipv6: uplinkNextHop(g, i).v6 },
    snat: { addresses: [uplinkAddress(g, i).v4, uplinkAddress(g, i).v6] },
    healthCheck: {
      targets: [server.v4],
      protocol: 'TCP',
      port: healthPort,
      intervalMs: 200,
      timeoutMs: 150,
      failureThreshold: 2,
      successThreshold: 1,
    },
  }));

/** Gateway node g's address on the segment of ISP i (sharedUplinks). */
export const sharedUplinkAddress = (g: number, i: number): DualStack => ({
  v4: `100.64.${i}.1${g}`,
  v6: `fd00:64:${i}::1${g}`,
});
/** ISP i's address on its segment, every gateway node's next hop there (sharedUplinks). */
export const sharedNextHop = (i: number): DualStack => ({ v4: `100.64.${i}.1`, v6: `fd00:64:${i}::1` });
/** Failover address n (0–3) on the segment of ISP i (sharedUplinks). */
export const failoverAddress = (i: number, n: number): DualStack => ({
  v4: `100.64.${i}.${100 + n}`,
  v6: `fd00:64:${i}::${100 + n}`,
});

/**
 * The uplinks of the shared segments as a gateway config lists them (`isp<i>`, dual-stack, on every
 * gateway node): each node masquerades to its own address there.
 */
export const sharedUplinks = () =>
  isps.map((i) => ({
    name: `isp${i}`,
    interface: `up${i}`,
    nextHop: { ipv4: sharedNextHop(i).v4, ipv6: sharedNextHop(i).v6 },
    snat: {},
  }));

export interface ClusterOptions {
  /** One L2 segment per ISP that every gateway node joins, instead of a link per node and ISP. */
  sharedUplinks?: boolean;
}

export interface Cluster {
  prefix: string;
  ns: { workers: string[]; pods: string[]; gateways: string[]; isps: string[]; srv: string; underlay: string };
  worker(w: number): string;
  pod(w: number): string;
  gateway(g: number): string;
  exec(ns: string, argv: string[], options?: ExecOptions): Promise<{ stdout: string; stderr: string }>;
  spawn(ns: string, argv: string[], options?: SpawnOptions): ChildProcess;
  /** Takes gateway node g off the underlay (its link there goes down), or puts it back. */
  setGatewayLink(g: number, up: boolean): Promise<void>;
  /** Packets the server saw from a pod or node address. */
  serverPacketsFromInside(): Promise<number>;
  /**
   * Puts a host that is no node on the underlay, at foreignAddress, routed through the underlay's
   * router; resolves with its namespace. It goes with the cluster.
   */
  addForeignHost(): Promise<string>;
  destroy(): Promise<void>;
}

/**
 * Writes each node's --tls-dir under `dir` (`tls-<node>`), from `ca`, with the certificate a node
 * gets in a cluster: its name (or the one `names` gives it: the Node its pods report in the
 * control plane) and its underlay addresses as IP SANs; returns where each node's is.
 */
export function writeClusterTls(
  dir: string,
  ca: KeyPair,
  names: Partial<Record<string, string>> = {},
): (node: string) => string {
  const nodes: Array<[string, DualStack]> = [
    ...workers.map((w) => [`w${w}`, workerAddress(w)] as [string, DualStack]),
    ...gateways.map((g) => [`g${g}`, gatewayAddress(g)] as [string, DualStack]),
  ];
  for (const [node, address] of nodes) {
    writeTlsDir(join(dir, `tls-${node}`), ca, names[node] ?? node, [address.v4, address.v6]);
  }
  return (node) => join(dir, `tls-${node}`);
}

/** Prints what each node's agent logged above info (its log is `<node>.log` under `dir`), 20 lines at most each. */
export async function printAgentErrors(dir: string, nodes: readonly string[]): Promise<void> {
  for (const name of nodes) {
    const log = await readFile(join(dir, `${name}.log`), 'utf8').catch(() => '');
    const errors = log.split('\n').filter((line) => line && !line.includes('"level":"info"'));
    if (errors.length) console.log(`${name} logged errors:\n${errors.slice(0, 20).join('\n')}`);
  }
}

export async function createCluster(options: ClusterOptions = {}): Promise<Cluster> {
  const shared = options.sharedUplinks ?? false;
  const prefix = await unusedPrefix();
  const ns = {
    workers: workers.map((w) => `${prefix}w${w}`),
    pods: workers.map((w) => `${prefix}pod${w}`),
    gateways: gateways.map((g) => `${prefix}g${g}`),
    isps: isps.map((i) => `${prefix}isp${i}`),
    srv: `${prefix}srv`,
    underlay: `${prefix}ul`,
  };
  const worker = (w: number) => ns.workers[w - 1]!;
  const pod = (w: number) => ns.pods[w - 1]!;
  const gateway = (g: number) => ns.gateways[g - 1]!;
  const isp = (i: number) => ns.isps[i - 1]!;
  const all = [ns.underlay, ...ns.workers, ...ns.pods, ...ns.gateways, ...ns.isps, ns.srv];
  const nodes = [...ns.workers, ...ns.gateways];
  const children: ChildProcess[] = [];
  const made: string[] = [];
  const cluster: Cluster = {
    prefix,
    ns,
    worker,
    pod,
    gateway,
    exec: (name, argv, options) => inNamespace(name, argv, options),
    spawn: (name, argv, options = {}) => {
      const [command, ...args] = inCpuGroup(name, ['ip', 'netns', 'exec', name, ...argv]);
      const child = spawn(command!, args, options);
      children.push(child);
      return child;
    },
    setGatewayLink: async (g, up) => {
      await run(['ip', '-n', ns.underlay, 'link', 'set', `g${g}`, up ? 'up' : 'down']);
      await run(['ip', '-n', gateway(g), 'link', 'set', 'eth0', up ? 'up' : 'down']);
      if (up)
        await until(`g${g}'s underlay link`, async () =>
          (await linkState(gateway(g), 'eth0')) === 'UP' ? true : undefined,
        );
    },
    serverPacketsFromInside: () => countedPackets(ns.srv),
    addForeignHost: async () => {
      const name = `${prefix}fh`;
      await run(['ip', 'netns', 'add', name]);
      made.push(name);
      await settings(name, false);
      await ipBatch(ns.underlay, [`link add fh type veth peer name eth0 netns ${name}`, 'link set fh master br0 up']);
      await ipBatch(name, addresses('eth0', foreignAddress, 24));
      await linksUp(name);
      await ipBatch(name, routes({ v4: 'default', v6: 'default' }, router));
      return name;
    },
    destroy: async () => {
      await Promise.all(children.splice(0).map(stopProcess));
      // Deleting a namespace ends what its agents left running; then the groups are empty.
      const names = made.splice(0);
      await Promise.all(names.map(deleteNamespace));
      await Promise.all(names.map(removeCpuGroup));
    },
  };
  try {
    for (const name of all) {
      await run(['ip', 'netns', 'add', name]);
      made.push(name);
    }
    await Promise.all(all.map((name) => settings(name, !ns.pods.includes(name) && name !== ns.srv)));
    await ipBatch(ns.underlay, [
      'link add br0 type bridge',
      'link set br0 up',
      ...workers.map((w) => `link add w${w} type veth peer name eth0 netns ${worker(w)}`),
      ...gateways.map((g) => `link add g${g} type veth peer name eth0 netns ${gateway(g)}`),
      ...workers.map((w) => `link set w${w} master br0 up`),
      ...gateways.map((g) => `link set g${g} master br0 up`),
      `link add srv type veth peer name ul netns ${ns.srv}`,
      ...addresses('br0', router, 24),
      ...addresses('srv', { v4: '198.19.0.1', v6: 'fd00:198:19::1' }, 24),
    ]);
    for (const w of workers) {
      await ipBatch(worker(w), [
        `link add pod type veth peer name eth0 netns ${pod(w)}`,
        ...addresses('eth0', workerAddress(w), 24),
        ...addresses('pod', podGateway(w), 24),
      ]);
      await ipBatch(pod(w), addresses('eth0', podAddress(w), 24));
    }
    if (shared) {
      for (const i of isps)
        await ipBatch(isp(i), ['link add lan type bridge', ...addresses('lan', sharedNextHop(i), 24)]);
    }
    for (const g of gateways) {
      await ipBatch(gateway(g), [
        ...isps.map((i) => `link add up${i} type veth peer name g${g} netns ${isp(i)}`),
        ...addresses('eth0', gatewayAddress(g), 24),
        ...isps.flatMap((i) => addresses(`up${i}`, shared ? sharedUplinkAddress(g, i) : uplinkAddress(g, i), 24)),
      ]);
      for (const i of isps) {
        await ipBatch(isp(i), shared ? [`link set g${g} master lan up`] : addresses(`g${g}`, uplinkNextHop(g, i), 24));
      }
    }
    for (const i of isps) {
      await ipBatch(ns.srv, [
        `link add isp${i} type veth peer name srv netns ${isp(i)}`,
        ...addresses(`isp${i}`, { v4: `198.18.${i}.2`, v6: `fd00:198:${i}::2` }, 24),
      ]);
      await ipBatch(isp(i), addresses('srv', { v4: `198.18.${i}.1`, v6: `fd00:198:${i}::1` }, 24));
    }
    await ipBatch(ns.srv, [
      ...addresses('ul', { v4: '198.19.0.2', v6: 'fd00:198:19::2' }, 24),
      `address add ${server.v4}/32 dev lo`,
      `address add ${server.v6}/128 dev lo`,
    ]);
    // Routes once every link is up with its addresses.
    await Promise.all(all.map(linksUp));
    await Promise.all([
      ...workers.map((w) => ipBatch(pod(w), routes({ v4: 'default', v6: 'default' }, podGateway(w)))),
      // The toy CNI: each node reaches the other workers' pods over the underlay.
      ...[...workers.map((w) => [worker(w), w] as const), ...gateways.map((g) => [gateway(g), 0] as const)].map(
        ([name, self]) =>
          ipBatch(name, [
            ...workers.filter((w) => w !== self).flatMap((w) => routes(podSubnet(w), workerAddress(w))),
            // Workers reach the world through the underlay's router; gateway nodes only through
            // the dataplane's uplink tables.
            ...(self ? routes({ v4: 'default', v6: 'default' }, router) : []),
          ]),
      ),
      ...isps.map((i) => ipBatch(isp(i), routes(server, { v4: `198.18.${i}.2`, v6: `fd00:198:${i}::2` }))),
      ipBatch(ns.underlay, routes(server, { v4: '198.19.0.2', v6: 'fd00:198:19::2' })),
      ipBatch(ns.srv, [
        ...routes(nodeNetwork, { v4: '198.19.0.1', v6: 'fd00:198:19::1' }),
        ...isps.flatMap((i) =>
          (shared ? [''] : gateways.map(String)).flatMap((g) =>
            routes(
              { v4: `100.64.${g}${i}.0/24`, v6: `fd00:64:${g}${i}::/64` },
              { v4: `198.18.${i}.1`, v6: `fd00:198:${i}::1` },
            ),
          ),
        ),
      ]),
      inNamespace(ns.srv, ['nft', '-f', '-'], { input: countRules }),
      ...nodes.map((name) => inNamespace(name, ['nft', '-f', '-'], { input: kubeProxyRules })),
      ...workers.map((w) => masquerade(worker(w), masqueradeOf[w]!)),
    ]);
    return cluster;
  } catch (error) {
    await cluster.destroy();
    throw error;
  }
}

async function linkState(ns: string, device: string): Promise<string | undefined> {
  const { stdout } = await run(['ip', '-n', ns, '-j', 'link', 'show', 'dev', device]);
  return (JSON.parse(stdout) as Array<{ operstate: string }>)[0]?.operstate;
}

/** The toy CNI's masquerade of what pods send outside the pod network, in one of three forms. */
async function masquerade(name: string, form: Masquerade): Promise<void> {
  if (form === 'nftables') {
    await inNamespace(name, ['nft', '-f', '-'], {
      input: `table inet cni {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    ip saddr ${podNetwork.v4} ip daddr != ${podNetwork.v4} masquerade
    ip6 saddr ${podNetwork.v6} ip6 daddr != ${podNetwork.v6} masquerade
  }
}
`,
    });
    return;
  }
  const [v4, v6] =
    form === 'iptables-legacy' ? ['iptables-legacy', 'ip6tables-legacy'] : ['iptables-nft', 'ip6tables-nft'];
  for (const [tool, net] of [
    [v4, podNetwork.v4],
    [v6, podNetwork.v6],
  ] as const) {
    await inNamespace(name, [tool, '-t', 'nat', '-A', 'POSTROUTING', '-s', net, '!', '-d', net, '-j', 'MASQUERADE']);
  }
}

// What kube-proxy does on every node: packets conntrack finds INVALID are dropped in forward.
const kubeProxyRules = `table inet kube-proxy-like {
  chain forward {
    type filter hook forward priority filter;
    ct state invalid counter drop
  }
}
`;

const countRules = `table inet count {
  counter from-pods-v4 {}
  counter from-pods-v6 {}
  counter from-nodes-v4 {}
  counter from-nodes-v6 {}
  chain prerouting {
    type filter hook prerouting priority raw - 100;
    ip saddr ${podNetwork.v4} counter name from-pods-v4
    ip6 saddr ${podNetwork.v6} counter name from-pods-v6
    ip saddr ${nodeNetwork.v4} counter name from-nodes-v4
    ip6 saddr ${nodeNetwork.v6} counter name from-nodes-v6
  }
}
`;

// Strict reverse-path filtering everywhere; set before any interface exists, so each inherits it.
async function settings(name: string, forwards: boolean): Promise<void> {
  await run(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
  await inNamespace(name, [
    'sysctl',
    '-q',
    '-w',
    'net.ipv6.conf.all.accept_dad=0',
    'net.ipv6.conf.default.accept_dad=0',
    'net.ipv4.conf.all.rp_filter=1',
    'net.ipv4.conf.default.rp_filter=1',
    `net.ipv4.ip_forward=${forwards ? 1 : 0}`,
    `net.ipv6.conf.all.forwarding=${forwards ? 1 : 0}`,
  ]);
}

function addresses(device: string, address: DualStack, length: number): string[] {
  return [
    `address add ${address.v4}/${length} dev ${device}`,
    `address add ${address.v6}/${length === 24 ? 64 : length} dev ${device}`,
    `link set ${device} up`,
  ];
}

function routes(destination: DualStack, via: DualStack): string[] {
  return [`route add ${destination.v4} via ${via.v4}`, `route add ${destination.v6} via ${via.v6}`];
}
