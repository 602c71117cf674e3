// Gateway-node failover in the multi-node topology with shared uplink segments
// (cluster-topology.ts, sharedUplinks): gateway agents on g1 and g2 run as their DaemonSet runs
// them, reading their config from a ConfigMap of the real control plane and holding their failover
// Leases there (the apiserver is relayed into each gateway node's namespace); the node agent on w1
// steers its pod, whose egress addresses are the gateway's failover addresses. The faults are the
// ones a gateway node meets: power off (links down, every process in the node SIGKILLed), its agent
// SIGKILLed, its uplink down, a silent blackhole upstream, cut off from the other gateway node and
// the control plane, drained. With `applications`, the pod is a real Pod of the control plane with
// its sidecar in strict mode, relayed by the node agent to both gateway nodes, and the gateway has
// per-application rules. Used by the failover tests and `npm run bench:failover`.
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { V1Lease } from '@kubernetes/client-node';
import { kubectl } from '../cluster/cluster.ts';
import { terminate } from '../cluster/processes.ts';
import { failoverAnnotations, failoverLeaseName } from '../../contracts/gateway/index.ts';
import type { KeyPair } from '../../operator/certificates.ts';
import { makeTestCa } from '../tls.ts';
import { failoverFigures, type FailoverFigures, type ProbeOutput } from '../bench/failover-figures.ts';
import {
  createCluster,
  gatewayAddress,
  gateways,
  nodeNetwork,
  sharedNextHop,
  podAddress,
  podNetwork,
  failoverAddress,
  sharedUplinks,
  workerAddress,
  writeClusterTls,
  type Cluster,
} from './cluster-topology.ts';
import { LoggedProcesses } from './logged-processes.ts';
import {
  apiserverOf,
  buildStampLibrary,
  createBoundPod,
  relayIntoNamespace,
  sidecarEnv,
  sidecarMain,
} from './naa-pod.ts';
import { ipBatch, namespacePids, run, server, signalAll, until, type DualStack } from './topology.ts';
import { startStreamServer, startTransfer, startWhoami, type Server, type TransferResult } from './traffic.ts';

const main = join(import.meta.dirname, '..', '..', 'dataplane', 'main.ts');
const programs = join(import.meta.dirname, 'programs');
const whoamiPort = 9000;
const streamPort = 9100;
const healthPort = 7745;
const tunnel = { vni: 7730, port: 4792 };
const associationPort = 7740;
/** The steered pod, on worker 1; with `applications` a Pod of that name in the cluster's namespace, on the Node worker-a. */
const podName = 'web';
const gatewayName = 'ha';
/** The failover addresses: on ISP 1's segment, which both gateway nodes' up1 join. */
export const floating: DualStack = failoverAddress(1, 0);
const both = (a: DualStack) => [a.v4, a.v6];

export type Fault = 'power-off' | 'agent-kill' | 'uplink-down' | 'blackhole' | 'isolated' | 'partition' | 'drain';

/** Faults after which the address stays where it is: the two gateway nodes cannot hear each other, but both still reach the control plane. */
const staying: ReadonlySet<Fault> = new Set(['partition']);

export interface FailoverClusterOptions {
  leaseDurationMs: number;
  /**
   * The gateway's policy rules for the pod; with them the pod runs its sidecar in strict mode
   * (programs started with `preloaded` stamp their flows), unassociated flows are held, and the
   * gateway has ISP 2 as well, for rules that route an application there.
   */
  applications?: { rules: unknown[] };
}

/** What a pod saw across one fault, and which node owned the addresses before and after. */
export interface FaultRun extends FailoverFigures {
  fault: Fault;
  from: string;
  to: string | undefined;
  /** Long-lived TCP streams that kept their connection and every byte. */
  streamsSurvived: number;
  streams: number;
  /** How long both gateway nodes had the IPv4 failover address on their uplink at once (ms). */
  doubleOwnershipMs: number;
  /**
   * How long both answered who-has for a failover address on the segment at once (ms, either
   * family, to the probe's 20 ms): the old owner's last answer after the new owner's first.
   */
  answeringOverlapMs: number;
  /** The nodes that answered for both failover addresses in the last half second of the run. */
  answering: string[];
}

interface NeighbourAnswer {
  at: number;
  family: 4 | 6;
  mac: string;
}

/** How long `from` went on answering after `to` first answered, in either family (0: never both). */
function answeringOverlap(answers: readonly NeighbourAnswer[], from: string, to: string): number {
  return Math.max(
    0,
    ...([4, 6] as const).map((family) => {
      const times = (mac: string) => answers.filter((a) => a.family === family && a.mac === mac).map((a) => a.at);
      const [old, next] = [times(from), times(to)];
      return old.length && next.length ? Math.round(Math.max(...old) - Math.min(...next)) : 0;
    }),
  );
}

export class FailoverCluster {
  readonly c: Cluster;
  readonly dir: string;
  readonly namespace: string;
  readonly processes: LoggedProcesses;
  readonly #kubeconfig: string;
  readonly #options: FailoverClusterOptions;
  readonly #agents = new Map<number, ChildProcess>();
  readonly #servers: Server[] = [];
  /** The host's end of each gateway node's relay to the apiserver (the other end runs in the node). */
  readonly #relays = new Map<number, ChildProcess>();
  #apiserver!: URL;
  #tlsDir!: (node: string) => string;
  readonly #ca: KeyPair = makeTestCa();
  #draining: string[] = [];
  /** The environment of a program in the pod that stamps its flows (with `applications`). */
  preloaded: Record<string, string> = {};
  /**
   * How the drain fault drains gateway node `node`, and `restore` undrains it: resolves with the
   * nodes the gateway config lists as draining then: by default the node alone, as the operator
   * compiles a gateway that names it in failover.drainNodes.
   */
  drainWith: (node: string, drained: boolean) => Promise<string[]> = async (node, drained) => (drained ? [node] : []);

  private constructor(c: Cluster, dir: string, kubeconfig: string, options: FailoverClusterOptions) {
    this.c = c;
    this.dir = dir;
    // Its own, by the time it is made: one test file's cluster, its namespace deleted in the
    // background, may still be terminating when the next file of the same worker makes its own.
    this.namespace = `failover-${process.pid}-${Date.now().toString(36)}`;
    this.#kubeconfig = kubeconfig;
    this.#options = options;
    this.processes = new LoggedProcesses({
      dir,
      spawnIn: (ns, argv, o) => c.spawn(ns, argv, o),
      env: { KUBECONFIG: kubeconfig },
    });
  }

  static async create(kubeconfig: string, options: FailoverClusterOptions): Promise<FailoverCluster> {
    const c = await createCluster({ sharedUplinks: true });
    const dir = await mkdtemp(join(tmpdir(), 'naat-failover-'));
    const cluster = new FailoverCluster(c, dir, kubeconfig, options);
    try {
      await cluster.#start();
    } catch (error) {
      await cluster.destroy();
      throw error;
    }
    return cluster;
  }

  #k = (args: string[], input?: string) => kubectl(this.#kubeconfig, args, input);

  gatewayConfig() {
    const healthChecked = (uplink: ReturnType<typeof sharedUplinks>[number]) => ({
      ...uplink,
      healthCheck: {
        targets: [server.v4],
        protocol: 'TCP',
        port: whoamiPort,
        intervalMs: 200,
        timeoutMs: 150,
        failureThreshold: 2,
        successThreshold: 1,
      },
    });
    const [isp1, isp2] = sharedUplinks().map(healthChecked);
    const applications = this.#options.applications;
    const pod = both(podAddress(1));
    return {
      version: 1,
      gateway: gatewayName,
      sources: [podNetwork.v4, podNetwork.v6],
      pods: [{ namespace: this.namespace, name: podName, addresses: pod, node: 'w1', egress: both(floating) }],
      uplinks: applications ? [isp1!, isp2!] : [isp1!],
      balancing: { mode: 'Weighted' },
      timeouts: {},
      ...(applications && {
        association: { port: associationPort, unassociatedFlows: 'Hold', sidecarSources: pod, strictSources: pod },
        rules: applications.rules,
      }),
      steering: { tunnel, markMask: 0x10, sources: [{ node: 'w1', addresses: both(workerAddress(1)) }] },
      failover: {
        addresses: both(floating).map((address) => ({ address, uplink: 'isp1' })),
        leaseDurationMs: this.#options.leaseDurationMs,
        failback: false,
        failbackDelaySeconds: 30,
        nodes: gateways.map((g) => ({ node: `g${g}`, addresses: both(gatewayAddress(g)) })),
        draining: this.#draining,
      },
    };
  }

  nodeConfig() {
    return {
      version: 1,
      node: 'w1',
      markMask: 0xe0,
      gateways: [
        {
          gateway: gatewayName,
          tunnel,
          selection: 'Pod',
          associationPort,
          healthPort,
          bypass: [podNetwork.v4, podNetwork.v6, nodeNetwork.v4, nodeNetwork.v6],
          pods: [{ namespace: this.namespace, name: podName, addresses: both(podAddress(1)), egress: both(floating) }],
          peers: gateways.map((g) => ({ node: `g${g}`, addresses: both(gatewayAddress(g)) })),
          failover: { addresses: both(floating) },
        },
      ],
    };
  }

  async #applyConfigMap(name: string, config: unknown): Promise<void> {
    const manifest = {
      apiVersion: 'v1',
      kind: 'ConfigMap',
      metadata: { name, namespace: this.namespace },
      data: { 'config.json': JSON.stringify(config) },
    };
    await this.#k(['apply', '--server-side', '--force-conflicts', '-f', '-'], JSON.stringify(manifest));
  }

  async #start(): Promise<void> {
    const c = this.c;
    // With `applications`, w1's certificate names the Node its Pod is on, as in a cluster.
    this.#tlsDir = writeClusterTls(this.dir, this.#ca, this.#options.applications ? { w1: 'worker-a' } : {});
    // A gateway node powered off and on comes back with its addresses, as a rebooted node's network
    // configuration gives it them again (Linux drops IPv6 addresses with the link by default).
    for (const g of gateways) {
      for (const conf of ['all', 'default', 'eth0', 'up1', 'up2']) {
        await c.exec(c.gateway(g), ['sysctl', '-qw', `net.ipv6.conf.${conf}.keep_addr_on_down=1`]);
      }
    }
    await this.#k(['create', 'namespace', this.namespace]);
    await this.#applyConfigMap('gateway', this.gatewayConfig());
    await this.#applyConfigMap('node-w1', this.nodeConfig());
    this.#servers.push(await startWhoami(c, whoamiPort), await startStreamServer(c, streamPort));
    this.#apiserver = new URL(await apiserverOf(this.#kubeconfig));
    for (const g of gateways) await this.#relay(g);
    for (const g of gateways) this.startAgent(g);
    await writeFile(join(this.dir, 'w1.json'), JSON.stringify(this.nodeConfig()));
    this.processes.spawn(
      c.worker(1),
      [
        process.execPath,
        main,
        'node',
        '--config',
        join(this.dir, 'w1.json'),
        '--node',
        'w1',
        '--state-dir',
        join(this.dir, 'w1-state'),
        '--tls-dir',
        this.#tlsDir('w1'),
      ],
      'w1.log',
    );
    await until(
      'one owner of each failover address',
      async () => ((await this.owners()).size === 2 ? true : undefined),
      60_000,
    );
    if (this.#options.applications) await this.#startSidecar();
    await until('a connection from the pod with its failover address', async () =>
      (await this.whoami()).startsWith(`${floating.v4} `) ? true : undefined,
    );
  }

  /**
   * The pod's sidecar, dialling the node agent on w1 as in a cluster, in strict mode; resolves
   * once both gateway nodes accepted its stream and programs can be given their stamps.
   */
  async #startSidecar(): Promise<void> {
    await this.#k(['create', 'serviceaccount', 'app', '-n', this.namespace]);
    const status = { podIPs: both(podAddress(1)), hostIPs: both(workerAddress(1)) };
    const pod = await createBoundPod(this.#kubeconfig, this.namespace, podName, 'worker-a', status);
    const tokenFile = join(this.dir, 'token');
    await writeFile(tokenFile, pod.token);
    const stampDir = join(this.dir, 'run');
    await mkdir(stampDir, { recursive: true });
    const library = join(this.dir, 'libnaat_stamp.so');
    await buildStampLibrary(library);
    const env = {
      ...sidecarEnv({
        host: workerAddress(1).v4,
        port: associationPort,
        namespace: this.namespace,
        pod,
        tokenFile,
        scanIntervalMs: 50,
      }),
      NAAT_NAA_CA: this.#ca.cert,
      NAAT_STAMP_DIR: stampDir,
      NAAT_STAMP_LIBRARY: library,
    };
    const assignments = Object.entries(env).map(([name, value]) => `${name}=${value}`);
    this.processes.spawn(this.c.pod(1), ['env', ...assignments, process.execPath, sidecarMain], 'sidecar.log');
    for (const g of gateways) {
      await until(`g${g} to accept the pod's stream`, async () =>
        (await this.processes.log(`g${g}.log`)).includes(`"pod":"${this.namespace}/${podName}"`) ? true : undefined,
      );
    }
    const socket = join(stampDir, 'stamp.sock');
    await until('the stamping socket', async () => existsSync(socket) || undefined);
    this.preloaded = { LD_PRELOAD: library, NAAT_STAMP_SOCKET: socket };
  }

  /** Relays the apiserver into node g; a relay it had before (whose end in the node is gone with a power-off) ends. */
  async #relay(g: number): Promise<void> {
    this.#relays.get(g)?.kill('SIGTERM');
    const relay = await relayIntoNamespace(
      this.processes.spawn,
      this.dir,
      this.c.gateway(g),
      `apiserver-g${g}-${Date.now()}`,
      this.#apiserver.href,
      this.#apiserver.hostname,
    );
    this.#relays.set(g, relay);
  }

  startAgent(g: number): void {
    const argv = [
      'run',
      '--config-map',
      `${this.namespace}/gateway`,
      '--node',
      `g${g}`,
      '--state-dir',
      join(this.dir, `g${g}-state`),
      '--listen',
      `[::]:${healthPort}`,
      '--metrics-listen',
      '127.0.0.1:7744',
      '--tls-dir',
      this.#tlsDir(`g${g}`),
    ];
    this.#agents.set(g, this.processes.spawn(this.c.gateway(g), [process.execPath, main, ...argv], `g${g}.log`));
  }

  /** Waits until each failover address has one owner again and the pod connects with it. */
  async settled(): Promise<void> {
    await until(
      'one owner of each failover address',
      async () => ((await this.owners()).size === 2 ? true : undefined),
      30_000,
    );
    await until('a connection from the pod with its failover address', async () =>
      (await this.whoami()).startsWith(`${floating.v4} `) ? true : undefined,
    );
  }

  /** The nodes that have each failover address on their uplink now, by address (kernel state). */
  async holders(): Promise<Map<string, string[]>> {
    const holders = new Map<string, string[]>();
    for (const g of gateways) {
      // Only a running uplink counts: a node powered off keeps its addresses in a kernel that answers nothing.
      const { stdout } = await this.c
        .exec(this.c.gateway(g), ['ip', '-o', 'addr', 'show', 'up', 'dev', 'up1'])
        .catch(() => ({
          stdout: '',
        }));
      for (const address of both(floating)) {
        if (stdout.includes(` ${address}/`)) holders.set(address, [...(holders.get(address) ?? []), `g${g}`]);
      }
    }
    return holders;
  }

  /** How many of node g's conntrack entries are translated to `address` (their replies go to it). */
  async translatedTo(g: number, address: string): Promise<number> {
    const family = isIP(address) === 6 ? 'ipv6' : 'ipv4';
    const { stdout } = await this.c.exec(this.c.gateway(g), ['conntrack', '-L', '-f', family, '--reply-dst', address]);
    return stdout.split('\n').filter((line) => line.trim()).length;
  }

  /** The node that has each failover address on its uplink now, by address; the last when two have it. */
  async owners(): Promise<Map<string, string>> {
    return new Map([...(await this.holders())].map(([address, nodes]) => [address, nodes.at(-1)!]));
  }

  /** The source the server sees for one new IPv4 connection from the pod ("" when it fails). */
  async whoami(): Promise<string> {
    const { stdout } = await this.c
      .exec(this.c.pod(1), ['curl', '-s', '-m', '2', `telnet://${server.v4}:${whoamiPort}`], { timeoutMs: 5000 })
      .catch(() => ({ stdout: '' }));
    return stdout.trim();
  }

  /**
   * Runs one fault on the node that owns the IPv4 failover address, with `streams` long-lived
   * transfers and the probe running from the pod, and measures what the pod saw. `beforeFault`
   * runs once the streams and the probe run, just before the fault.
   */
  async fault(fault: Fault, streams = 20, options: { beforeFault?: () => Promise<void> } = {}): Promise<FaultRun> {
    const from = (await this.owners()).get(floating.v4);
    if (!from) throw new Error('no node owns the failover address before the fault');
    const g = Number(from.slice(1));
    // Long enough for what happens before the fault too (a restart takes seconds).
    const seconds = options.beforeFault ? 15 : 6;
    const transfers = Array.from({ length: streams }, () =>
      startTransfer(this.c, this.c.pod(1), server.v4, streamPort, {
        seconds,
        bytesPerSecond: 20_000,
        idleTimeoutMs: 4000,
      }),
    );
    // A stream that fails counts as lost, whenever it fails: its rejection is handled from the start.
    const results = Promise.all(transfers.map((t) => t.result.catch(() => failedTransfer)));
    await Promise.all(transfers.map((t) => t.receiving));
    const monitors = gateways.map((n) => this.#addressMonitor(n, `g${n}` === from));
    const neighbours = this.#neighbourProbe();
    // Its stdin open: the probe runs until the harness ends it.
    const probe = this.c.spawn(
      this.c.pod(1),
      [process.execPath, join(programs, 'failover-probe.ts'), server.v4, String(whoamiPort), '10', '1', '1000'],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    const probeOutput = collectProbe(probe);
    await new Promise((resolve) => setTimeout(resolve, 500));
    await options.beforeFault?.();
    await this.#inject(fault, g);
    // From when the fault is in place: connections opened while it was being made may still pass.
    const faultMs = performance.timeOrigin + performance.now();
    if (staying.has(fault)) await new Promise((resolve) => setTimeout(resolve, 3 * this.#options.leaseDurationMs));
    else
      await until(
        'the failover address on another node',
        async () => {
          const other = (await this.holders()).get(floating.v4)?.find((node) => node !== from);
          return other;
        },
        10_000,
      ).catch(() => undefined);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    probe.stdin?.end();
    const output = await probeOutput;
    const survived = (await results).filter((r: TransferResult) => r.ok).length;
    const changes = await Promise.all(monitors.map((m) => m.stop()));
    const answers = await neighbours.stop();
    // The owner now: the node that took the address, else the one that kept it.
    const holding = (await this.holders()).get(floating.v4) ?? [];
    const to = holding.find((node) => node !== from) ?? holding[0];
    const macs = new Map<string, string>();
    for (const n of gateways) {
      const { stdout } = await this.c.exec(this.c.gateway(n), ['cat', '/sys/class/net/up1/address']);
      macs.set(`g${n}`, stdout.trim());
    }
    const answeringOverlapMs = to && to !== from ? answeringOverlap(answers, macs.get(from)!, macs.get(to)!) : 0;
    const end = Math.max(...answers.map((a) => a.at)) - 500;
    const answering = [...macs]
      .filter(([, mac]) =>
        ([4, 6] as const).every((family) => answers.some((a) => a.family === family && a.mac === mac && a.at >= end)),
      )
      .map(([node]) => node);
    return {
      fault,
      from,
      to,
      ...failoverFigures(output, faultMs),
      streamsSurvived: survived,
      streams,
      // A node powered off answers for nothing from the fault on (its monitor died with it).
      doubleOwnershipMs: overlap(
        ...(changes.map((c, i) => (fault === 'power-off' && i === g - 1 ? [...c, [faultMs, false]] : c)) as [
          Array<[number, boolean]>,
          Array<[number, boolean]>,
        ]),
      ),
      answeringOverlapMs,
      answering,
    };
  }

  async #inject(fault: Fault, g: number): Promise<void> {
    const ns = this.c.gateway(g);
    switch (fault) {
      case 'power-off': {
        // All at once, as a machine that loses its power: its processes are stopped first, so that
        // none of them acts on its links going down (the agent's carrier watch would renew its
        // Lease, which holds the other node's takeover back by up to a third of a lease duration),
        // then its links go down in one batch, then every process is killed.
        const { stdout } = await run(['ip', '-n', ns, '-o', 'link', 'show']);
        const links = [...stdout.matchAll(/^\d+: ([^:@]+)/gm)].map((m) => m[1]!).filter((l) => l !== 'lo');
        const running = await namespacePids(ns);
        signalAll(running, 'SIGSTOP');
        await ipBatch(
          ns,
          links.map((link) => `link set ${link} down`),
        );
        // Listed again: a process started just before the stop goes too.
        signalAll([...running, ...(await namespacePids(ns))], 'SIGKILL');
        return;
      }
      case 'agent-kill':
        this.#agents.get(g)!.kill('SIGKILL');
        return;
      case 'uplink-down':
        await run(['ip', '-n', ns, 'link', 'set', 'up1', 'down']);
        return;
      case 'blackhole':
        // Nothing leaves by the uplink, and the link stays up: only the health check can tell.
        await this.c.exec(ns, ['nft', '-f', '-'], {
          input: [
            'table inet blackhole {',
            '  chain out {',
            '    type filter hook postrouting priority 300;',
            '    oifname "up1" drop',
            '  }',
            '}',
          ].join('\n'),
        });
        return;
      case 'partition':
        await this.#cut(g, { apiserver: false });
        return;
      case 'isolated':
        await this.#cut(g, { apiserver: true });
        return;
      case 'drain':
        this.#draining = await this.drainWith(`g${g}`, true);
        await this.#applyConfigMap('gateway', this.gatewayConfig());
        return;
    }
  }

  /**
   * Cuts node g off from the other gateway node (underlay), and with `apiserver` from the control
   * plane too (its end of the relay, on the node's loopback), in one nft transaction: both at once,
   * its processes running, its connections silent as with links cut. Deleting the table heals it.
   */
  async #cut(g: number, { apiserver }: { apiserver: boolean }): Promise<void> {
    const other = gatewayAddress(3 - g);
    const host = this.#apiserver.hostname.replace(/^\[(.*)\]$/, '$1');
    const ip = isIP(host) === 6 ? 'ip6' : 'ip';
    const port = this.#apiserver.port;
    const control = apiserver
      ? ` ${ip} daddr ${host} tcp dport ${port} drop; ${ip} saddr ${host} tcp sport ${port} drop;`
      : '';
    await this.c.exec(this.c.gateway(g), ['nft', '-f', '-'], {
      input: [
        'table inet isolation {',
        `  chain in { type filter hook input priority -300; ip saddr ${other.v4} drop; ip6 saddr ${other.v6} drop; }`,
        `  chain out { type filter hook output priority -300; ip daddr ${other.v4} drop; ip6 daddr ${other.v6} drop;${control} }`,
        '}',
      ].join('\n'),
    });
  }

  /** Brings a node back from a fault, and waits until its agent answers again. */
  async restore(fault: Fault, g: number): Promise<void> {
    const ns = this.c.gateway(g);
    switch (fault) {
      case 'power-off': {
        const { stdout } = await run(['ip', '-n', ns, '-o', 'link', 'show']);
        const links = [...stdout.matchAll(/^\d+: ([^:@]+)/gm)].map((m) => m[1]!);
        await Promise.all(links.map((link) => run(['ip', '-n', ns, 'link', 'set', link, 'up'])));
        await run(['ip', '-n', this.c.ns.underlay, 'link', 'set', `g${g}`, 'up']);
        await this.#relay(g);
        this.startAgent(g);
        break;
      }
      case 'agent-kill':
        this.startAgent(g);
        break;
      case 'uplink-down':
        await run(['ip', '-n', ns, 'link', 'set', 'up1', 'up']);
        break;
      case 'blackhole':
        await this.c.exec(ns, ['nft', 'delete', 'table', 'inet', 'blackhole']);
        break;
      case 'partition':
      case 'isolated':
        await this.c.exec(ns, ['nft', 'delete', 'table', 'inet', 'isolation']);
        break;
      case 'drain':
        this.#draining = await this.drainWith(`g${g}`, false);
        await this.#applyConfigMap('gateway', this.gatewayConfig());
        break;
    }
    await this.ready(g);
    await this.eligible(g);
  }

  /**
   * Waits until node g may take an address over again, as the gateway's nodes decide it
   * (dataplane/failover/ownership.ts): its Lease has said for a lease duration that its uplink is
   * healthy, its replica complete and it is not draining. A fault before then finds no node to
   * take over, or the one that just came back still waiting.
   */
  async eligible(g: number): Promise<void> {
    const name = failoverLeaseName(gatewayName, `g${g}`);
    await until(`g${g}'s Lease to say it can take an address over`, async () => {
      const stdout = await this.#k(['get', 'lease', name, '-n', this.namespace, '-o', 'json']);
      const annotations = (JSON.parse(stdout) as V1Lease).metadata?.annotations ?? {};
      const healthy = annotations[failoverAnnotations.uplinks]?.split(',').includes('isp1');
      const able =
        annotations[failoverAnnotations.replicaReady] !== 'false' &&
        annotations[failoverAnnotations.draining] !== 'true';
      return healthy && able ? true : undefined;
    });
    await new Promise((resolve) => setTimeout(resolve, this.#options.leaseDurationMs + 100));
  }

  /**
   * Waits until node g's agent says it is ready at /readyz, as the kubelet's probe reads it: a
   * rolling update moves on to the next node only then.
   */
  async ready(g: number): Promise<void> {
    await until(
      `g${g}'s agent ready`,
      async () => {
        await this.c.exec(this.c.gateway(g), ['curl', '-sf', `http://127.0.0.1:${healthPort}/readyz`]);
        return true;
      },
      20_000,
    );
  }

  /** Restarts node g's agent as a rolling update does (SIGTERM, then a new one), and waits until it is ready. */
  async restartAgent(g: number): Promise<void> {
    const agent = this.#agents.get(g)!;
    await terminate(agent);
    this.startAgent(g);
    await this.ready(g);
  }

  /** Asks ISP 1's segment who has the failover addresses every 20 ms and collects who answered (neighbour-probe.py). */
  #neighbourProbe(): { stop(): Promise<NeighbourAnswer[]> } {
    const name = `neighbours-${Date.now()}`;
    const own = sharedNextHop(1);
    const probe = join(programs, 'neighbour-probe.py');
    const argv = ['python3', probe, 'lan', own.v4, own.v6, floating.v4, floating.v6, '20'];
    const child = this.processes.capture(name, ['ip', 'netns', 'exec', this.c.ns.isps[0]!, ...argv]);
    return {
      stop: async () => {
        child.kill('SIGTERM');
        return this.processes
          .output(name)
          .split('\n')
          .filter((line) => line.startsWith('{"at"'))
          .map((line) => JSON.parse(line) as NeighbourAnswer);
      },
    };
  }

  /** Records when the IPv4 failover address appears on and leaves node g's uplink. */
  #addressMonitor(g: number, present: boolean): { stop(): Promise<Array<[number, boolean]>> } {
    const name = `monitor-g${g}-${Date.now()}`;
    const child = this.processes.capture(name, ['ip', '-n', this.c.gateway(g), '-ts', 'monitor', 'address']);
    const started = Date.now();
    return {
      stop: async () => {
        child.kill('SIGTERM');
        const changes: Array<[number, boolean]> = [];
        for (const line of this.processes.output(name).split('\n')) {
          const m = /^\[(\d{4}-\d\d-\d\dT[\d:.]+)\] (Deleted )?.*inet (\S+)\//.exec(line);
          if (m && m[3] === floating.v4) changes.push([Date.parse(`${m[1]}Z`), !m[2]]);
        }
        return [[started, present], ...changes];
      },
    };
  }

  async destroy(): Promise<void> {
    await this.processes.stopAll();
    await Promise.all(this.#servers.splice(0).map((s) => s.stop()));
    await this.c.destroy();
    await this.#k(['delete', 'namespace', this.namespace, '--wait=false']).catch(() => {});
    await rm(this.dir, { recursive: true, force: true });
  }
}

const failedTransfer: TransferResult = { ok: false, bytes: 0, expected: 1 };

function collectProbe(probe: ChildProcess): Promise<ProbeOutput> {
  let out = '';
  probe.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  return new Promise((resolve, reject) =>
    probe.once('exit', () => {
      const last = out.trim().split('\n').at(-1) ?? '';
      if (!last.startsWith('{')) return reject(new Error(`the failover probe failed: ${out}`));
      resolve(JSON.parse(last) as ProbeOutput);
    }),
  );
}

/** How long two nodes had the address at once, from each node's [time, present] changes. */
export function overlap(a: ReadonlyArray<[number, boolean]>, b: ReadonlyArray<[number, boolean]>): number {
  const events = [...a.map(([t, on]) => [t, on, 0] as const), ...b.map(([t, on]) => [t, on, 1] as const)].sort(
    (x, y) => x[0] - y[0],
  );
  const present = [false, false];
  let since: number | undefined;
  let total = 0;
  for (const [t, on, who] of events) {
    const before = present[0]! && present[1]!;
    present[who] = on;
    const now = present[0]! && present[1]!;
    if (!before && now) since = t;
    if (before && !now) total += t - since!;
  }
  return total;
}
