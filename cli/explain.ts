// `naat explain`: what the gateways that serve a pod would do with a new flow from it (or from one
// of its applications) to a destination, on each of their nodes: the gateway's compiled config
// rendered into the table its agents hold, with the uplinks' health as their nodes last reported
// it, and the first packet traced through it (dataplane/explain.ts). Pure.
import { contains, type GatewayConfig } from '../contracts/gateway/index.ts';
import { explainFlow, type Explanation } from '../dataplane/index.ts';
import type { Application } from '../proto/index.ts';
import type { View } from './output.ts';

export interface ExplainedPod {
  namespace: string;
  name: string;
  addresses: readonly string[];
}

export interface ExplainQuestion {
  pod: ExplainedPod;
  destination: string;
  port: number;
  transport: 'tcp' | 'udp';
  /** The application as the pod's sidecar would report it; undefined for the pod's own rules. */
  application?: Partial<Pick<Application, 'processName' | 'executable' | 'containerName' | 'uid'>>;
}

export interface GatewayFacts {
  config: GatewayConfig;
  /** The nodes its agents run on. */
  nodes: readonly string[];
  /** Uplink health per node, as the Uplinks' status holds it. */
  health: ReadonlyMap<string, ReadonlyMap<string, boolean>>;
}

export interface ExplainedFlow extends Explanation {
  gateway: string;
  /** The gateway node; '' when no agent runs, where only the uplinks of every node count. */
  node: string;
  source: string;
}

/** `ADDRESS:PORT[/tcp|udp]`, IPv6 in brackets; undefined when it is not that. */
export function parseDestination(
  text: string,
): { destination: string; port: number; transport: 'tcp' | 'udp' } | undefined {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})(?:\/(tcp|udp))?$/.exec(text);
  const port = Number(match?.[3]);
  if (!match || port < 1 || port > 65535) return undefined;
  return { destination: (match[1] ?? match[2])!, port, transport: (match[4] as 'tcp' | 'udp' | undefined) ?? 'tcp' };
}

/** Whether the gateway serves the pod: it lists the pod, or one of its addresses is a source. */
export function serves(config: GatewayConfig, pod: ExplainedPod): boolean {
  return (
    config.pods.some((p) => p.namespace === pod.namespace && p.name === pod.name) ||
    pod.addresses.some((address) => config.sources.some((source) => contains(source, address)))
  );
}

const familyOf = (address: string) => (address.includes(':') ? 6 : 4);

/** The flow explained on every node of every gateway that serves the pod. */
export function explainPodFlow(
  question: ExplainQuestion,
  gateways: ReadonlyMap<string, GatewayFacts>,
): ExplainedFlow[] {
  const source = question.pod.addresses.find((a) => familyOf(a) === familyOf(question.destination));
  if (!source) {
    throw new Error(
      `pod ${question.pod.namespace}/${question.pod.name} has no IPv${familyOf(question.destination)} address`,
    );
  }
  const application: Application | undefined = question.application && {
    processName: '',
    executable: '',
    commandLine: [],
    containerName: '',
    containerId: '',
    uid: 0,
    pid: 0,
    ...question.application,
  };
  const flow = {
    transport: question.transport,
    source,
    destination: question.destination,
    port: question.port,
    ...(application ? { application } : {}),
  };
  return [...gateways]
    .filter(([, facts]) => serves(facts.config, question.pod))
    .sort(([a], [b]) => a.localeCompare(b))
    .flatMap(([gateway, facts]) =>
      (facts.nodes.length ? [...facts.nodes].sort() : ['']).map((node) => ({
        gateway,
        node,
        source,
        ...explainFlow(facts.config, node, flow, facts.health.get(node)),
      })),
    );
}

export function explainView(question: ExplainQuestion, flows: readonly ExplainedFlow[]): View {
  const { pod } = question;
  return {
    data: {
      pod: { namespace: pod.namespace, name: pod.name },
      destination: question.destination,
      port: question.port,
      transport: question.transport,
      ...(question.application ? { application: question.application } : {}),
      flows,
    },
    sections: [
      {
        title: 'Explanation',
        columns: [
          { header: 'gateway' },
          { header: 'node' },
          { header: 'verdict' },
          { header: 'rule' },
          { header: 'uplink' },
          { header: 'source', wide: true },
        ],
        rows: flows.map((f) => [
          f.gateway,
          f.node || '<any>',
          f.allowed ? 'Allow' : 'Deny',
          f.rule ?? '<default action>',
          f.uplink ?? (f.balanced ? `balanced over ${f.candidates.join(',')}` : '<none>'),
          f.source,
        ]),
        empty: `No gateway serves pod ${pod.namespace}/${pod.name}: its flows leave as the cluster sends them.`,
      },
    ],
  };
}
