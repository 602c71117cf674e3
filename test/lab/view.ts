// The lab's live view: what the gateway agents report (/status, /flows, /metrics) and which
// gateway nodes the worker's node agent sees up (its /status), as one screen of text. readView
// asks them; renderView is pure, so tests can read what a user sees. Flow data comes from each
// agent's secure listener, with a flow reader's token (docs/security.md).
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AgentReport } from '../../dataplane/agent-report.ts';
import type { NodeAgentReport } from '../../dataplane/steering/node-agent.ts';

/** Where the view reads from, and what it knows of the lab's pods. */
export interface ViewSources {
  /** Each gateway node's agent API, and its secure listener of flow data. */
  gateways: Array<{ node: string; url: string; flowUrl: string }>;
  /** How the secure listeners are read. */
  flowAccess: FlowAccess;
  /** The worker's node agent API, which says which gateway nodes it can steer to. */
  nodeAgent?: { node: string; url: string };
  /** The node each pod (`namespace/name`) runs on. */
  podNodes: Map<string, string>;
}

/** A flow as a gateway node's agent reports it, with that node's name. */
export type ViewFlow = AttributedFlow & { gatewayNode: string };

export interface ViewData {
  at: Date;
  /** Per gateway node, its agent's report, or why there is none. */
  gateways: Array<{ node: string; status?: AgentReport; error?: string }>;
  nodeAgent?: { node: string; status?: NodeAgentReport; error?: string };
  podNodes: Map<string, string>;
  flows: ViewFlow[];
  /** naat_application_denials_total by application, summed over the gateway nodes. */
  denials: Map<string, number>;
}

type Labels = Pick<AttributedFlow, 'application' | 'pod'>;

/**
 * What the view has learnt about the flows it has seen. The agent names a flow's application only
 * while the sidecar reports its socket, which ends when the program closes it, while the flow
 * stays in the table until conntrack forgets it; the view keeps the name for the flow's life.
 */
export class FlowMemory {
  readonly #labels = new Map<string, Labels>();
  readonly #pods: Map<string, { namespace: string; name: string }>;

  /** `pods`: the pod that holds each address, for flows of pods whose sidecar said nothing yet. */
  constructor(pods: Map<string, { namespace: string; name: string }>) {
    this.#pods = pods;
  }

  /** The flows with what was learnt of them filled in; forgets the flows that are gone. */
  label<F extends AttributedFlow>(flows: F[]): F[] {
    const key = (f: AttributedFlow) =>
      `${f.protocol} ${f.source}:${f.sourcePort} ${f.destination}:${f.destinationPort}`;
    const seen = new Set<string>();
    const labelled = flows.map((flow) => {
      const k = key(flow);
      seen.add(k);
      const known = { ...this.#labels.get(k), ...(flow.application ? { application: flow.application } : {}) };
      const pod = flow.pod ?? known.pod ?? this.#pods.get(flow.source);
      this.#labels.set(k, { ...known, ...(pod ? { pod } : {}) });
      return { ...flow, ...known, ...(pod ? { pod } : {}) };
    });
    for (const k of this.#labels.keys()) if (!seen.has(k)) this.#labels.delete(k);
    return labelled;
  }
}

async function get(url: string): Promise<string> {
  const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.text();
}

/** The files with which the lab reads flow data: the agents' CA, and a flow reader's token. */
export interface FlowAccess {
  ca: string;
  token: string;
}

/** GETs `url` from a gateway agent's secure listener as the lab's flow reader. */
export async function getFlowData(access: FlowAccess, url: string, timeoutMs = 2000): Promise<string> {
  const [ca, token] = await Promise.all([readFile(access.ca, 'utf8'), readFile(access.token, 'utf8')]);
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { ca, headers: { authorization: `Bearer ${token.trim()}` }, signal: AbortSignal.timeout(timeoutMs) },
      (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
        res.on('end', () =>
          res.statusCode === 200 ? resolve(text) : reject(new Error(`${url}: HTTP ${res.statusCode}`)),
        );
      },
    );
    req.on('error', reject).end();
  });
}

export async function readView(sources: ViewSources, memory: FlowMemory): Promise<ViewData> {
  const gateways = await Promise.all(
    sources.gateways.map(async ({ node, url, flowUrl }) => {
      try {
        const [status, flows, metrics] = await Promise.all([
          get(`${url}/status`),
          getFlowData(sources.flowAccess, `${flowUrl}/flows`),
          get(`${url}/metrics`),
        ]);
        return {
          node,
          status: JSON.parse(status) as AgentReport,
          flows: JSON.parse(flows) as AttributedFlow[],
          metrics,
        };
      } catch (error) {
        return { node, error: (error as Error).message, flows: [], metrics: '' };
      }
    }),
  );
  const nodeAgent = sources.nodeAgent
    ? await get(`${sources.nodeAgent.url}/status`).then(
        (text) => ({ node: sources.nodeAgent!.node, status: JSON.parse(text) as NodeAgentReport }),
        (error: Error) => ({ node: sources.nodeAgent!.node, error: error.message }),
      )
    : undefined;
  const denials = new Map<string, number>();
  for (const { metrics } of gateways) {
    for (const match of metrics.matchAll(/^naat_application_denials_total\{application="([^"]*)"\} (\S+)$/gm)) {
      denials.set(match[1]!, (denials.get(match[1]!) ?? 0) + Number(match[2]));
    }
  }
  const flows = memory.label(gateways.flatMap((g) => g.flows.map((flow) => ({ ...flow, gatewayNode: g.node }))));
  return {
    at: new Date(),
    gateways: gateways.map(({ node, status, error }) => ({
      node,
      ...(status ? { status } : {}),
      ...(error ? { error } : {}),
    })),
    ...(nodeAgent ? { nodeAgent } : {}),
    podNodes: sources.podNodes,
    flows,
    denials,
  };
}

const pad = (text: string | number, width: number) => String(text).padEnd(width).slice(0, width);
const padLeft = (text: string | number, width: number) => String(text).padStart(width);
const podName = (flow: AttributedFlow) => (flow.pod ? `${flow.pod.namespace}/${flow.pod.name}` : undefined);

/**
 * The screen: gateway nodes (up as the worker's node agent sees them), uplinks per gateway node
 * with health and share of flows, applications per pod with the node it runs on and the gateway
 * nodes and uplinks its flows leave through, recent flows, denials.
 */
export function renderView(data: ViewData, recent = 12): string {
  const { flows } = data;
  const lines: string[] = [];
  const gateway = data.gateways.find((g) => g.status?.gateway)?.status?.gateway ?? '-';
  lines.push(`naat lab  ${data.at.toISOString().slice(11, 19)}  gateway ${gateway}  flows ${flows.length}`);

  const peers = new Map((data.nodeAgent?.status?.peers ?? []).map((peer) => [peer.node, peer.up]));
  lines.push('', `GATEWAY NODE  STEERING  CONFIG           UPLINKS UP  FLOWS  ASSOCIATED`);
  for (const { node, status, error } of data.gateways) {
    const steering = peers.has(node) ? (peers.get(node) ? 'up' : 'DOWN') : '-';
    if (!status) {
      lines.push(`${pad(node, 13)} ${pad(steering, 9)} (agent: ${error})`);
      continue;
    }
    const healthy = status.uplinks.filter((u) => u.healthy).length;
    lines.push(
      [
        pad(node, 13),
        pad(steering, 9),
        pad(status.appliedHash?.slice(0, 15) ?? 'not applied', 16),
        padLeft(`${healthy}/${status.uplinks.length}`, 10),
        padLeft(status.flows, 6),
        padLeft(status.associations, 11),
      ].join(' ') + (status.lastSync?.error ? `  last sync FAILED: ${status.lastSync.error}` : ''),
    );
  }
  if (data.nodeAgent) {
    const { node, status, error } = data.nodeAgent;
    lines.push(
      status
        ? `(STEERING: whether ${node}'s node agent steers new flows to the node; config ${status.appliedHash?.slice(0, 15) ?? 'not applied'})`
        : `(${node}'s node agent: ${error})`,
    );
  }

  lines.push('', 'UPLINK  NODE       HEALTH  SINCE     LATENCY   LOSS  FLOWS  SHARE');
  const uplinks = data.gateways.flatMap(({ node, status }) => (status?.uplinks ?? []).map((u) => ({ node, ...u })));
  const total = uplinks.reduce((sum, u) => sum + u.activeFlows, 0);
  for (const uplink of uplinks.sort((a, b) => a.name.localeCompare(b.name) || a.node.localeCompare(b.node))) {
    const share = total ? uplink.activeFlows / total : 0;
    lines.push(
      [
        pad(uplink.name, 7),
        pad(uplink.node, 10),
        pad(uplink.healthy ? 'up' : 'DOWN', 7),
        pad(uplink.since.slice(11, 19), 9),
        padLeft(uplink.latencyMs === undefined ? '-' : `${uplink.latencyMs.toFixed(1)} ms`, 8),
        padLeft(uplink.lossPercent === undefined ? '-' : `${Math.round(uplink.lossPercent)}%`, 5),
        padLeft(uplink.activeFlows, 6),
        ` ${'█'.repeat(Math.round(share * 20)).padEnd(20, '·')} ${Math.round(share * 100)}%`,
      ].join(' '),
    );
  }

  lines.push('', 'POD            NODE       APPLICATION  FLOWS  LEAVE THROUGH (GATEWAY NODE/UPLINK)');
  const byApp = new Map<string, Map<string, number>>();
  for (const flow of flows) {
    const key = `${podName(flow) ?? flow.source}\t${flow.application?.processName ?? '(not known)'}`;
    const ways = byApp.get(key) ?? new Map<string, number>();
    const way = `${flow.gatewayNode}/${flow.uplinkName ?? '?'}`;
    ways.set(way, (ways.get(way) ?? 0) + 1);
    byApp.set(key, ways);
  }
  for (const [key, ways] of [...byApp].sort(([a], [b]) => a.localeCompare(b))) {
    const [pod, application] = key.split('\t') as [string, string];
    const count = [...ways.values()].reduce((a, b) => a + b, 0);
    const split = [...ways].sort(([a], [b]) => a.localeCompare(b)).map(([w, n]) => `${w}:${n}`);
    lines.push(
      `${pad(pod, 14)} ${pad(data.podNodes.get(pod) ?? '-', 10)} ${pad(application, 12)} ${padLeft(count, 5)}  ${split.join(' ')}`,
    );
  }

  lines.push('', 'RECENT FLOWS (newest first)');
  lines.push(
    'STARTED   POD            APPLICATION  SOURCE               DESTINATION          GATEWAY    UPLINK  MAPPED TO',
  );
  const newest = [...flows].sort((a, b) => Date.parse(String(b.startedAt)) - Date.parse(String(a.startedAt)));
  for (const flow of newest.slice(0, recent)) {
    lines.push(
      [
        pad(new Date(flow.startedAt).toISOString().slice(11, 19), 9),
        pad(podName(flow) ?? '-', 14),
        pad(flow.application?.processName ?? '-', 12),
        pad(`${flow.source}:${flow.sourcePort ?? ''}`, 20),
        pad(`${flow.destination}:${flow.destinationPort ?? ''}`, 20),
        pad(flow.gatewayNode, 10),
        pad(flow.uplinkName ?? '-', 7),
        `${flow.mappedAddress}:${flow.mappedPort ?? ''}`,
      ].join(' '),
    );
  }

  lines.push('', 'DENIED FLOWS BY APPLICATION (since the agents started)');
  if (!data.denials.size) lines.push('(none)');
  for (const [application, count] of [...data.denials].sort(([a], [b]) => a.localeCompare(b))) {
    lines.push(`${pad(application, 12)} ${padLeft(count, 6)}`);
  }
  return lines.join('\n');
}
