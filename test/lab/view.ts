// The lab's live view: what the dataplane agent reports (/status, /flows, /metrics), as one
// screen of text. readView asks the agent; renderView is pure, so tests can read what a user sees.
import type { AttributedFlow } from '../../dataplane/agent.ts';
import type { AgentReport } from '../../dataplane/agent-report.ts';

export interface ViewData {
  at: Date;
  status: AgentReport;
  flows: AttributedFlow[];
  /** naat_application_denials_total by application. */
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
  label(flows: AttributedFlow[]): AttributedFlow[] {
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

export async function readView(agentUrl: string, memory: FlowMemory): Promise<ViewData> {
  const get = async (path: string) => {
    const response = await fetch(`${agentUrl}${path}`);
    if (!response.ok) throw new Error(`${agentUrl}${path}: HTTP ${response.status}`);
    return response.text();
  };
  const [status, flows, metrics] = await Promise.all([get('/status'), get('/flows'), get('/metrics')]);
  const denials = new Map<string, number>();
  for (const match of metrics.matchAll(/^naat_application_denials_total\{application="([^"]*)"\} (\S+)$/gm)) {
    denials.set(match[1]!, Number(match[2]));
  }
  return { at: new Date(), status: JSON.parse(status), flows: memory.label(JSON.parse(flows)), denials };
}

const pad = (text: string | number, width: number) => String(text).padEnd(width).slice(0, width);
const padLeft = (text: string | number, width: number) => String(text).padStart(width);

/** The screen: uplinks with health and share of flows, applications per pod, recent flows, denials. */
export function renderView(data: ViewData, recent = 12): string {
  const { status, flows } = data;
  const lines: string[] = [];
  lines.push(
    `naat lab  ${data.at.toISOString().slice(11, 19)}  node ${status.node}  gateway ${status.gateway ?? '-'}  ` +
      `config ${status.appliedHash?.slice(0, 15) ?? 'not applied'}  flows ${status.flows}  associated ${status.associations}`,
  );
  if (status.lastSync?.error) lines.push(`last sync FAILED: ${status.lastSync.error}`);

  lines.push('', 'UPLINK  HEALTH  SINCE     LATENCY   LOSS  FLOWS  SHARE');
  const total = status.uplinks.reduce((sum, u) => sum + u.activeFlows, 0);
  for (const uplink of status.uplinks) {
    const share = total ? uplink.activeFlows / total : 0;
    lines.push(
      [
        pad(uplink.name, 7),
        pad(uplink.healthy ? 'up' : 'DOWN', 7),
        pad(uplink.since.slice(11, 19), 9),
        padLeft(uplink.latencyMs === undefined ? '-' : `${uplink.latencyMs.toFixed(1)} ms`, 8),
        padLeft(uplink.lossPercent === undefined ? '-' : `${Math.round(uplink.lossPercent)}%`, 5),
        padLeft(uplink.activeFlows, 6),
        ` ${'█'.repeat(Math.round(share * 20)).padEnd(20, '·')} ${Math.round(share * 100)}%`,
      ].join(' '),
    );
  }

  lines.push('', 'POD            APPLICATION  FLOWS  BY UPLINK');
  const byApp = new Map<string, Map<string, number>>();
  for (const flow of flows) {
    const pod = flow.pod ? `${flow.pod.namespace}/${flow.pod.name}` : flow.source;
    const key = `${pod}\t${flow.application?.processName ?? '(not known yet)'}`;
    const uplinks = byApp.get(key) ?? new Map<string, number>();
    uplinks.set(flow.uplinkName ?? '?', (uplinks.get(flow.uplinkName ?? '?') ?? 0) + 1);
    byApp.set(key, uplinks);
  }
  for (const [key, uplinks] of [...byApp].sort(([a], [b]) => a.localeCompare(b))) {
    const [pod, application] = key.split('\t') as [string, string];
    const count = [...uplinks.values()].reduce((a, b) => a + b, 0);
    const split = [...uplinks].sort(([a], [b]) => a.localeCompare(b)).map(([u, n]) => `${u}:${n}`);
    lines.push(`${pad(pod, 14)} ${pad(application, 12)} ${padLeft(count, 5)}  ${split.join(' ')}`);
  }

  lines.push('', 'RECENT FLOWS (newest first)');
  lines.push('STARTED   POD            APPLICATION  SOURCE               DESTINATION          UPLINK  MAPPED TO');
  const newest = [...flows].sort((a, b) => Date.parse(String(b.startedAt)) - Date.parse(String(a.startedAt)));
  for (const flow of newest.slice(0, recent)) {
    lines.push(
      [
        pad(new Date(flow.startedAt).toISOString().slice(11, 19), 9),
        pad(flow.pod ? `${flow.pod.namespace}/${flow.pod.name}` : '-', 14),
        pad(flow.application?.processName ?? '-', 12),
        pad(`${flow.source}:${flow.sourcePort ?? ''}`, 20),
        pad(`${flow.destination}:${flow.destinationPort ?? ''}`, 20),
        pad(flow.uplinkName ?? '-', 7),
        `${flow.mappedAddress}:${flow.mappedPort ?? ''}`,
      ].join(' '),
    );
  }

  lines.push('', 'DENIED FLOWS BY APPLICATION (since the agent started)');
  if (!data.denials.size) lines.push('(none)');
  for (const [application, count] of [...data.denials].sort(([a], [b]) => a.localeCompare(b))) {
    lines.push(`${pad(application, 12)} ${padLeft(count, 6)}`);
  }
  return lines.join('\n');
}
