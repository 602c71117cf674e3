// The naat CLI, also a kubectl plugin (cli/naat launches it, as `naat` or as `kubectl-naat`). It
// works through the apiserver alone, with the user's kubeconfig: docs/cli.md says what each
// command reads and the RBAC it needs.
import { KubeConfig } from '@kubernetes/client-node';
import { parseCommandLine, usageError } from '../common/index.ts';
import { parseAttributionQuery } from '../dataplane/index.ts';
import { NaatCluster, type AgentTarget } from './cluster.ts';
import { explainPodFlow, explainView, parseDestination, type ExplainQuestion, type GatewayFacts } from './explain.ts';
import {
  flowsView,
  parsePodFilter,
  whoView,
  type AgentFlows,
  type AgentRecords,
  type WireFlow,
  type WireRecord,
} from './flows.ts';
import { outputFormats, parseOutputFormat, renderView, type View } from './output.ts';
import { gatewayStatus, statusView } from './status.ts';

const usage = `usage: naat COMMAND [options]   (kubectl naat COMMAND …; from the source tree: npm run naat -- COMMAND …)
  status [--failover-minutes M]    gateways, their nodes, uplink health per node, egress addresses
                                and the nodes that own them, steering readiness, and uplinks whose
                                health changed in the last M minutes (default 60)
  flows [--gateway NAME] [--pod NAMESPACE/NAME | --pod NAMESPACE/] [--application PROCESS]
        [--uplink NAME]         the live flows of every gateway agent, filtered
  who --address A --port P [--at ISO8601] [--gateway NAME]
                                who was behind public address A, port P at that time (default
                                now), asked of every gateway agent
  explain --pod NAMESPACE/NAME --to ADDRESS:PORT[/tcp|udp] [--application PROCESS]
          [--container NAME] [--executable PATH] [--uid N]
                                the verdict, rule and uplink each gateway node serving the pod
                                gives a new flow from it (or from that application) to the
                                destination, traced through the table its agents render
options of every command:
  -o, --output ${outputFormats.join('|')}   (default table)
  -n, --namespace NAMESPACE     where naat is installed (default $NAAT_NAMESPACE or naat-system)
  --kubeconfig FILE             (default $KUBECONFIG or ~/.kube/config)
  --context NAME                a context of the kubeconfig other than its current one
  --help                        this text
flows and who read the agents through pods/portforward: docs/cli.md lists the RBAC each command needs.`;

const { positionals, values } = parseCommandLine(usage, {
  allowPositionals: true,
  options: {
    output: { type: 'string', short: 'o', default: 'table' },
    namespace: { type: 'string', short: 'n', default: process.env.NAAT_NAMESPACE ?? 'naat-system' },
    kubeconfig: { type: 'string' },
    context: { type: 'string' },
    'failover-minutes': { type: 'string', default: '60' },
    gateway: { type: 'string' },
    pod: { type: 'string' },
    application: { type: 'string' },
    uplink: { type: 'string' },
    address: { type: 'string' },
    port: { type: 'string' },
    at: { type: 'string' },
    to: { type: 'string' },
    container: { type: 'string' },
    executable: { type: 'string' },
    uid: { type: 'string' },
  },
});

const output = parseOutputFormat(values.output!) ?? usageError(usage, `--output takes ${outputFormats.join(', ')}`);

function cluster(): NaatCluster {
  const kubeConfig = new KubeConfig();
  if (values.kubeconfig) kubeConfig.loadFromFile(values.kubeconfig);
  else kubeConfig.loadFromDefault();
  if (values.context) kubeConfig.setCurrentContext(values.context);
  return new NaatCluster(kubeConfig, values.namespace!);
}

/** The agents the command asks: those of --gateway, or all; an error when there are none. */
async function agentsOf(naat: NaatCluster): Promise<AgentTarget[]> {
  const agents = (await naat.agents()).filter((a) => values.gateway === undefined || a.gateway === values.gateway);
  if (!agents.length) {
    throw new Error(
      `no gateway agent runs${values.gateway ? ` for gateway ${values.gateway}` : ''} in namespace ${naat.namespace}`,
    );
  }
  return agents;
}

/**
 * Asks every agent at once; what the reachable ones answered is printed, each that failed is
 * named on stderr, and the command then exits 1.
 */
async function askAgents<T>(naat: NaatCluster, agents: AgentTarget[], path: string): Promise<Array<[AgentTarget, T]>> {
  const answers = await Promise.allSettled(agents.map((agent) => naat.fromAgent<T>(agent, path)));
  const answered: Array<[AgentTarget, T]> = [];
  answers.forEach((answer, i) => {
    if (answer.status === 'fulfilled') answered.push([agents[i]!, answer.value]);
    else {
      console.error(`naat: ${(answer.reason as Error).message}`);
      process.exitCode = 1;
    }
  });
  return answered;
}

async function status(): Promise<View> {
  const minutes = Number(values['failover-minutes']);
  if (!(minutes > 0)) usageError(usage, '--failover-minutes takes a number above 0');
  const naat = cluster();
  const [gateways, uplinks, configs, agents] = await Promise.all([
    naat.gateways(),
    naat.uplinks(),
    naat.configs(),
    naat.agents(),
  ]);
  const now = new Date();
  const found = gatewayStatus({ gateways, uplinks, configs, agents, now, failoverWindowMs: minutes * 60_000 });
  return statusView(found, now);
}

async function flows(): Promise<View> {
  if (values.pod !== undefined && !parsePodFilter(values.pod))
    usageError(usage, '--pod takes NAMESPACE/NAME or NAMESPACE/');
  const naat = cluster();
  const answers = await askAgents<WireFlow[]>(naat, await agentsOf(naat), '/flows');
  const found: AgentFlows[] = answers.flatMap(([agent, list]) =>
    list.map((flow) => ({ gateway: agent.gateway, node: agent.node, flow })),
  );
  return flowsView(
    found,
    {
      ...(values.pod !== undefined ? { pod: values.pod } : {}),
      ...(values.application !== undefined ? { application: values.application } : {}),
      ...(values.uplink !== undefined ? { uplink: values.uplink } : {}),
    },
    new Date(),
  );
}

async function who(): Promise<View> {
  const params = new URLSearchParams({
    address: values.address ?? '',
    port: values.port ?? '',
    at: values.at ?? new Date().toISOString(),
  });
  const query = parseAttributionQuery(params);
  if (typeof query === 'string') usageError(usage, `--${query}`);
  const naat = cluster();
  const answers = await askAgents<WireRecord[]>(naat, await agentsOf(naat), `/attribution?${params}`);
  const found: AgentRecords[] = answers.flatMap(([agent, records]) =>
    records.map((record) => ({ gateway: agent.gateway, node: agent.node, record })),
  );
  return whoView(query, found);
}

async function explain(): Promise<View> {
  const [namespace, name, extra] = (values.pod ?? '').split('/');
  if (!namespace || !name || extra !== undefined) usageError(usage, 'explain needs --pod NAMESPACE/NAME');
  const to = parseDestination(values.to ?? '') ?? usageError(usage, 'explain needs --to ADDRESS:PORT[/tcp|udp]');
  if (values.uid !== undefined && !/^\d+$/.test(values.uid)) usageError(usage, '--uid takes a whole number');
  const application = {
    ...(values.application !== undefined ? { processName: values.application } : {}),
    ...(values.container !== undefined ? { containerName: values.container } : {}),
    ...(values.executable !== undefined ? { executable: values.executable } : {}),
    ...(values.uid !== undefined ? { uid: Number(values.uid) } : {}),
  };
  const naat = cluster();
  const [pod, configs, agents, uplinks] = await Promise.all([
    naat.pod(namespace, name),
    naat.configs(),
    naat.agents(),
    naat.uplinks(),
  ]);
  const question: ExplainQuestion = {
    pod,
    ...to,
    ...(Object.keys(application).length ? { application } : {}),
  };
  // Each node's uplink health as its agent last reported it into the Uplinks' status.
  const health = new Map<string, Map<string, boolean>>();
  for (const uplink of uplinks) {
    for (const report of uplink.status?.nodes ?? []) {
      if (!health.has(report.node)) health.set(report.node, new Map());
      health.get(report.node)!.set(uplink.metadata.name, report.healthy);
    }
  }
  const gateways = new Map<string, GatewayFacts>(
    [...configs].map(([gateway, config]) => [
      gateway,
      { config, nodes: agents.filter((a) => a.gateway === gateway).map((a) => a.node), health },
    ]),
  );
  return explainView(question, explainPodFlow(question, gateways));
}

const commands: Record<string, () => Promise<View>> = { status, flows, who, explain };
const command = positionals[0];
if (!command || !commands[command] || positionals.length > 1) {
  usageError(usage, `Unknown command ${positionals.join(' ') || '(none)'}: use status, flows, who or explain`);
}
// Exits once the output is written: a port-forward's WebSocket may still be closing, and the
// answer is complete.
commands[command]().then(
  (view) => process.stdout.write(renderView(view, output), () => process.exit()),
  (error: Error) => {
    console.error(`naat: ${error.message}`);
    process.exit(1);
  },
);
