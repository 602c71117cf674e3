// Conntrack events, as the agent keeps account of them: the flow table, an attribution record per
// flow that leaves through an uplink (with the pod and application behind it), and the counters of
// flows, bytes and decided applications.
import type { AttributionRecord, AttributionStore, AttributionUpdate } from './attribution.ts';
import type { Associations } from './associations.ts';
import type { GatewayConfig } from '../contracts/gateway/index.ts';
import type { Flow, FlowEvent, FlowTable } from './conntrack.ts';
import type { AgentMetrics } from './metrics.ts';
import type { Packet } from './nft/trace.ts';
import type { FlowAssociation } from './render.ts';
import { flowPacket, ruleOf, type FlowVerdict } from './verdict.ts';

export type PodRef = { namespace: string; name: string };

/** The served pods by address, from the config: flows are theirs even without a sidecar. An address listed twice belongs to the first. */
export function podsByAddress(config: GatewayConfig): Map<string, PodRef> {
  const pods = new Map<string, PodRef>();
  for (const { namespace, name, addresses } of config.pods) {
    for (const address of addresses) if (!pods.has(address)) pods.set(address, { namespace, name });
  }
  return pods;
}

/** Who is behind a source: the association's pod and application when known, else the config's pod. */
export function identityOf(pod: PodRef | undefined, a: FlowAssociation | undefined): AttributionUpdate {
  const owner = a?.pod ? podOf(a) : pod;
  if (!a) return owner ? { pod: owner } : {};
  const { processName, executable, uid, containerName } = a.application;
  return {
    ...(owner ? { pod: owner } : {}),
    ...(containerName ? { container: containerName } : {}),
    application: { processName, executable, uid },
    ...(a.trace ? { trace: a.trace } : {}),
  };
}

/** The pod of an association, by namespace and name only (the server's entries also carry its uid). */
export function podOf(a: FlowAssociation): PodRef | undefined {
  return a.pod && { namespace: a.pod.namespace, name: a.pod.name };
}

export interface FlowEventsOptions {
  flows: FlowTable;
  attributions: AttributionStore;
  metrics: AgentMetrics;
  associations: Associations;
  /** The name of the uplink with this id; undefined for 0, not naat's. */
  uplinkName(id: number): string | undefined;
  /** What the ruleset the kernel holds does with this first packet; undefined before the first sync. */
  verdict(packet: Packet): FlowVerdict | undefined;
  /** The config's pod of a source address. */
  pod(address: string): PodRef | undefined;
  /** Called with each attribution record as its flow ends. */
  onFlowEnd?: (record: AttributionRecord) => void;
  /** Called when a flow that ended had an association, which ends with it. */
  onAssociationEnded(): void;
}

export class FlowEvents {
  readonly #o: FlowEventsOptions;

  constructor(options: FlowEventsOptions) {
    this.#o = options;
  }

  /** A batch of events in order; the bytes of the flows that ended go to the counters once per uplink. */
  handle(events: readonly FlowEvent[]): void {
    const bytes = new Map<string, { sent: number; received: number }>();
    for (const event of events) {
      this.#o.flows.apply(event);
      if (event.type === 'new') {
        // As the table has it: a listing may have found the flow before its NEW event came.
        if (event.flow.uplink) this.open(this.#o.flows.get(event.flow.id) ?? event.flow);
      } else {
        this.#end(event.flow, bytes);
      }
    }
    for (const [uplink, { sent, received }] of bytes) {
      this.#o.metrics.bytes.inc({ uplink, direction: 'sent' }, sent);
      this.#o.metrics.bytes.inc({ uplink, direction: 'received' }, received);
    }
  }

  /** Ends the record and the association of a flow, adding its bytes to those of its uplink. */
  #end(flow: Flow, bytes: Map<string, { sent: number; received: number }>): void {
    const { attributions, associations } = this.#o;
    const uplink = this.#o.uplinkName(flow.uplink);
    if (uplink && flow.counters) {
      const counted = bytes.get(uplink) ?? { sent: 0, received: 0 };
      counted.sent += flow.counters.bytesSent;
      counted.received += flow.counters.bytesReceived;
      bytes.set(uplink, counted);
    }
    const ended = attributions.close(flow.id, flow.startedAt, flow.counters);
    if (ended) this.#o.onFlowEnd?.(ended);
    // An association ends with its flow; the sidecar reports the socket again if it lives on.
    if (associations.expire(flow.source, flow.protocol, flow.sourcePort)) this.#o.onAssociationEnded();
  }

  /**
   * Starts the attribution record of a flow that leaves through an uplink. Every field is written,
   * those not known as undefined, so that every record has one shape with its fields in the
   * object (a log holds 100,000 of them) and takes the flow's own strings rather than copies.
   */
  open(flow: Flow): void {
    const { policy, rule } = ruleOf(this.#o.verdict(flowPacket(flow)));
    const who = identityOf(
      this.#o.pod(flow.source),
      this.#o.associations.of(flow.source, flow.protocol, flow.sourcePort),
    );
    this.#o.attributions.open({
      id: flow.id,
      family: flow.family,
      protocol: flow.protocol,
      source: flow.source,
      sourcePort: flow.sourcePort,
      destination: flow.destination,
      destinationPort: flow.destinationPort,
      mappedAddress: flow.mappedAddress,
      mappedPort: flow.mappedPort,
      counters: flow.counters,
      start: flow.startedAt,
      end: undefined,
      uplink: this.#o.uplinkName(flow.uplink),
      pod: who.pod,
      container: who.container,
      application: who.application,
      policy,
      rule,
      // It has an uplink, so the ruleset let it through.
      verdict: 'Allow',
      trace: who.trace,
    });
  }

  /** Opens the records of flows that were open before the agent started, once the ruleset that decided them is known. */
  openUnrecorded(): void {
    for (const flow of this.#o.flows.flows()) if (!this.#o.attributions.isOpen(flow.id)) this.open(flow);
  }

  /**
   * An association that came after its flow started: the flow's record learns the application,
   * and the verdict when it denies the flow. Returns whether a flow through an uplink is now denied
   * (the caller ends it); a flow to the node itself or a bypassed destination is not the gateway's.
   */
  learn(a: FlowAssociation, verdict: FlowVerdict | undefined): boolean {
    const flow = this.#o.flows.fromSource(a.transport, a.sourceAddress, a.sourcePort);
    if (!flow) return false;
    const denied = verdict?.allowed === false;
    this.#o.attributions.update(flow.id, {
      ...identityOf(this.#o.pod(a.sourceAddress), a),
      ...(denied ? { verdict: 'Deny', ...ruleOf(verdict) } : {}),
    });
    return denied;
  }

  /**
   * Counts the flow of an association by its application, once the ruleset has decided it: denied,
   * or allowed through an uplink (flows to bypassed destinations and the node are not the
   * gateway's, and an unconnected socket has no one destination to decide for).
   */
  countDecision(a: FlowAssociation, verdict: FlowVerdict | undefined): void {
    if (!verdict || (verdict.allowed && !verdict.uplink && !verdict.balanced)) return;
    const { metrics } = this.#o;
    const application = metrics.application(a.application.processName);
    metrics.applicationFlows.inc({ application, verdict: verdict.allowed ? 'Allow' : 'Deny' });
    if (!verdict.allowed) metrics.applicationDenials.inc({ application });
  }
}
