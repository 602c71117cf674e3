// The owner's side of flow replication (flow-replica.ts): the flows translated to the failover
// addresses this node owns, from the agent's conntrack events and a listing of each address every
// `refreshMs`, streamed to the gateway's other nodes at GET /failover/flows on the agent's health
// port, over mutual TLS only (plainAndMutualTls in link-tls.ts gives the node of the client's
// certificate) and only to the nodes of config.failover.nodes.
//
// A stream opens with every flow known (its first round) and `synced`, once each owned address
// has been listed (until then the next whole round ends with it); then carries each flow as
// it starts or ends, and every `refreshMs` every flow again (with the timeout it has left, which
// keeps an idle UDP flow alive in the replicas as long as in the kernel) and `synced`. A peer that
// reads too slowly is cut once `maxBufferedBytes` wait for it: it connects again and gets a whole
// round, while the others go on.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Flow, FlowEvent } from '../conntrack.ts';
import { encodeMessage, FlowReplica, messagesOf, replicaFlowOf, type FlowMessage } from './flow-replica.ts';

export const flowsPath = '/failover/flows';

export interface FlowSourceOptions {
  /** The flows translated to `address` now (ExecConntrack.list with it as the reply destination). */
  list: (address: string) => Promise<Flow[]>;
  /** How often every flow is sent again: 10 s, well within UDP's shortest conntrack timeout (30 s). */
  refreshMs?: number;
  /** How much may wait unsent to one peer before its stream is cut: 16 MiB. */
  maxBufferedBytes?: number;
  /** The most flows kept. */
  limit?: number;
  log?: (level: 'info' | 'error', message: string, fields: Record<string, unknown>) => void;
  now?: () => number;
}

interface Stream {
  node: string;
  res: ServerResponse;
}

/** The replica's name for this node's own flows. */
const self = '';

export class FlowSource {
  #owned = new Set<string>();
  /** The owned addresses a round has listed since they became this node's: the table is whole for them. */
  readonly #listed = new Set<string>();
  #peers = new Set<string>();
  readonly #table: FlowReplica;
  readonly #streams = new Set<Stream>();
  readonly #list: FlowSourceOptions['list'];
  readonly #refreshMs: number;
  readonly #maxBufferedBytes: number;
  readonly #log: NonNullable<FlowSourceOptions['log']>;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  #refreshing: Promise<void> | undefined;

  constructor(options: FlowSourceOptions) {
    this.#list = options.list;
    this.#refreshMs = options.refreshMs ?? 10_000;
    this.#maxBufferedBytes = options.maxBufferedBytes ?? 16 << 20;
    this.#table = new FlowReplica(options.limit);
    this.#log = options.log ?? (() => {});
    this.#now = options.now ?? Date.now;
  }

  /** The addresses this node owns now; a new one is listed at once, one given up is forgotten. */
  setOwned(addresses: readonly string[]): void {
    const next = new Set(addresses);
    for (const address of this.#owned) {
      if (next.has(address)) continue;
      this.#table.forget(address);
      this.#listed.delete(address);
    }
    const added = [...next].some((address) => !this.#owned.has(address));
    this.#owned = next;
    if (added && this.#timer) void this.refresh();
  }

  /** The nodes that may follow (config.failover.nodes but this one); the streams of others end. */
  setPeers(nodes: readonly string[]): void {
    this.#peers = new Set(nodes);
    for (const stream of this.#streams) if (!this.#peers.has(stream.node)) this.#end(stream);
  }

  /** Takes a batch of the agent's conntrack events. */
  onEvents(events: readonly FlowEvent[]): void {
    if (!this.#owned.size) return;
    const messages = messagesOf(events, this.#owned);
    if (!messages.length) return;
    const now = this.#now();
    for (const message of messages) this.#table.apply(self, message, now);
    this.#send(messages);
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.refresh(), this.#refreshMs);
    this.#timer.unref();
    void this.refresh();
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    for (const stream of this.#streams) this.#end(stream);
  }

  /** One round: lists each owned address and sends every flow again, then `synced`. */
  refresh(): Promise<void> {
    this.#refreshing ??= this.#round().finally(() => (this.#refreshing = undefined));
    return this.#refreshing;
  }

  async #round(): Promise<void> {
    const started = this.#now();
    const owned = this.#owned;
    const messages: FlowMessage[] = [];
    for (const address of owned) {
      let flows: Flow[];
      try {
        flows = await this.#list(address);
      } catch (error) {
        // Without a whole round, nothing may be taken for gone.
        return this.#log('error', 'Failed to list the flows of a failover address', {
          address,
          error: (error as Error).message,
        });
      }
      for (const flow of flows) {
        const replicated = replicaFlowOf(flow, owned);
        if (replicated) messages.push({ op: 'flow', flow: replicated });
      }
    }
    const now = this.#now();
    for (const message of messages) this.#table.apply(self, message, now);
    this.#table.synced(self, started);
    for (const address of owned) if (this.#owned.has(address)) this.#listed.add(address);
    this.#send([...messages, { op: 'synced' }]);
  }

  /** Answers GET /failover/flows; `agentNode` is the node of the client's certificate (link-tls.ts). */
  handle(_req: IncomingMessage, res: ServerResponse, agentNode: string | undefined): void {
    if (agentNode === undefined || !this.#peers.has(agentNode)) {
      res.statusCode = 403;
      res.setHeader('content-type', 'application/json');
      const error = `${flowsPath} is answered over mutual TLS to the gateway's other nodes only`;
      return void res.end(`${JSON.stringify({ error })}\n`);
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    const stream = { node: agentNode, res };
    this.#streams.add(stream);
    res.on('close', () => this.#streams.delete(stream));
    const now = this.#now();
    const first: FlowMessage[] = [];
    for (const address of this.#owned)
      for (const flow of this.#table.flows(address, now)) first.push({ op: 'flow', flow });
    // `synced` would tell the peer that what it was not sent is gone: before this node has listed
    // an address it owns (its agent just started, or it just claimed it) its table lacks flows
    // that the peer's replica holds, and the next whole round says `synced` instead.
    if ([...this.#owned].every((address) => this.#listed.has(address))) first.push({ op: 'synced' });
    this.#write(stream, first.map(encodeMessage).join(''));
  }

  /** The flows known per owned address. */
  counts(): Map<string, number> {
    return this.#table.counts();
  }

  #send(messages: readonly FlowMessage[]): void {
    if (!this.#streams.size) return;
    const text = messages.map(encodeMessage).join('');
    for (const stream of this.#streams) this.#write(stream, text);
  }

  #write(stream: Stream, text: string): void {
    if (stream.res.writableLength > this.#maxBufferedBytes) {
      this.#log('error', 'Cut a failover flow stream that fell behind', { node: stream.node });
      return this.#end(stream);
    }
    stream.res.write(text);
  }

  #end(stream: Stream): void {
    this.#streams.delete(stream);
    stream.res.destroy();
  }
}
