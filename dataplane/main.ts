// The dataplane agent's entry point. It runs on a gateway node (in a cluster, as the DaemonSet
// that watches its gateway's ConfigMap; standalone, on any Linux host, from a config file):
//
// `usage` below says how it is run (from the source tree: `npm run dataplane -- …`).
// The config is followed as it changes; an invalid version is reported and the last good one
// stays in force. SIGTERM and SIGINT stop the agent and leave the kernel as it is, so flows go on
// through a restart; `remove` is for a gateway that is gone for good. The standard OTEL_*
// variables turn on OpenTelemetry: a span and a log record per flow (see docs/dataplane.md), and
// a span per association that continues its sidecar's trace (see docs/naa.md).
import { writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { hostname } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { Agent, type AgentOptions } from './agent.ts';
import {
  defaultRetention,
  describeAttribution,
  parseAttributionQuery,
  type AttributionRecord,
  type Retention,
} from './attribution.ts';
import { watchConfigMap, watchFile, type ConfigSource } from './config-source.ts';
import { parseGatewayConfig, type GatewayConfig } from '../contracts/gateway/index.ts';
import { parseNodeConfig, type NodeConfig } from '../contracts/gateway/index.ts';
import { ExecConntrack, readConntrackStats } from './conntrack.ts';
import { ExecNftables } from './nft/nftables.ts';
import {
  jsonLogger as log,
  metricsContentType,
  parseCommandLine,
  startTelemetry,
  usageError,
} from '../common/index.ts';
import { HealthMonitor, IpLinkReader } from './probe/index.ts';
import { localUplinks } from './render.ts';
import { ExecRouting } from './routing.ts';
import { NodeAgent, type NodeAgentReport, type RelayFactory } from './steering/node-agent.ts';
import { createPeerMonitor } from './steering/peer-monitor.ts';
import { rendezvous } from './steering/rendezvous.ts';
import { nodeTableName, nodeTunnelOwnership } from './steering/node-plan.ts';
import { ExecTunnelKernel } from './steering/tunnel-kernel.ts';
import { gatewayTunnelOwnership } from './steering/gateway-plan.ts';
import { steeringReadiness } from './steering/gateway-readiness.ts';

const usage = `usage: npm run dataplane -- COMMAND [options]   (compiled: node dataplane/main.js COMMAND …)
  run --config FILE | --config-map NAMESPACE/NAME
                                runs the agent from a config file (followed as it changes) or from
                                the gateway's ConfigMap, watched
      [--node NAME]             this node (default: $NODE_NAME or the host name)
      [--listen ADDR:PORT]      /status, /flows, /metrics, /attribution, /healthz, /readyz and
                                /steering (default 127.0.0.1:7741)
      [--metrics-listen ADDR:PORT]   the same endpoints on a second address
      [--naa-listen ADDR:PORT]  where the sidecars' NAA streams arrive
      [--report]                write this node's uplink health into Uplink status
      [--state-dir DIR] [--reload-ms MS] [--report-ms MS]
      [--attribution-records N] [--attribution-minutes M]   attribution retention
  remove                        takes away everything naat put in the kernel
  node --config FILE | --config-map NAMESPACE/NAME
                                the node agent: steers the served pods of this node to their
                                gateways' nodes, from its NodeConfig (followed as it changes),
                                and relays their sidecars' NAA streams to those nodes (on
                                0.0.0.0 at each gateway's association port)
                                the gateway nodes' health is asked at their /steering; when its
                                ConfigMap is gone at SIGTERM (the node left every gateway), it
                                takes away all it put in the kernel
      [--node NAME] [--state-dir DIR] [--reload-ms MS]
      [--listen ADDR:PORT]      /status (default 127.0.0.1:7742)
      [--report] [--report-ms MS]   write whether steering is ready here into the gateways' status
  node --remove                 takes away everything the node agent put in the kernel
  attribution --address A --port P --at ISO8601 [--agent URL] [--json]
                                who used public address A, port P at that time
  --help                        this text`;

const { positionals, values } = parseCommandLine(usage, {
  allowPositionals: true,
  options: {
    config: { type: 'string', short: 'c' },
    'config-map': { type: 'string' },
    node: { type: 'string', default: process.env.NODE_NAME ?? hostname() },
    'state-dir': { type: 'string' },
    listen: { type: 'string' },
    // The node command's.
    remove: { type: 'boolean', default: false },
    'metrics-listen': { type: 'string' },
    'reload-ms': { type: 'string', default: '1000' },
    report: { type: 'boolean', default: false },
    'naa-listen': { type: 'string' },
    'report-ms': { type: 'string', default: '5000' },
    'attribution-records': { type: 'string', default: String(defaultRetention.maxRecords) },
    'attribution-minutes': { type: 'string', default: String(defaultRetention.maxAgeMs / 60_000) },
    // The attribution command's.
    address: { type: 'string' },
    port: { type: 'string' },
    at: { type: 'string' },
    agent: { type: 'string', default: 'http://127.0.0.1:7741' },
    json: { type: 'boolean', default: false },
  },
});

/** JSON (what the operator writes) is read as JSON: the YAML parser takes a hundred times longer. */
const parseText = (text: string): unknown => (text.trimStart().startsWith('{') ? JSON.parse(text) : parseYaml(text));
const parseConfig = (text: string): GatewayConfig => parseGatewayConfig(parseText(text));
const stateDir = (role: 'gateway' | 'node') =>
  values['state-dir'] ?? (role === 'gateway' ? '/run/naat' : '/run/naat-node');
const listenAddress = (role: 'gateway' | 'node') =>
  values.listen ?? (role === 'gateway' ? '127.0.0.1:7741' : '127.0.0.1:7742');

function retention(): Retention {
  const positive = (flag: 'attribution-records' | 'attribution-minutes') => {
    const value = Number(values[flag]);
    if (!Number.isInteger(value) || value < 1) usageError(usage, `--${flag} takes a whole number above 0`);
    return value;
  };
  return { maxRecords: positive('attribution-records'), maxAgeMs: positive('attribution-minutes') * 60_000 };
}

const writeSysctl = (path: string, value: string) => writeFile(`/proc/sys/${path}`, value);

function agentFor(options: Pick<AgentOptions, 'retention' | 'onFlowEnd'> = {}): Agent {
  const links = new IpLinkReader();
  return new Agent({
    node: values.node!,
    nft: new ExecNftables(['nft'], stateDir('gateway')),
    routing: new ExecRouting(),
    conntrack: new ExecConntrack(),
    stateDir: stateDir('gateway'),
    interfaceAddresses: async (name) => {
      const { ipv4, ipv6 } = await links.addresses(name);
      return [ipv4, ipv6].filter((a): a is string => Boolean(a));
    },
    writeSysctl,
    tunnels: new ExecTunnelKernel(gatewayTunnelOwnership, writeSysctl),
    conntrackStats: () => readConntrackStats(),
    log,
    ...options,
  });
}

async function run(): Promise<void> {
  const limits = retention();
  const telemetry = await startTelemetry('naat-dataplane', {
    'k8s.node.name': values.node!,
    ...(process.env.POD_NAME ? { 'k8s.pod.name': process.env.POD_NAME } : {}),
  });
  const first = await firstConfig(parseConfig, 'gateway config');
  // Without telemetry, an ended flow costs nothing beyond its attribution record.
  const onFlowEnd = telemetry.enabled ? (await import('./flow-telemetry.ts')).exportFlow : undefined;
  const agent = agentFor({ retention: limits, ...(onFlowEnd ? { onFlowEnd } : {}) });
  let config = first.config;
  const monitor = new HealthMonitor({
    uplinks: localUplinks(config, values.node!),
    onChange: (name, health) => {
      agent.setHealth(name, health).catch(() => {});
    },
    // The kernel drops an uplink's routes when its link goes down and does not bring them back.
    onLink: (name, up) => {
      if (up) agent.sync().catch(() => {});
    },
    onError: (name, error) => log.error('Failed to read an uplink interface', { uplink: name, error: error.message }),
  });
  const detail = setInterval(() => {
    for (const [name, health] of monitor.current()) agent.noteHealth(name, health);
  }, 1000);
  detail.unref();
  // Health is known only after the first probe rounds; until then every uplink counts as healthy,
  // so a restarted agent keeps established flows where they are.
  await agent.start(config);
  log.info('Started the dataplane agent', {
    node: values.node,
    gateway: config.gateway,
    uplinks: config.uplinks.length,
    attributionRecords: limits.maxRecords,
    attributionMinutes: limits.maxAgeMs / 60_000,
    telemetry: telemetry.enabled,
  });
  const report = values.report ? await startReporting(agent) : undefined;
  const naa = config.association ? await startNaa(agent, config.association.port, telemetry.enabled) : undefined;

  // Later versions of the config, one at a time, in order.
  let applying = Promise.resolve();
  first.later((text) => {
    applying = applying.then(async () => {
      try {
        config = parseConfig(text);
        monitor.update(localUplinks(config, values.node!));
        await agent.configure(config);
        naa?.pushPolicies();
        log.info('Applied a new gateway config', { gateway: config.gateway, hash: config.hash });
      } catch (error) {
        log.error('Kept the last good gateway config', { error: (error as Error).message });
      }
    });
  });

  const servers = [listenAddress('gateway'), values['metrics-listen']]
    .filter((a) => a !== undefined)
    .map((a) => serve(agent, a));
  const stop = async (signal: string) => {
    log.info('Stopping; the kernel keeps the ruleset', { signal });
    first.source.stop();
    clearInterval(report);
    monitor.stop();
    for (const server of servers) server.close();
    await naa?.close();
    await agent.stop();
    // Exports what the batch processors still hold.
    await telemetry.shutdown();
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}

/**
 * Starts watching the config (--config FILE or --config-map NAMESPACE/NAME) and resolves with its
 * first valid version; later versions go to the callback given to `later`. An invalid first
 * version is logged and waited out.
 */
async function firstConfig<T>(
  parse: (text: string) => T,
  what: string,
): Promise<{
  config: T;
  source: ConfigSource;
  later(f: (text: string) => void): void;
}> {
  let resolveFirst!: (config: T) => void;
  const firstValid = new Promise<T>((resolve) => (resolveFirst = resolve));
  let seen = false;
  // A version that arrives while the agent starts waits here for `later`.
  let pending: string | undefined;
  let next: (text: string) => void = (text) => (pending = text);
  const onText = (text: string) => {
    if (seen) return next(text);
    try {
      resolveFirst(parse(text));
      seen = true;
    } catch (error) {
      log.error(`Waiting for a valid ${what}`, { error: (error as Error).message });
    }
  };
  const onError = (error: Error) => log.error(`Failed to read the ${what}`, { error: error.message });
  let source: ConfigSource;
  if (values['config-map']) {
    const [namespace, name] = values['config-map'].split('/');
    if (!namespace || !name) usageError(usage, '--config-map takes NAMESPACE/NAME');
    const { pooledKubeConfig } = await import('../common/kube/index.ts');
    const kubeConfig = pooledKubeConfig();
    source = await watchConfigMap(kubeConfig, namespace, name, 'config.json', onText, onError);
  } else if (values.config) {
    source = watchFile(values.config, Number(values['reload-ms']), onText, onError);
  } else {
    usageError(usage, `${positionals[0] ?? 'run'} needs --config FILE or --config-map NAMESPACE/NAME`);
  }
  const config = await firstValid;
  return {
    config,
    source,
    later: (f) => {
      next = f;
      if (pending !== undefined) f(pending);
    },
  };
}

/**
 * The NAA server: sidecars of the pods on this node stream which application owns each socket.
 * Streams are authenticated against the apiserver (TokenReview), so it needs the cluster.
 */
async function startNaa(
  agent: Agent,
  port: number,
  tracing: boolean,
): Promise<{ close(): Promise<void>; pushPolicies(): void }> {
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { NaaServer } = await import('./naa/server.ts');
  const { TokenReviewAuthenticator } = await import('./naa/auth.ts');
  const { effectivePolicy } = await import('./naa/policy.ts');
  const kubeConfig = pooledKubeConfig();
  const server = new NaaServer({
    authenticator: new TokenReviewAuthenticator(kubeConfig, values.node),
    sink: {
      apply: ({ upsert, remove }) => agent.associate(upsert, remove),
      policy: (identity) => (agent.config ? effectivePolicy(agent.config, identity.addresses) : undefined),
      stamp: (addresses, stamp, application) => agent.stamp(addresses, stamp, application),
      strict: (identity) =>
        identity.addresses.some((a) => agent.config?.association?.strictSources.includes(a) ?? false),
    },
    log: (msg, fields) => log.info(msg, fields),
    // Continues the sidecars' traces: a span per applied association, and flows as their children.
    ...(tracing ? { tracing: (await import('./naa/tracing.ts')).associationTracing } : {}),
  });
  const address = values['naa-listen'] ?? `0.0.0.0:${port}`;
  await server.listen(address);
  log.info('Listening for NAA streams', { address });
  return server;
}

/** In a cluster: this node's view of its uplinks goes into their status for the operator to aggregate. */
async function startReporting(agent: Agent): Promise<NodeJS.Timeout> {
  // Loaded only here: the Kubernetes client costs tens of MiB that standalone agents do without.
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { UplinkStatusReporter } = await import('./report.ts');
  const kubeConfig = pooledKubeConfig();
  const reporter = new UplinkStatusReporter(kubeConfig);
  return setInterval(() => {
    reporter
      .report(agent.report())
      .catch((error: Error) => log.error('Failed to report uplink status', { error: error.message }));
  }, Number(values['report-ms']));
}

function serve(agent: Agent, address: string): Server {
  const [host, port] = splitHostPort(address);
  const server = createServer((req, res) => {
    const report = agent.report();
    const url = new URL(req.url ?? '/', 'http://agent');
    if (url.pathname === '/attribution') {
      const query = parseAttributionQuery(url.searchParams);
      res.setHeader('content-type', 'application/json');
      if (typeof query === 'string') {
        res.statusCode = 400;
        return void res.end(`${JSON.stringify({ error: query })}\n`);
      }
      return void res.end(`${JSON.stringify(agent.attributions.query(query), null, 2)}\n`);
    }
    if (req.url === '/healthz') return void res.end('ok\n');
    if (req.url === '/readyz') {
      const ok = report.lastSync !== undefined && !report.lastSync.error;
      res.statusCode = ok ? 200 : 503;
      return void res.end(ok ? 'ok\n' : 'not synced\n');
    }
    if (req.url === '/steering') {
      const readiness = steeringReadiness(report, agent.config ? localUplinks(agent.config, values.node!) : []);
      res.statusCode = readiness.ready ? 200 : 503;
      res.setHeader('content-type', 'application/json');
      return void res.end(`${JSON.stringify(readiness)}\n`);
    }
    if (req.url === '/status') {
      res.setHeader('content-type', 'application/json');
      return void res.end(`${JSON.stringify(report, null, 2)}\n`);
    }
    if (req.url === '/flows') {
      res.setHeader('content-type', 'application/json');
      return void res.end(`${JSON.stringify(agent.attribution(), null, 2)}\n`);
    }
    if (req.url === '/metrics') {
      res.setHeader('content-type', metricsContentType);
      return void res.end(agent.renderMetrics());
    }
    res.statusCode = 404;
    res.end('not found\n');
  });
  server.listen(port, host);
  return server;
}

function splitHostPort(address: string): [string, number] {
  const at = address.lastIndexOf(':');
  return [address.slice(0, at).replace(/^\[|\]$/g, ''), Number(address.slice(at + 1))];
}

async function remove(): Promise<void> {
  await agentFor().remove();
  log.info('Removed naat from the kernel');
}

function nodeAgent(relays?: RelayFactory): NodeAgent {
  const conntrack = new ExecConntrack();
  return new NodeAgent({
    nft: new ExecNftables(['nft'], stateDir('node'), nodeTableName),
    tunnels: new ExecTunnelKernel(nodeTunnelOwnership, writeSysctl),
    deleteFlows: (value, mask) => conntrack.deleteMarked(value, mask),
    stateDir: stateDir('node'),
    // Each gateway's nodes are asked at their /steering whether they take flows.
    peerStates: (gateway) => {
      const monitor = createPeerMonitor({ peers: gateway.peers, healthPort: gateway.healthPort });
      monitor.start();
      return monitor;
    },
    ...(relays ? { relays } : {}),
    log,
  });
}

/** In a cluster: whether steering is ready on this node goes into each gateway's status. */
async function startSteeringReports(
  current: () => { config: NodeConfig; report: NodeAgentReport },
): Promise<NodeJS.Timeout> {
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { SteeringStatusReporter, steeringStates } = await import('./steering/report.ts');
  const { config } = current();
  const reporter = new SteeringStatusReporter(pooledKubeConfig(), config.node);
  const report = () => {
    const { config, report } = current();
    reporter
      .report(steeringStates(config, report))
      .catch((error: Error) => log.error('Failed to report steering status', { error: error.message }));
  };
  report();
  return setInterval(report, Number(values['report-ms']));
}

/**
 * Whether the node's config is gone from the apiserver (deleted, or no longer readable because the
 * operator dropped it from the agents' Role): the operator removes it when the node leaves every
 * gateway, before the agent on it is stopped.
 */
async function nodeConfigGone(): Promise<boolean> {
  const [namespace, name] = (values['config-map'] ?? '').split('/');
  if (!namespace || !name) return false;
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { CoreV1Api } = await import('@kubernetes/client-node');
  try {
    await pooledKubeConfig().makeApiClient(CoreV1Api).readNamespacedConfigMap({ name, namespace });
    return false;
  } catch (error) {
    const code = (error as { code?: number }).code;
    return code === 404 || code === 403;
  }
}

/**
 * The node agent's NAA relays, one per gateway: the node's sidecars dial this node at their
 * gateway's association port, and the relay carries each stream to the gateway's up nodes.
 */
async function naaRelays(): Promise<RelayFactory> {
  const { NaaRelay } = await import('./naa/relay.ts');
  return (first, peers, onSynced) => {
    let gateway = first;
    const relay: InstanceType<typeof NaaRelay> = new NaaRelay({
      gateway,
      peers,
      onSynced,
      // The node the plan pins the pod's flows to (Pod selection); with Flow selection, any.
      pinnedPeer: (pod) =>
        gateway.selection === 'Pod' ? rendezvous(`${pod.namespace}/${pod.name}`, relay.synced()) : undefined,
      log: (msg, fields) => log.info(msg, fields),
    });
    const address = `0.0.0.0:${gateway.associationPort}`;
    relay.listen(address).then(
      () => log.info('Relaying NAA streams', { gateway: gateway.gateway, address }),
      (error: Error) =>
        log.error('Failed to listen for NAA streams', { gateway: gateway.gateway, address, error: error.message }),
    );
    return {
      synced: () => relay.synced(),
      update: (next) => {
        gateway = next;
        relay.update(next);
      },
      close: () => relay.close(),
    };
  };
}

/**
 * The node agent. SIGTERM and SIGINT leave the kernel as it is, so steered flows go on through a
 * restart; `node --remove` takes everything away.
 */
async function node(): Promise<void> {
  if (values.remove) {
    await nodeAgent().remove();
    return void log.info('Removed the node agent from the kernel');
  }
  const parse = (text: string): NodeConfig => parseNodeConfig(parseText(text));
  const first = await firstConfig(parse, 'node config');
  const agent = nodeAgent(await naaRelays());
  await agent.start(first.config);
  log.info('Started the node agent', { node: first.config.node, gateways: first.config.gateways.length });
  let current = first.config;
  const reports = values.report
    ? await startSteeringReports(() => ({ config: current, report: agent.report() }))
    : undefined;
  let applying = Promise.resolve();
  first.later((text) => {
    applying = applying.then(async () => {
      try {
        const config = parse(text);
        await agent.configure(config);
        current = config;
        log.info('Applied a new node config', { node: config.node, hash: config.hash });
      } catch (error) {
        log.error('Kept the last good node config', { error: (error as Error).message });
      }
    });
  });
  const [host, port] = splitHostPort(listenAddress('node'));
  const server = createServer((req, res) => {
    if (req.url !== '/status') {
      res.statusCode = 404;
      return void res.end('not found\n');
    }
    res.setHeader('content-type', 'application/json');
    res.end(`${JSON.stringify(agent.report(), null, 2)}\n`);
  }).listen(port, host);
  const stop = async (signal: string) => {
    first.source.stop();
    server.close();
    clearInterval(reports);
    if (await nodeConfigGone()) {
      log.info('Stopping; the node config is gone, so the steering goes too', { signal });
      await agent.remove();
    } else {
      log.info('Stopping; the kernel keeps the steering', { signal });
      await agent.stop();
    }
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}

/** Asks a running agent who used a public address and port at a time, and prints the answer. */
async function attribution(): Promise<void> {
  const params = new URLSearchParams({ address: values.address ?? '', port: values.port ?? '', at: values.at ?? '' });
  const problem = parseAttributionQuery(params);
  if (typeof problem === 'string') usageError(usage, `--${problem}`);
  const response = await fetch(`${values.agent}/attribution?${params}`);
  const text = await response.text();
  if (!response.ok) throw new Error(`the agent answered ${response.status}: ${text.trim()}`);
  if (values.json) return void process.stdout.write(text);
  const records = (JSON.parse(text) as AttributionRecord[]).map((r) => ({
    ...r,
    start: new Date(r.start),
    ...(r.end ? { end: new Date(r.end) } : {}),
  }));
  console.log(describeAttribution(problem, records));
}

const command = positionals[0] ?? 'run';
const commands: Record<string, () => Promise<void>> = { run, remove, attribution, node };
if (!commands[command] || positionals.length > 1) {
  usageError(usage, `Unknown command ${positionals.join(' ')}: use run, remove, attribution or node`);
}
commands[command]().catch((error: Error) => {
  log.error('The dataplane agent failed', { error: error.message });
  process.exit(1);
});
