// An agent as the NAA driver of every pod of its node that its gateway gives the Node driver
// (association.driver Node, docs/naa.md): no sidecar in the pod. The node agent drives such pods on
// the nodes that are not the gateway's, the gateway agent those on its own node. From the host's
// process view it finds each such pod's processes by their cgroup (the pod's uid and the
// container's runtime id, which the kubelet and the runtime set and the pod cannot change) and its
// network namespace (where most of them are), and looks at that namespace's sockets with the
// sidecar's own scanner, counting only the pod's processes as owners. Each pod gets the sidecar's
// own driver and stream, node-driven (no token: the agent speaks for its node's pods), handed over
// in the agent's process, where nothing else can open one: the node agent's to its gateway's relay
// (`NaaRelay.openLocal`), which the gateways take only from this node's agent (the relay's agent
// certificate); the gateway agent's to its own NAA server (`NaaServer.openLocal`). Either way only
// for a node-driven pod of this node, held to the pod's own addresses exactly as a sidecar's
// stream is.
// A strict pod's stream is strict, and the agent answers its programs' requests for a stamp
// (node-stamps.ts).
import { readFileSync, readlinkSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ProblemLog, type Logger } from '../../common/index.ts';
import type { GatewayConfig, NodeAssociation, NodeConfig, NodeGateway } from '../../contracts/gateway/index.ts';
import {
  allPids,
  Driver,
  nodeTcpSockets,
  podOfCgroup,
  ProcFile,
  readApplication,
  Scanner,
  Stamps,
  type AssociateStream,
  type Association,
  type AssociationTracer,
  type PodPlace,
  type StampRequest,
} from '../../contracts/naa/index.ts';
import { stampFolder, stampSocketName } from '../../contracts/index.ts';
import { AssociationMode, type Application, type PodRef } from '../../proto/index.ts';
import { hostPidOf, listenInPod } from './node-stamps.ts';

/** Where a process is: its pod and container (undefined outside the kubelet's pods) and its network namespace. */
export interface ProcessPlace {
  pod: PodPlace | undefined;
  /** The namespace's identity, as /proc/<pid>/ns/net links to it (`net:[inode]`). */
  netns: string;
}

/** A pod's processes in its network namespace, and one of them to look at the namespace through. */
export interface PodProcesses {
  netns: string;
  /** The lowest pid there: the longest-lived, most often the pod's sandbox. */
  netPid: number;
  pids: number[];
}

/**
 * Each wanted pod's processes in its network namespace: the namespace most of the pod's processes
 * are in (a pod's containers share the sandbox's; a program that made a namespace of its own has
 * no pod address there), the lowest pid first on a tie. Pods without a process are left out.
 */
export function podProcesses(
  places: ReadonlyMap<number, ProcessPlace>,
  wanted: ReadonlySet<string>,
): Map<string, PodProcesses> {
  const byPod = new Map<string, Map<string, number[]>>();
  for (const [pid, { pod, netns }] of places) {
    if (!pod || !wanted.has(pod.podUid)) continue;
    const namespaces = byPod.get(pod.podUid) ?? new Map<string, number[]>();
    namespaces.set(netns, [...(namespaces.get(netns) ?? []), pid]);
    byPod.set(pod.podUid, namespaces);
  }
  const result = new Map<string, PodProcesses>();
  for (const [uid, namespaces] of byPod) {
    const [netns, pids] = [...namespaces]
      .map(([netns, pids]) => [netns, pids.sort((a, b) => a - b)] as const)
      .sort(([, a], [, b]) => b.length - a.length || a[0]! - b[0]!)[0]!;
    result.set(uid, { netns, netPid: pids[0]!, pids });
  }
  return result;
}

/**
 * The flows of the pod's own addresses, or of none (a socket bound to every address): the gateway
 * would refuse every other. The very map given when that is all of them.
 */
export function ownFlows(flows: Map<string, Association>, addresses: ReadonlySet<string>): Map<string, Association> {
  const own = (a: Association) => !a.flow.sourceAddress || addresses.has(a.flow.sourceAddress);
  if ([...flows.values()].every(own)) return flows;
  return new Map([...flows].filter(([, a]) => own(a)));
}

/** A pod to drive, as its agent's config gives it. */
export interface WantedPod {
  ref: PodRef;
  addresses: ReadonlySet<string>;
  /** Container names by the runtime's id. */
  containers: ReadonlyMap<string, string>;
  /**
   * What takes its stream in the agent's process (`NodeDriverOptions.open`): the node agent's relay
   * of the pod's gateway, by the gateway's name; the gateway agent's own NAA server.
   */
  target: string;
  /** Strict association mode: its programs ask for stamps. */
  strict: boolean;
}

type ConfigPod = { namespace: string; name: string; addresses: readonly string[]; association?: NodeAssociation };

function wanted(pod: ConfigPod & { association: NodeAssociation }, target: string): WantedPod {
  const { uid, containers, strict } = pod.association;
  return {
    ref: { namespace: pod.namespace, name: pod.name, uid },
    addresses: new Set(pod.addresses),
    containers: new Map(containers.map((c) => [c.id, c.name])),
    target,
    strict: strict === true,
  };
}

const isNodeDriven = <P extends ConfigPod>(pod: P): pod is P & { association: NodeAssociation } => !!pod.association;

/**
 * The node agent's: the pods of its node config that have the Node driver, by uid, each to its
 * gateway's relay (`target`).
 */
export function nodeAgentPods(config: NodeConfig, target: (gateway: NodeGateway) => string): Map<string, WantedPod> {
  return new Map(
    config.gateways.flatMap((gateway) =>
      gateway.pods.filter(isNodeDriven).map((pod) => [pod.association.uid, wanted(pod, target(gateway))] as const),
    ),
  );
}

/**
 * The gateway agent's: the pods of its gateway's config that have the Node driver and run on its
 * own node `node`, by uid, each to the agent's own NAA server (`target`).
 */
export function gatewayAgentPods(config: GatewayConfig, node: string, target: string): Map<string, WantedPod> {
  return new Map(
    config.pods
      .filter(isNodeDriven)
      .filter((pod) => pod.node === node)
      .map((pod) => [pod.association.uid, wanted(pod, target)] as const),
  );
}

export interface NodeDriverOptions {
  /** Where the host's procfs is (the node agent runs in the host's process namespace). */
  proc?: string;
  /**
   * Opens a pod's stream to its `target` in this process (`NaaRelay.openLocal`,
   * `NaaServer.openLocal`); it may throw while there is none, and the pod's driver tries again.
   */
  open: (target: string) => AssociateStream;
  version: string;
  /** How often to look (200 ms, as the sidecar), at every pod while the node's TCP socket count moves. */
  scanIntervalMs?: number;
  /** How often, at the longest, a pod is looked at while the node's TCP socket count stands still (1 s). */
  quietIntervalMs?: number;
  /** Every process's place is read again at least this often, in case a pid was reused (5 s). */
  rereadMs?: number;
  /**
   * How often, at the longest, a pod's scanner looks past what its counters say did not change
   * (`ScannerOptions.rereadMs`; the sidecar's 5 s): 60 s. Why longer: the quiet looks every
   * `quietIntervalMs` already see what an outbound flow does. A connection its process closes after
   * the peer did sends a FIN (the interfaces' counters) and leaves CLOSE_WAIT (CurrEstab, measured
   * on Linux 6.18; where that count does not move, the last ACK frees the socket, which moves the
   * socket counts); a UDP socket bound already that connects is seen at its first datagram. What
   * waits for the safety net is what no counter shows: a socket handed to another process of the
   * pod, and a connection whose peer vanished before its last ACK, as long as the kernel retries.
   * At a hundred pods of fifty connections the safety net every 15 s (each a read of the pod's
   * TCP counters and UDP tables, and a `stat` of each owner's descriptors) was about a third of
   * the agent's scans' samples in a profile.
   */
  safetyNetMs?: number;
  /** Where the stamps of strict pods are kept across restarts, a file per pod. */
  stampDir: string;
  /**
   * How long a request for a stamp waits for the config to name a container that just started
   * (2 s: the library waits 3 s at most), before it is answered unstamped.
   */
  containerWaitMs?: number;
  /** Traces associations as the sidecar does (telemetry on). */
  tracer?: AssociationTracer;
  log: Logger;
}

/** One driven pod: its stream, and its scanner while it has processes. */
interface Driven {
  pod: WantedPod;
  driver: Driver;
  target: string;
  /** When it was last looked at (ms since the epoch). */
  lookedAt?: number;
  scanner?: {
    netns: string;
    netPid: number;
    scanner: Scanner;
    pids: number[];
    /** The last scan, the pod's addresses then, and its flows of those addresses. */
    own?: { scanned: Map<string, Association>; addresses: ReadonlySet<string>; flows: Map<string, Association> };
    /**
     * The sockets without an owner (`Scanner.unowned`) as a look after a listing of the host's
     * processes left them, and as one after a listing that read every process's place afresh:
     * looked for already, they make no further listing.
     */
    listedFor?: ReadonlySet<number>;
    rereadFor?: ReadonlySet<number>;
  };
  /**
   * Strict mode: the pod's stamps, and the server its programs ask on, once it listens in the pod's
   * folder (or while it tries).
   */
  stamps?: { book: Stamps; server: Server; listening?: Promise<string | undefined> };
}

export class NodeDriver {
  readonly #o: NodeDriverOptions;
  readonly #proc: string;
  #wanted: ReadonlyMap<string, WantedPod> = new Map();
  readonly #driven = new Map<string, Driven>();
  /** Every process's place, as last read. */
  #places = new Map<number, ProcessPlace>();
  /**
   * The processes the last listing found first, whose place the next one reads again: a runtime
   * forks a container's first process and moves it into the pod's cgroup after, and a listing in
   * between would keep the runtime's place for it until every place is read again.
   */
  #unsettled = new Set<number>();
  /** The wanted pods' processes by pod uid, as the last listing found them. */
  #found = new Map<string, PodProcesses>();
  #placesReadAt = -Infinity;
  /** The node's TCP socket count as read at the last scan. */
  #nodeSockets: number | undefined;
  /** Where the agent reads that count: its own namespace's sockstat, kept open. */
  readonly #sockstat: ProcFile;
  /**
   * When the last scan was, and the earliest moment a pod is due after it while the node's TCP
   * socket count stands still (`#due`): a scan before then reads that count alone.
   */
  #scannedAt = -Infinity;
  #nextDueAt = -Infinity;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  readonly #problems: ProblemLog;

  constructor(options: NodeDriverOptions) {
    this.#o = options;
    this.#proc = options.proc ?? '/proc';
    this.#sockstat = new ProcFile(join(this.#proc, 'net', 'sockstat'));
    this.#problems = new ProblemLog(options.log, 'Failed to look at a pod', 'Looked at a pod again');
  }

  /**
   * Follows a new config's pods (`nodeAgentPods`, `gatewayAgentPods`): pods that left it, or whose
   * stream goes elsewhere now, lose their streams at once.
   */
  configure(pods: ReadonlyMap<string, WantedPod>): void {
    this.#wanted = pods;
    this.#nextDueAt = -Infinity;
    for (const [uid, driven] of this.#driven) {
      const pod = this.#wanted.get(uid);
      // Another mode needs another stream: its Hello says the mode.
      if (pod && pod.target === driven.target && pod.strict === driven.pod.strict) {
        // Looked at by the next scan, which holds its flows to its addresses now.
        if (driven.pod !== pod) delete driven.lookedAt;
        driven.pod = pod;
      } else this.#drop(uid);
      if (!pod) rmSync(this.#stampFile(uid), { force: true });
    }
  }

  start(): void {
    void this.#tick();
  }

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
    for (const uid of [...this.#driven.keys()]) this.#drop(uid);
    this.#sockstat.close();
  }

  /** Number of pods driven. */
  get pods(): number {
    return this.#driven.size;
  }

  /**
   * Looks at the wanted pods that are due and sends what changed: every pod when the node's TCP
   * socket count moved since the last scan (`nodeTcpSockets`, one small read), else those not
   * looked at for `quietIntervalMs` (and new pods, pods whose config changed, and strict pods not
   * yet listening for stamps). Until one of those is due, a scan reads that count alone: it walks
   * no list of pods five times a second.
   *
   * Why: looking at a pod costs a few reads of its namespace's counters (tens of µs of kernel and
   * JavaScript time), which at five scans a second was most of the idle CPU of an agent driving a
   * hundred pods. Every new connection makes a TCP socket first, so a scan after a pod's connect()
   * sees the count moved and looks at every pod, as often as before: the latency is the sidecar's.
   * What the count does not show waits for the pod's next look, within `quietIntervalMs`: a UDP
   * socket, a TCP socket made in the same scan interval as another one anywhere on the node was
   * freed, and a socket its process closes while the kernel keeps it. On a node whose sockets
   * come and go all the time, the count moves at most scans, and every pod is looked at every
   * time, as before. The host's processes are listed only for a look that needs them
   * (`#needsProcesses`), or once a look finds a socket none of the pod's known processes holds.
   * Considered too: conntrack's NEW events in the node's namespace would name the pod whose flow
   * leaves the node, but cost a conntrack process and a parsed line for each of the node's flows;
   * and sock_diag dumps by namespace need a netlink socket in each pod's namespace, which Node.js
   * cannot open.
   */
  async scan(now = new Date()): Promise<void> {
    if (this.#wanted.size === 0) return;
    const at = now.getTime();
    const nodeSockets = this.#readNodeSockets();
    const moved = nodeSockets === undefined || nodeSockets !== this.#nodeSockets;
    this.#nodeSockets = nodeSockets;
    if (!moved && at >= this.#scannedAt && at < this.#nextDueAt) return;
    this.#scannedAt = at;
    const due = [...this.#wanted].filter(([uid]) => moved || this.#due(this.#driven.get(uid), at));
    const fresh = due.some(([uid]) => this.#ownerMissing(this.#driven.get(uid)));
    /** Lists the host's processes: says whether it read every process's place afresh. */
    const list = (): 'yes' | 'afresh' => {
      this.#found = podProcesses(this.#readPlaces(at, fresh), new Set(this.#wanted.keys()));
      return this.#placesReadAt === at ? 'afresh' : 'yes';
    };
    let listed = fresh || due.some(([uid]) => this.#needsProcesses(uid)) ? list() : 'no';
    for (const [uid, pod] of due) {
      const driven = this.#driven.get(uid) ?? this.#drive(uid, pod);
      driven.lookedAt = at;
      try {
        let flows = await this.#lookAt(uid, driven, now);
        // A socket none of the pod's known processes holds, new since the last listing looked for
        // its owner: a process that started since made it. Listing now, in this scan, makes its
        // association as prompt as listing at every look would.
        if (listed === 'no' && !within(driven.scanner?.scanner.unowned, driven.scanner?.listedFor)) {
          listed = list();
          flows = await this.#lookAt(uid, driven, now);
        }
        const scanning = driven.scanner;
        if (scanning && listed !== 'no') scanning.listedFor = scanning.scanner.unowned;
        if (scanning && listed === 'afresh') scanning.rereadFor = scanning.scanner.unowned;
        driven.driver.update(flows);
        this.#problems.report(uid, undefined, { pod: `${pod.ref.namespace}/${pod.ref.name}` });
      } catch (error) {
        this.#problems.report(uid, (error as Error).message, { pod: `${pod.ref.namespace}/${pod.ref.name}` });
      }
    }
    this.#nextDueAt = this.#nextDue(at);
  }

  /**
   * The earliest moment a pod is due (`#dueAt`) after a scan at `at`, from what the pods are now (a
   * config that came during the scan counts).
   */
  #nextDue(at: number): number {
    let next = Infinity;
    for (const uid of this.#wanted.keys()) next = Math.min(next, this.#dueAt(this.#driven.get(uid), at));
    return next;
  }

  /**
   * Whether a due pod's look needs the host's processes listed first: it is new, its config
   * changed, the last listing did not find it, or its stamp socket is not listening yet. The
   * others are looked at with the processes the last listing found, and the host's processes are
   * listed only when that look finds a socket none of them holds: a pod's counters move with
   * every packet, its interface's router solicitations and MLD reports too, which at a hundred
   * idle pods made several listings a second.
   */
  #needsProcesses(uid: string): boolean {
    const driven = this.#driven.get(uid);
    if (!driven?.scanner || driven.lookedAt === undefined || !this.#found.has(uid)) return true;
    return !!driven.stamps && !driven.stamps.server.listening;
  }

  /** The pod's associations now, with its processes as the last listing found them (none: no flows). */
  async #lookAt(uid: string, driven: Driven, now: Date): Promise<Map<string, Association>> {
    const processes = this.#found.get(uid);
    if (!processes) {
      this.#forget(driven);
      return new Map();
    }
    if (driven.stamps) this.#listenForStamps(uid, driven, processes.pids);
    return this.#scanPod(driven, processes, now);
  }

  /** Whether a pod must be looked at although the node's TCP socket count did not move. */
  #due(driven: Driven | undefined, now: number): boolean {
    // A look stamped later than now: the clock went back.
    return now < (driven?.lookedAt ?? -Infinity) || now >= this.#dueAt(driven, now);
  }

  /**
   * When a pod is next due while the node's TCP socket count stands still: at once when it was
   * never looked at, `quietIntervalMs` after its last look otherwise.
   */
  #dueAt(driven: Driven | undefined, now: number): number {
    if (driven?.lookedAt === undefined) return -Infinity;
    // A strict pod's programs wait for its stamp socket: it is tried at every scan until it listens.
    if (driven.stamps && !driven.stamps.server.listening) return now;
    const quiet = this.#o.quietIntervalMs ?? 1_000;
    if (this.#ownerMissing(driven)) return this.#placesReadAt + quiet;
    return driven.lookedAt + quiet;
  }

  /**
   * Whether the pod's last look found a socket of it whose owner is not among its processes, and
   * no look after a listing that read every process's place afresh looked for it: a pid reused
   * since a listing saw it keeps the place it had then (another pod's, or none) until one does.
   * Such a pod is due, and the listing reads every place afresh, `quietIntervalMs` after the last
   * one that did. A socket still without an owner after that (held by a process that is not the
   * pod's, or by the kernel) makes no further one.
   */
  #ownerMissing(driven: Driven | undefined): boolean {
    return !within(driven?.scanner?.scanner.unowned, driven?.scanner?.rereadFor);
  }

  /** The node's TCP socket count; undefined when it cannot be read (then every pod is looked at). */
  #readNodeSockets(): number | undefined {
    return nodeTcpSockets(this.#sockstat.read());
  }

  async #tick(): Promise<void> {
    await this.scan();
    if (!this.#stopped) this.#timer = setTimeout(() => void this.#tick(), this.#o.scanIntervalMs ?? 200);
  }

  #drive(uid: string, pod: WantedPod): Driven {
    const book = pod.strict
      ? new Stamps({
          file: this.#stampFile(uid),
          application: (request) => this.#stampApplication(uid, request),
          announce: (stamp, application) => driver.stamp(stamp, application),
          log: (msg, fields) => this.#o.log.info(msg, { pod: `${pod.ref.namespace}/${pod.ref.name}`, ...fields }),
        })
      : undefined;
    const driver: Driver = new Driver({
      target: () => this.#o.open(pod.target),
      pod: pod.ref,
      version: this.#o.version,
      ...(book
        ? { mode: AssociationMode.ASSOCIATION_MODE_STRICT, stamps: () => book.stamps }
        : { mode: AssociationMode.ASSOCIATION_MODE_OBSERVE }),
      onState: (state) =>
        this.#o.log.debug(`Driver ${state}`, {
          pod: `${pod.ref.namespace}/${pod.ref.name}`,
          ...(state === 'disconnected' ? { error: driver.lastError?.message } : {}),
        }),
      ...(this.#o.tracer ? { tracer: this.#o.tracer } : {}),
    });
    const driven: Driven = {
      pod,
      driver,
      target: pod.target,
      ...(book ? { stamps: { book, server: createServer((socket) => book.serve(socket)) } } : {}),
    };
    this.#driven.set(uid, driven);
    driver.start();
    return driven;
  }

  #drop(uid: string): void {
    const driven = this.#driven.get(uid);
    if (!driven) return;
    driven.driver.stop();
    driven.stamps?.server.close();
    this.#forget(driven);
    this.#driven.delete(uid);
  }

  /** Lets the pod's scanner go: its open files would hold a namespace that may be gone. */
  #forget(driven: Driven): void {
    driven.scanner?.scanner.close();
    delete driven.scanner;
  }

  #stampFile(uid: string): string {
    return join(this.#o.stampDir, `${uid}.json`);
  }

  /**
   * Strict mode: listens for the pod's programs in its folder once one of its processes mounts it
   * (the pod's first container does; the kubelet starts the next ones once the socket answers).
   */
  #listenForStamps(uid: string, driven: Driven, pids: readonly number[]): void {
    const stamps = driven.stamps!;
    if (stamps.listening) return;
    const where = { pod: `${driven.pod.ref.namespace}/${driven.pod.ref.name}` };
    const listening = listenInPod(stamps.server, this.#proc, pids, stampFolder, stampSocketName);
    stamps.listening = listening;
    listening.then(
      (path) => {
        // Not yet: the next scan tries again.
        if (!path) return void (stamps.listening = undefined);
        // The pod left meanwhile.
        if (this.#driven.get(uid) !== driven) return void stamps.server.close();
        this.#problems.report(`${uid} stamps`, undefined, where);
        this.#o.log.info('Listening for stamp requests', { ...where, path });
      },
      (error: Error) => {
        stamps.listening = undefined;
        this.#problems.report(`${uid} stamps`, error.message, where);
      },
    );
  }

  /**
   * Who asked for a stamp on the pod's socket: a process of the pod (by its cgroup, read again
   * now, since a program asks as it starts), found by its pid and pid namespace; undefined for
   * anyone else. Its container is named by the agent's config, which may name a container that
   * just started a moment later: the answer waits for it, within a bound.
   */
  async #stampApplication(uid: string, request: StampRequest): Promise<Application | undefined> {
    const processes = podProcesses(this.#readPlaces(Date.now()), new Set([uid])).get(uid);
    const pid = processes && hostPidOf(this.#proc, processes.pids, request);
    if (pid === undefined || readPlace(this.#proc, pid)?.pod?.podUid !== uid) return undefined;
    const application = await readApplication(this.#proc, pid);
    if (!application) return undefined;
    const deadline = Date.now() + (this.#o.containerWaitMs ?? 2_000);
    for (;;) {
      const driven = this.#driven.get(uid);
      if (!driven) return undefined;
      const containerName = driven.pod.containers.get(application.containerId);
      if (containerName !== undefined) return { ...application, containerName };
      if (Date.now() >= deadline) return undefined;
      await sleep(50);
    }
  }

  /**
   * The pod's associations now. Its scanner looks through one of its processes, and is made anew
   * when that process is gone (or the pod has another namespace): the new one finds the same flows.
   * Flows of addresses that are not the pod's are left out (`ownFlows`).
   */
  async #scanPod(driven: Driven, processes: PodProcesses, now: Date): Promise<Map<string, Association>> {
    const kept = driven.scanner;
    if (!kept || kept.netns !== processes.netns || !processes.pids.includes(kept.netPid)) {
      this.#forget(driven);
      const scanner = new Scanner(this.#proc, processes.netPid, {
        // The pod's processes of the latest scan: a container that starts later owns its sockets too.
        owners: { pids: () => driven.scanner?.pids ?? [], identify: (pid) => this.#identify(driven, pid) },
        skipQuiet: true,
        rereadMs: this.#o.safetyNetMs ?? 60_000,
      });
      driven.scanner = { netns: processes.netns, netPid: processes.netPid, pids: processes.pids, scanner };
    }
    const scanning = driven.scanner!;
    scanning.pids = processes.pids;
    const scanned = await scanning.scanner.scan(now);
    // The scanner hands back the same map when nothing changed: so does this, and the driver compares nothing.
    const last = scanning.own;
    if (last?.scanned === scanned && last.addresses === driven.pod.addresses) return last.flows;
    scanning.own = { scanned, addresses: driven.pod.addresses, flows: ownFlows(scanned, driven.pod.addresses) };
    return scanning.own.flows;
  }

  /** Who a process is, its container named from the runtime id its cgroup shows, not from anything it says. */
  async #identify(driven: Driven, pid: number) {
    const application = await readApplication(this.#proc, pid);
    if (!application) return undefined;
    return { ...application, containerName: driven.pod.containers.get(application.containerId) ?? '' };
  }

  /**
   * Every process's place: new processes are read at the listing that finds them and at the next
   * one (`#unsettled`); all of them every `rereadMs` (a pid reused in between keeps its old place
   * until then), and when `fresh`, a pod's socket having no owner among its processes
   * (`#ownerMissing`), at most every `quietIntervalMs`.
   */
  #readPlaces(now: number, fresh = false): Map<number, ProcessPlace> {
    const since = now - this.#placesReadAt;
    const all =
      since >= (this.#o.rereadMs ?? 5_000) || since < 0 || (fresh && since >= (this.#o.quietIntervalMs ?? 1_000));
    if (all) this.#placesReadAt = now;
    const places = new Map<number, ProcessPlace>();
    const unsettled = new Set<number>();
    for (const pid of allPids(this.#proc)) {
      const known = all || this.#unsettled.has(pid) ? undefined : this.#places.get(pid);
      const place = known ?? readPlace(this.#proc, pid);
      if (!place) continue;
      places.set(pid, place);
      if (!this.#places.has(pid)) unsettled.add(pid);
    }
    this.#places = places;
    this.#unsettled = unsettled;
    return places;
  }
}

/** Whether every one of `sockets` is among `sought` (none is). */
function within(sockets: ReadonlySet<number> | undefined, sought: ReadonlySet<number> | undefined): boolean {
  for (const inode of sockets ?? []) if (!sought?.has(inode)) return false;
  return true;
}

/** A process's place; undefined when it exited meanwhile. */
function readPlace(proc: string, pid: number): ProcessPlace | undefined {
  try {
    const pod = podOfCgroup(readFileSync(join(proc, String(pid), 'cgroup'), 'utf8'));
    return { pod, netns: pod ? readlinkSync(join(proc, String(pid), 'ns', 'net')) : '' };
  } catch {
    return undefined;
  }
}
