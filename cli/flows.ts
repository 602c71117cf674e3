// `naat flows` and `naat who`: the live flows of the gateway agents, filtered, and who was behind a
// public address and port at a time, asked of every agent; each agent's answer is JSON as it
// serves it (/flows, /attribution). Pure: the shell asks the agents.
import type { AttributedFlow, AttributionQuery, AttributionRecord } from '../dataplane/index.ts';
import { endpoint } from '../dataplane/index.ts';
import { age, type View } from './output.ts';

/** A value as JSON carries it: dates as ISO 8601 text. */
export type Wire<T> = T extends Date
  ? string
  : T extends readonly (infer E)[]
    ? Wire<E>[]
    : T extends object
      ? { [K in keyof T]: Wire<T[K]> }
      : T;

export type WireFlow = Wire<AttributedFlow>;
export type WireRecord = Wire<AttributionRecord>;

/** Which agent answered: a gateway's agent on one of its nodes. */
export interface AgentRef {
  gateway: string;
  node: string;
}

export interface FlowFilter {
  /** namespace/name of the pod, or a namespace alone (`namespace/`). */
  pod?: string;
  /** The process name the pod's sidecar reported. */
  application?: string;
  uplink?: string;
}

/** `namespace/name` or `namespace/`; undefined when it is neither. */
export function parsePodFilter(text: string): string | undefined {
  return /^[a-z0-9][-a-z0-9.]*\/([a-z0-9][-a-z0-9.]*)?$/.test(text) ? text : undefined;
}

export function matchesFlow(flow: WireFlow, filter: FlowFilter): boolean {
  const pod = flow.pod ? `${flow.pod.namespace}/${flow.pod.name}` : undefined;
  if (filter.pod !== undefined && !(filter.pod.endsWith('/') ? pod?.startsWith(filter.pod) : pod === filter.pod))
    return false;
  if (filter.application !== undefined && flow.application?.processName !== filter.application) return false;
  return filter.uplink === undefined || flow.uplinkName === filter.uplink;
}

export type AgentFlows = AgentRef & { flow: WireFlow };

export function flowsView(flows: readonly AgentFlows[], filter: FlowFilter, now: Date): View {
  const shown = flows
    .filter(({ flow }) => matchesFlow(flow, filter))
    .sort((a, b) => b.flow.startedAt.localeCompare(a.flow.startedAt));
  return {
    data: shown,
    sections: [
      {
        title: 'Flows',
        columns: [
          { header: 'pod' },
          { header: 'application' },
          { header: 'protocol' },
          { header: 'source' },
          { header: 'destination' },
          { header: 'uplink' },
          { header: 'translated' },
          { header: 'age' },
          { header: 'gateway', wide: true },
          { header: 'node', wide: true },
          { header: 'container', wide: true },
          { header: 'bytes sent', wide: true },
          { header: 'bytes received', wide: true },
        ],
        rows: shown.map(({ gateway, node, flow }) => [
          flow.pod ? `${flow.pod.namespace}/${flow.pod.name}` : '<unknown>',
          flow.application?.processName ?? '',
          flow.protocol,
          endpoint(flow.source, flow.sourcePort),
          endpoint(flow.destination, flow.destinationPort),
          flow.uplinkName ?? '',
          endpoint(flow.mappedAddress, flow.mappedPort),
          age(flow.startedAt, now),
          gateway,
          node,
          flow.application?.containerName ?? '',
          flow.counters ? String(flow.counters.bytesSent) : '',
          flow.counters ? String(flow.counters.bytesReceived) : '',
        ]),
        empty: 'No flows.',
      },
    ],
  };
}

export type AgentRecords = AgentRef & { record: WireRecord };

/** Who held the address and port at the time, across the agents, the latest translation first. */
export function whoView(query: AttributionQuery, records: readonly AgentRecords[]): View {
  const sorted = [...records].sort((a, b) => b.record.start.localeCompare(a.record.start));
  return {
    data: sorted,
    sections: [
      {
        title: 'Translations',
        columns: [
          { header: 'pod' },
          { header: 'container' },
          { header: 'application' },
          { header: 'policy' },
          { header: 'verdict' },
          { header: 'uplink' },
          { header: 'from' },
          { header: 'until' },
          { header: 'gateway', wide: true },
          { header: 'node', wide: true },
          { header: 'source', wide: true },
          { header: 'destination', wide: true },
          { header: 'executable', wide: true },
          { header: 'uid', wide: true },
        ],
        rows: sorted.map(({ gateway, node, record: r }) => [
          r.pod ? `${r.pod.namespace}/${r.pod.name}` : '<unknown>',
          r.container ?? '',
          r.application?.processName ?? '',
          r.policy ? `${r.policy}#${r.rule}` : '<default action>',
          r.verdict,
          r.uplink ?? '',
          r.start,
          r.end ?? '<open>',
          gateway,
          node,
          endpoint(r.source, r.sourcePort),
          endpoint(r.destination, r.destinationPort),
          r.application?.executable ?? '',
          r.application ? String(r.application.uid) : '',
        ]),
        empty: `No translation held ${endpoint(query.address, query.port)} at ${query.at.toISOString()}.`,
      },
    ],
  };
}
