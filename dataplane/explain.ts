// What a gateway node would do with a new flow, from the gateway's compiled config alone: the
// table its agent renders, with the flow's association when its application is given, and the
// first packet traced through it as the agent traces the flows it decides (Agent.verdictFor).
// Pure, so that the naat CLI explains a flow without reaching the node, and a test can hold its
// answer against the agent's.
import { valueOf, type GatewayConfig } from '../contracts/gateway/index.ts';
import type { Application } from '../proto/index.ts';
import { localUplinks, maxUplinkId, render, uplinkMarks, type FlowAssociation } from './render.ts';
import { TableIndex, trace } from './nft/trace.ts';
import { allocateUplinkIds } from './uplink-ids.ts';
import { associationPacket, traceVerdict, type FlowVerdict } from './verdict.ts';

export interface FlowQuestion {
  transport: 'tcp' | 'udp';
  /** The pod's address (of the destination's family). */
  source: string;
  destination: string;
  port: number;
  /** The application behind the socket, as its sidecar would report it; without it, the pod's rules. */
  application?: Application;
}

export interface Explanation extends FlowVerdict {
  /**
   * The uplinks new flows of this kind may leave through, found by tracing the packet with every
   * choice of the balancing picks: one for a flow that is not balanced, none for one that leaves
   * through no uplink or is dropped.
   */
  candidates: string[];
}

/** A source port for the question's flow: any port, as an association names one. */
const questionPort = 40000;
/** The most slots a pick is tried with: more than any sum of uplink weights. */
const maxSlots = 100_000;

/**
 * What `node` of the gateway does with the first packet of the flow, with `health` the health of
 * its uplinks there (an uplink missing from it counts as healthy, as a starting agent has it).
 */
export function explainFlow(
  config: GatewayConfig,
  node: string,
  question: FlowQuestion,
  health: ReadonlyMap<string, boolean> = new Map(),
): Explanation {
  const association: FlowAssociation = {
    transport: question.transport,
    sourceAddress: question.source,
    sourcePort: questionPort,
    destinationAddress: question.destination,
    destinationPort: question.port,
    application: question.application ?? ({} as Application),
  };
  const uplinks = localUplinks(config, node);
  const marks = uplinkMarks(config);
  const ids = allocateUplinkIds(
    new Map(),
    uplinks.map((u) => u.name),
    maxUplinkId(marks),
  );
  const { table } = render({
    config,
    node,
    ids,
    health,
    ...(question.application ? { associations: [association] } : {}),
  });
  const names = new Map([...ids].map(([name, id]) => [id, name]));
  const packet = associationPacket(association)!;
  // Traced once per slot of the picks.
  const index = new TableIndex(table);
  const verdict = traceVerdict(index, packet, marks, (id) => names.get(id));
  const candidates = new Set<string>();
  // Each pick takes slot `slot` of its `numgen`/`jhash` range; the ranges are the uplinks' weights.
  let slots = 1;
  for (let slot = 0; slot < slots && verdict.allowed; slot++) {
    const pick = (total: number) => {
      slots = Math.min(maxSlots, Math.max(slots, total));
      return slot % total;
    };
    const result = trace(index, 'prerouting', packet, { random: pick, hash: (_source, total) => pick(total) });
    const uplink = names.get(valueOf(marks, result.ctMark));
    if (result.verdict === 'accept' && uplink !== undefined) candidates.add(uplink);
  }
  return { ...verdict, candidates: [...candidates].sort() };
}
