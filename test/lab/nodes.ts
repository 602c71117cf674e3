// The lab's nodes beyond the test topology's gateway node (test/e2e/topology.ts): a second gateway
// node with its own uplinks to the same ISPs, a worker node with two pods of its own, and the
// underlay network between the three nodes.
//
//   pod1, pod2 ─ gw (gateway-1) ─ ul ─┐                  ┌─ up1..3 ─ ispN's bridge "gw" (100.64.N.1)
//                                     ├─ underlay bridge ─┤
//   pod3, pod4 ─ w1 (worker-1) ─ ul ─┘ (192.168.0.0/24)  └─ gw2 (gateway-2) ─ up1..3 ─┘
//
// Each ISP's end towards the gateway nodes becomes a bridge named "gw" that holds the next hop
// address, so that both gateway nodes reach it at 100.64.N.1 and the ISP's impairments (made on
// "gw", see Topology.degradeUplink) apply to both. Gateway-2's uplink addresses are 100.64.N.3; the
// worker has no route out at all: only naat's tunnels take its pods' flows anywhere.
import {
  baseSettings,
  deleteNamespace,
  ipBatch,
  linksUp,
  run,
  uplinkInterface,
  uplinkNextHop,
  until,
  type Topology,
} from '../e2e/topology.ts';

export interface LabNode {
  /** The Kubernetes node's name. */
  name: string;
  /** Its InternalIP, on the underlay. */
  address: string;
  gateway: boolean;
}

export const underlay = { subnet: '192.168.0.0/24', length: 24 };
export const gatewayNodes: LabNode[] = [
  { name: 'gateway-1', address: '192.168.0.11', gateway: true },
  { name: 'gateway-2', address: '192.168.0.12', gateway: true },
];
export const workerNodes: LabNode[] = [{ name: 'worker-1', address: '192.168.0.21', gateway: false }];
/** kwok gives worker-1's pods their addresses from here. */
export const workerPodCidr = '10.0.1.0/24';
/** Gateway node g's (1-based) address on uplink n. */
export const gatewayUplinkAddress = (g: number, n: number) => ({
  v4: `100.64.${n}.${g + 1}`,
  v6: `fd00:64:${n}::${g + 1}`,
});
/** The worker's address on the link to its pod k (1-based), the pod's default route. */
export const workerPodGateway = (k: number) => `10.244.${k + 10}.1`;

export function nodeNamespaces(prefix: string) {
  return {
    underlay: `${prefix}ul`,
    gw2: `${prefix}gw2`,
    worker: `${prefix}w1`,
    pods: [`${prefix}pod3`, `${prefix}pod4`],
  };
}

export interface Nodes {
  ns: ReturnType<typeof nodeNamespaces>;
  /** The namespace that stands for each lab node. */
  namespaceOf: Record<string, string>;
  /** Takes a gateway node off the underlay, or puts it back (see setGatewayLink). */
  setGatewayNode(node: string, up: boolean): Promise<void>;
  /** Gives worker pod k (0-based) the address kwok gave its Pod, its only one, and routes it. */
  addressWorkerPod(k: number, address: string): Promise<void>;
  /** Deletes the namespaces, ending whatever runs in them; safe to call twice. */
  destroy(): Promise<void>;
}

/** The namespace that stands for a lab node, or undefined for a name that is none. */
export function namespaceOfNode(prefix: string, node: string): string | undefined {
  const ns = nodeNamespaces(prefix);
  // gateway-1 is the test topology's gateway namespace.
  return { 'gateway-1': `${prefix}gw`, 'gateway-2': ns.gw2, 'worker-1': ns.worker }[node];
}

/**
 * Cuts a gateway node's namespace off the underlay (its link there goes down, so its agent stops
 * answering the node agents' /steering and no tunnel reaches it), or puts it back. Its uplinks
 * stay as they are, so that it comes back with its routes and addresses whole.
 */
export async function setGatewayLink(ns: string, up: boolean): Promise<void> {
  await ipBatch(ns, [`link set ul ${up ? 'up' : 'down'}`]);
  // Only this link: the node's tunnel devices report no carrier state of their own.
  if (up) {
    await until(`${ns}'s underlay link up`, async () => {
      const { stdout } = await run(['ip', '-n', ns, '-j', 'link', 'show', 'ul']);
      return (JSON.parse(stdout) as Array<{ operstate: string }>)[0]?.operstate === 'UP' ? true : undefined;
    });
  }
}

export async function addNodes(topology: Topology): Promise<Nodes> {
  const ns = nodeNamespaces(topology.prefix);
  const uplinks = topology.ns.isps.map((_, i) => i + 1);
  const made: string[] = [];
  const namespaceOf = Object.fromEntries(
    [...gatewayNodes, ...workerNodes].map((node) => [node.name, namespaceOfNode(topology.prefix, node.name)!]),
  );
  const nodes: Nodes = {
    ns,
    namespaceOf,
    setGatewayNode: async (node, up) => {
      const name = namespaceOf[node];
      if (!name || !gatewayNodes.some((g) => g.name === node)) throw new Error(`${node} is not a gateway node`);
      await setGatewayLink(name, up);
    },
    addressWorkerPod: async (k, address) => {
      const pod = ns.pods[k]!;
      await ipBatch(pod, [
        `address add ${address}/32 dev eth0`,
        `route add ${workerPodGateway(k)} dev eth0 scope link`,
        `route add default via ${workerPodGateway(k)} dev eth0 onlink`,
      ]);
      await ipBatch(ns.worker, [`route add ${address}/32 dev pod${k + 3}`]);
    },
    destroy: async () => {
      await Promise.all(made.splice(0).map(deleteNamespace));
    },
  };
  try {
    const all = [ns.underlay, ns.gw2, ns.worker, ...ns.pods];
    for (const name of all) {
      await run(['ip', 'netns', 'add', name]);
      made.push(name);
    }
    await Promise.all(all.map((name) => baseSettings(name, name !== ns.underlay && !ns.pods.includes(name))));
    // Each ISP's veth towards gateway-1 becomes a port of a bridge that takes over its name and address.
    await Promise.all(
      topology.ns.isps.map((isp, i) => {
        const hop = uplinkNextHop(i + 1);
        // The addresses go first: taking the link down would flush its IPv6 address.
        return ipBatch(isp, [
          `address del ${hop.v4}/24 dev gw`,
          `address del ${hop.v6}/64 dev gw`,
          'link set gw down',
          'link set gw name gw1',
          'link add gw type bridge',
          `address add ${hop.v4}/24 dev gw`,
          `address add ${hop.v6}/64 dev gw`,
          'link set gw1 master gw up',
          'link set gw up',
        ]);
      }),
    );
    await ipBatch(ns.gw2, [
      ...uplinks.map((n) => `link add ${uplinkInterface(n)} type veth peer name gw2 netns ${topology.ns.isps[n - 1]}`),
      ...uplinks.flatMap((n) => [
        `address add ${gatewayUplinkAddress(2, n).v4}/24 dev ${uplinkInterface(n)}`,
        `address add ${gatewayUplinkAddress(2, n).v6}/64 dev ${uplinkInterface(n)}`,
        `link set ${uplinkInterface(n)} up`,
      ]),
    ]);
    await Promise.all(topology.ns.isps.map((isp) => ipBatch(isp, ['link set gw2 master gw up'])));
    const underlayPorts: Array<[string, LabNode]> = [
      [topology.ns.gw, gatewayNodes[0]!],
      [ns.gw2, gatewayNodes[1]!],
      [ns.worker, workerNodes[0]!],
    ];
    await ipBatch(ns.underlay, [
      'link add br0 type bridge',
      'link set br0 up',
      ...underlayPorts.map(([name, node]) => `link add ${node.name} type veth peer name ul netns ${name}`),
      ...underlayPorts.map(([, node]) => `link set ${node.name} master br0 up`),
    ]);
    await Promise.all(
      underlayPorts.map(([name, node]) =>
        ipBatch(name, [`address add ${node.address}/${underlay.length} dev ul`, 'link set ul up']),
      ),
    );
    await ipBatch(ns.worker, [
      ...ns.pods.map((pod, k) => `link add pod${k + 3} type veth peer name eth0 netns ${pod}`),
      ...ns.pods.flatMap((_, k) => [
        `address add ${workerPodGateway(k)}/24 dev pod${k + 3}`,
        `link set pod${k + 3} up`,
      ]),
    ]);
    await Promise.all(ns.pods.map((pod) => ipBatch(pod, ['link set eth0 up'])));
    await Promise.all([...all, ...topology.ns.isps, topology.ns.gw].map(linksUp));
    return nodes;
  } catch (error) {
    await nodes.destroy();
    throw error;
  }
}
