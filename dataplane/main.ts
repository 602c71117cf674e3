// The dataplane agent's entry point. It runs on a gateway node (in a cluster, as the DaemonSet
// that watches its gateway's ConfigMap; standalone, on any Linux host, from a config file):
//
// `usage` below says how it is run (from the source tree: `npm run dataplane -- …`).
// The config is followed as it changes; an invalid version is reported and the last good one
// stays in force. SIGTERM and SIGINT stop the agent and leave the kernel as it is, so flows go on
// through a restart, unless the agent's ConfigMap is gone (its gateway was deleted) or its node
// left the gateway: then it takes away what it put in the kernel. `remove` does that by hand, for a gateway that is gone for good. The standard OTEL_*
// variables turn on OpenTelemetry: a span and a log record per flow (see docs/dataplane.md), and
// a span per association that continues its sidecar's trace (see docs/naa.md).
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createSecureServer } from 'node:https';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { Agent, type AgentOptions } from './agent.ts';
import { ExecFailoverAddresses } from './failover/address.ts';
import { ExecFailoverFence } from './failover/fence.ts';
import { GatewayFailover } from './failover/gateway-failover.ts';
import { flowsPath } from './failover/flow-source.ts';
import {
  defaultRetention,
  describeAttribution,
  parseAttributionQuery,
  type AttributionRecord,
  type Retention,
} from './attribution.ts';
import { watchConfigMap, watchFile, watchGatewayConfig, type ConfigSource } from './config-source.ts';
import { bearerToken, flowPaths, servesFlowsUnauthenticated } from './flow-access.ts';
import { plainAndMutualTls, readTlsDir, TlsDir } from './link-tls.ts';
import {
  agentConfigKey as configKey,
  configIndexKey,
  parseGatewayConfig,
  type GatewayConfig,
} from '../contracts/gateway/index.ts';
import { parseNodeConfig, type NodeConfig } from '../contracts/gateway/index.ts';
import type { NodeDriverOptions, WantedPod } from './naa/node-driver.ts';
import type { NaaRelay } from './naa/relay.ts';
import type { AssociateStream } from '../contracts/naa/index.ts';
import { ExecConntrack, readConntrackStats } from './conntrack.ts';
import { ExecNftables } from './nft/nftables.ts';
import {
  ignoreIpServerNameWarning,
  jsonLogger as log,
  parseCommandLine,
  parseListenAddress,
  ProblemLog,
  type ListenAddress,
  startTelemetry,
  usageError,
} from '../common/index.ts';
import { processMetrics, Registry, sendMetrics } from '../common/metrics/index.ts';
import { HealthMonitor, IpLinkReader } from './probe/index.ts';
import { whyNodeLeft, type NodeRead } from './membership.ts';
import { localUplinks } from './render.ts';
import { agentSysctls } from './sysctls.ts';
import { ExecRouting } from './routing.ts';
import { NodeAgent, type NodeAgentReport, type RelayFactory } from './steering/node-agent.ts';
import { createPeerMonitor, steeringWatch } from './steering/peer-monitor.ts';
import { rendezvous } from '../common/index.ts';
import { nodeTableName, nodeTunnelOwnership } from './steering/node-plan.ts';
import { ExecTunnelKernel } from './steering/tunnel-kernel.ts';
import { gatewayTunnelOwnership } from './steering/gateway-plan.ts';
import {
  steeringReadiness,
  steeringStreamHeader,
  steeringStreamInterval,
  streamSteering,
} from './steering/gateway-readiness.ts';

const usage = `usage: npm run dataplane -- COMMAND [options]   (compiled: node dataplane/main.js COMMAND …)
  run --config FILE | --config-map NAMESPACE/NAME
                                runs the agent from a config file (followed as it changes) or from
                                the gateway's ConfigMap, watched
      [--node NAME]             this node (default: $NODE_NAME or the host name)
      [--listen ADDR:PORT]      /status, /metrics, /healthz, /readyz and /steering, and on a
                                loopback address only, the flow data: /flows and /attribution
                                (default 127.0.0.1:7741); every ADDR:PORT here is HOST:PORT,
                                [IPV6]:PORT, or :PORT for every address of both families
      [--metrics-listen ADDR:PORT]   the same endpoints on a second address
      [--local-listen ADDR:PORT]     every endpoint, flow data included, on a loopback address
                                (in a cluster, for \`naat flows\` and \`naat who\` through the
                                apiserver's port-forward to the agent's pod: docs/cli.md)
      [--tls-dir DIR [--csr CA_FILE]]   this node's identity: DIR holds ca.crt (the CA bundle
                                that signs every agent's certificate), tls.crt (this node's
                                certificate) and tls.key (its key), each replaced whole and
                                followed as they are renewed: NAA streams over TLS, relayed ones
                                only with the pod's node's certificate, and /steering only to
                                agents over mutual TLS (docs/security.md); without it, both in
                                plaintext. With --csr (in a cluster) the agent keeps them itself:
                                it asks the operator's signer naat.dev/agent for this node's
                                certificate with a CertificateSigningRequest made with its pod's
                                own token, renews it with a new key when two thirds of its life
                                have passed, and copies the CA bundle CA_FILE (the mounted CA
                                ConfigMap) into DIR. Without --csr, whoever runs the agent puts
                                the files there
      [--secure-listen ADDR:PORT]   every endpoint over TLS with the certificate of --tls-dir, to
                                callers whose bearer token the apiserver accepts and who may get
                                egressgateways/flows of this gateway (docs/security.md)
      [--naa-listen ADDR:PORT]  where the sidecars' NAA streams arrive (default :PORT, the
                                config's association port)
      [--associate-pods]        be the NAA driver of this node's pods whose gateway gives them
                                the Node driver, from the host's /proc (it must run in the
                                host's process namespace), streaming on the NAA server's local
                                socket in --state-dir, the only place it takes them from
      [--report]                write this node's uplink health into Uplink status
                                when its ConfigMap is gone at SIGTERM (the gateway was deleted),
                                or its node left the gateway (no longer matches its nodeSelector,
                                or excluded), it takes away all it put in the kernel
      [--state-dir DIR] [--reload-ms MS] [--report-ms MS]
      [--attribution-records N] [--attribution-minutes M]   attribution retention
  remove                        takes away everything naat put in the kernel
  node --config FILE | --config-map NAMESPACE/NAME
                                the node agent: steers the served pods of this node to their
                                gateways' nodes, from its NodeConfig (followed as it changes),
                                and relays their sidecars' NAA streams to those nodes (on
                                every address of both families at each gateway's association
                                port)
                                the gateway nodes' health is asked at their /steering; when its
                                ConfigMap is gone at SIGTERM (the node left every gateway), it
                                takes away all it put in the kernel
      [--node NAME] [--state-dir DIR] [--reload-ms MS] [--tls-dir DIR [--csr CA_FILE]] (as run's:
                                /steering and the relayed NAA streams over mutual TLS, sidecars'
                                streams over TLS; without it, all in plaintext)
      [--listen ADDR:PORT]      /status and /metrics (default 127.0.0.1:7742)
      [--report] [--report-ms MS]   write whether steering is ready here into the gateways' status
      [--associate-pods]        be the NAA driver of the node's pods whose gateway gives them the
                                Node driver, from the host's /proc (it must run in the host's
                                process namespace); the gateways take its streams by this node's
                                agent certificate, so it needs --tls-dir
  node --remove                 takes away everything the node agent put in the kernel
  sysctls [--icmp-seconds S]    writes the kernel settings the agents need and exits (the
                                DaemonSets' privileged init container): src_valid_mark for all
                                devices, and with S the conntrack ICMP timeouts (docs/dataplane.md)
  attribution --address A --port P --at ISO8601 [--agent URL] [--json]
              [--token-file FILE] [--ca-file FILE]
                                who used public address A, port P at that time; an https agent
                                (its secure listener) is sent the token, and verified with the CA
  --help                        this text
NAAT_LOG_LEVEL (debug, info, warn, error; default info) is the least severe level logged.`;

ignoreIpServerNameWarning();
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
    'local-listen': { type: 'string' },
    'secure-listen': { type: 'string' },
    'tls-dir': { type: 'string' },
    csr: { type: 'string' },
    'reload-ms': { type: 'string', default: '1000' },
    report: { type: 'boolean', default: false },
    'naa-listen': { type: 'string' },
    'associate-pods': { type: 'boolean' },
    'report-ms': { type: 'string', default: '5000' },
    'attribution-records': { type: 'string', default: String(defaultRetention.maxRecords) },
    'attribution-minutes': { type: 'string', default: String(defaultRetention.maxAgeMs / 60_000) },
    // The attribution command's.
    address: { type: 'string' },
    port: { type: 'string' },
    at: { type: 'string' },
    agent: { type: 'string', default: 'http://127.0.0.1:7741' },
    json: { type: 'boolean', default: false },
    'token-file': { type: 'string' },
    'ca-file': { type: 'string' },
    // The sysctls command's.
    'icmp-seconds': { type: 'string' },
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

/**
 * Writes a kernel setting unless it holds the value already: in a DaemonSet the init container
 * has written the agents' settings, and the agent, to which /proc/sys is read-only, only reads.
 */
async function writeSysctl(path: string, value: string): Promise<void> {
  const file = `/proc/sys/${path}`;
  if ((await readFile(file, 'utf8').catch(() => '')).trim() === value) return;
  await writeFile(file, value);
}

const tunnelSysctlProblems = new ProblemLog(log, 'Failed to write a kernel setting', 'Wrote a kernel setting again');
/** The tunnels' settings: a failure is logged once and the tunnel set up all the same. */
const writeTunnelSysctl = (path: string, value: string) =>
  writeSysctl(path, value).then(
    () => tunnelSysctlProblems.report(path, undefined, { path }),
    (error: Error) => tunnelSysctlProblems.report(path, error.message, { path }),
  );

function agentFor(options: Pick<AgentOptions, 'retention' | 'onFlowEnd' | 'onConntrackEvents'> = {}): Agent {
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
    tunnels: new ExecTunnelKernel(gatewayTunnelOwnership, writeTunnelSysctl),
    failover: new ExecFailoverAddresses(log),
    fence: new ExecFailoverFence(),
    conntrackStats: () => readConntrackStats(),
    log,
    ...options,
  });
}

/**
 * With --csr, keeps this node's certificate in --tls-dir (identity.ts); resolves with what stops
 * that, once started.
 */
/**
 * Holds this node's share of the gateway's failover addresses (failover/gateway-failover.ts), which
 * needs the apiserver: the config must come from --config-map, whose namespace holds the Leases. An
 * address left on an interface by an agent that did not stop cleanly goes first: a restarted agent
 * takes nothing back, its Lease having lapsed or named nothing.
 */
async function startFailover(
  agent: Agent,
  config: GatewayConfig & { failover: NonNullable<GatewayConfig['failover']> },
  links: TlsDir | undefined,
  healthyUplinks: string[],
  onApiserverChange: () => void,
): Promise<GatewayFailover | undefined> {
  const namespace = values['config-map']?.split('/')[0];
  if (!namespace) {
    log.error('Holding no failover address: they need the apiserver (run with --config-map)', {});
    return undefined;
  }
  await agent.setFailoverOwned(new Set());
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const failover = new GatewayFailover({
    agent,
    kubeConfig: pooledKubeConfig(),
    namespace,
    node: values.node!,
    config,
    port: listenOptions(listenAddress('gateway')).port,
    tls: () => links?.current(),
    healthyUplinks,
    onApiserverChange,
    log,
  });
  await failover.start();
  log.info('Holding failover addresses through the Leases', { namespace, addresses: config.failover.addresses.length });
  return failover;
}

async function startIdentity(): Promise<() => Promise<void>> {
  const [dir, caFile] = [values['tls-dir'], values.csr];
  if (caFile === undefined) return async () => {};
  if (dir === undefined) usageError(usage, '--csr needs --tls-dir');
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { ClusterIdentity } = await import('./identity.ts');
  const identity = new ClusterIdentity({ kubeConfig: pooledKubeConfig(), node: values.node!, dir, caFile, log });
  identity.start();
  return () => identity.stop();
}

async function run(): Promise<void> {
  const limits = retention();
  if (values['secure-listen'] && !values['tls-dir']) usageError(usage, '--secure-listen needs --tls-dir');
  const local = values['local-listen'];
  if (local !== undefined && !servesFlowsUnauthenticated(listenOptions(local).host ?? '')) {
    usageError(usage, '--local-listen takes a loopback address, such as 127.0.0.1:9095');
  }
  const telemetry = await startTelemetry('naat-dataplane', {
    'k8s.node.name': values.node!,
    ...(process.env.POD_NAME ? { 'k8s.pod.name': process.env.POD_NAME } : {}),
  });
  const stopIdentity = await startIdentity();
  const first = await firstConfig(parseConfig, 'gateway config', 'gateway');
  // Without telemetry, an ended flow costs nothing beyond its attribution record.
  const onFlowEnd = telemetry.enabled ? (await import('./flow-telemetry.ts')).exportFlow : undefined;
  let failover: GatewayFailover | undefined;
  const agent = agentFor({
    retention: limits,
    ...(onFlowEnd ? { onFlowEnd } : {}),
    onConntrackEvents: (events) => failover?.onConntrackEvents(events),
  });
  processMetrics(agent.metrics.registry, 'gateway-agent');
  let config = first.config;
  const linkProblems = new ProblemLog(log, 'Failed to read an uplink interface', 'Read an uplink interface again');
  const monitor = new HealthMonitor({
    uplinks: localUplinks(config, values.node!),
    onChange: (name, health) => {
      failover?.setHealthyUplinks(healthyUplinks());
      agent.setHealth(name, health).catch(() => {});
    },
    // The kernel drops an uplink's routes when its link goes down and does not bring them back.
    onLink: (name, up) => {
      if (up) agent.sync().catch(() => {});
    },
    onError: (name, error) => linkProblems.report(name ?? '', error?.message, { uplink: name }),
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
  const links = linkTls();
  // Uplinks count as healthy until their first probe rounds say otherwise, as in the agent.
  const healthyUplinks = () =>
    localUplinks(config, values.node!)
      .filter((u) => monitor.current().get(u.name)?.healthy !== false)
      .map((u) => u.name);
  // The /steering streams answer at once when the failover addresses held here change, or this
  // node's word on the apiserver does.
  const apiserverListeners = new Set<() => void>();
  const followSteering = (listener: () => void) => {
    const unfollow = agent.onFailoverHeld(listener);
    apiserverListeners.add(listener);
    return () => {
      unfollow();
      apiserverListeners.delete(listener);
    };
  };
  const followFailover = async () => {
    if (!config.failover) {
      await failover?.stop({ release: true });
      failover = undefined;
      return;
    }
    const withFailover = { ...config, failover: config.failover };
    if (failover) return failover.update(withFailover);
    failover = await startFailover(agent, withFailover, links, healthyUplinks(), () => {
      for (const listener of apiserverListeners) listener();
    });
    // What the probes said while it started.
    failover?.setHealthyUplinks(healthyUplinks());
  };
  await followFailover();
  const naa = config.association ? await startNaa(agent, config.association.port, telemetry.enabled, links) : undefined;
  const pods = await startGatewayDriver(naa, config, telemetry.enabled);

  // Later versions of the config, one at a time, in order.
  let applying = Promise.resolve();
  first.later((text) => {
    applying = applying.then(async () => {
      try {
        config = parseConfig(text);
        monitor.update(localUplinks(config, values.node!));
        await agent.configure(config);
        naa?.pushPolicies();
        pods?.configure(config);
        log.info('Applied a new gateway config', { gateway: config.gateway, hash: config.hash });
        // After the kernel holds the config: a drain or a new failover address starts from it.
        await followFailover().catch((error: Error) =>
          log.error('Failed to follow the failover addresses of the new config', { error: error.message }),
        );
      } catch (error) {
        log.error('Kept the last good gateway config', { error: (error as Error).message });
      }
    });
  });

  const servers: Array<{ close(): void }> = [listenAddress('gateway'), values['metrics-listen'], local]
    .filter((a) => a !== undefined)
    .map((a) => serve(agent, a, links, () => failover, followSteering));
  if (values['secure-listen'])
    servers.push(await serveSecure(agent, values['secure-listen'], values['tls-dir']!, followSteering));
  const stop = async (signal: string) => {
    first.source.stop();
    clearInterval(report);
    links?.stop();
    monitor.stop();
    for (const server of servers) server.close();
    await stopIdentity();
    pods?.stop();
    await naa?.close();
    // A stopped agent renews no claim: its failover addresses go first, with their flows, for another
    // node to take at once.
    await failover?.stop({ release: true });
    const { gone, text } = await configAtStop(first.source);
    const left = gone ? undefined : await nodeLeft(text);
    if (gone) {
      log.info('Stopping; the gateway config is gone, so the ruleset and routes go too', { signal, config: gone });
      await agent.remove();
    } else if (left) {
      log.info('Stopping; this node left the gateway, so the ruleset and routes go too', { signal, reason: left });
      await agent.remove();
    } else {
      // A stopped agent renews no claim: its failover addresses go, for another node to take.
      log.info('Stopping; the kernel keeps the ruleset, the failover addresses are released', { signal });
      await agent.stop({ releaseFailover: true, keepAttribution: true });
    }
    // Exports what the batch processors still hold.
    await telemetry.shutdown();
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}

/**
 * Starts watching the config (--config FILE or --config-map NAMESPACE/NAME: a gateway's index and
 * slices, or a node's config) and resolves with its first valid version; later versions go to the
 * callback given to `later`. An invalid first version is logged and waited out.
 */
async function firstConfig<T>(
  parse: (text: string) => T,
  what: string,
  role: 'gateway' | 'node',
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
    source =
      role === 'gateway'
        ? await watchGatewayConfig(kubeConfig, namespace, name, onText, onError)
        : await watchConfigMap(kubeConfig, namespace, name, configKey, onText, onError);
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
  tls: TlsDir | undefined,
): Promise<{ close(): Promise<void>; pushPolicies(): void; openLocal(): AssociateStream }> {
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { NaaServer } = await import('./naa/server.ts');
  const { TokenReviewAuthenticator } = await import('./naa/auth.ts');
  const { effectivePolicy } = await import('./naa/policy.ts');
  const { naaServerCredentials } = await import('./link-tls.ts');
  const kubeConfig = pooledKubeConfig();
  const server = new NaaServer({
    authenticator: new TokenReviewAuthenticator(kubeConfig, values.node, { relayCertificates: tls !== undefined }),
    credentials: naaServerCredentials(tls),
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
  const address = values['naa-listen'] ?? `:${port}`;
  await server.listen(address);
  log.info('Listening for NAA streams', { address, tls: tls !== undefined });
  return server;
}

/** In a cluster: this node's view of its uplinks goes into their status for the operator to aggregate. */
async function startReporting(agent: Agent): Promise<NodeJS.Timeout> {
  // Loaded only here: the Kubernetes client costs tens of MiB that standalone agents do without.
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { UplinkStatusReporter } = await import('./report.ts');
  const kubeConfig = pooledKubeConfig();
  const reporter = new UplinkStatusReporter(kubeConfig);
  const problems = new ProblemLog(log, 'Failed to report uplink status', 'Reported uplink status again');
  return setInterval(() => {
    reporter.report(agent.report()).then(
      () => problems.report('report', undefined),
      (error: Error) => problems.report('report', error.message),
    );
  }, Number(values['report-ms']));
}

/**
 * Answers one request to the agent's HTTP API. `flows` says whether this listener may reveal flow
 * data (flow-access.ts): elsewhere /flows and /attribution are not found. `steering` whether it
 * answers /steering: with a TLS directory, only to node agents over mutual TLS, whose answer
 * decides where flows go. `agentNode` is the node a caller's certificate names (mutual TLS), to
 * whom alone `failover` serves the flows of its addresses.
 */
function respond(
  agent: Agent,
  req: IncomingMessage,
  res: ServerResponse,
  { flows, steering, agentNode }: { flows: boolean; steering: boolean; agentNode?: string },
  failover: GatewayFailover | undefined,
  followSteering: (listener: () => void) => () => void,
): void {
  const report = agent.report();
  const url = new URL(req.url ?? '/', 'http://agent');
  if (flowPaths.has(url.pathname) && !flows) {
    res.statusCode = 404;
    res.setHeader('content-type', 'application/json');
    return void res.end(`${JSON.stringify({ error: 'flow data is served on the secure listener only' })}\n`);
  }
  if (url.pathname === '/steering' && !steering) {
    res.statusCode = 403;
    res.setHeader('content-type', 'application/json');
    return void res.end(`${JSON.stringify({ error: '/steering is answered to node agents over mutual TLS only' })}\n`);
  }
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
    const reason = report.lastSync === undefined || report.lastSync.error ? 'not synced' : failover?.notReady();
    res.statusCode = reason ? 503 : 200;
    return void res.end(`${reason ?? 'ok'}\n`);
  }
  if (url.pathname === flowsPath) {
    if (failover) return failover.handleFlows(req, res, agentNode);
    res.statusCode = 404;
    return void res.end('not found\n');
  }
  if (req.url === '/steering') {
    const now = () => ({
      ...steeringReadiness(agent.report(), agent.config ? localUplinks(agent.config, values.node!) : []),
      ...(failover ? { apiserver: failover.apiserverReachable() } : {}),
    });
    const intervalMs = steeringStreamInterval(req.headers[steeringStreamHeader]);
    if (intervalMs !== undefined) return streamSteering(res, intervalMs, now, followSteering);
    const readiness = now();
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
  if (req.url === '/metrics') return sendMetrics(res, agent.renderMetrics());
  res.statusCode = 404;
  res.end('not found\n');
}

/**
 * A plain HTTP listener: flow data only when bound to loopback. With a TLS directory it also takes
 * mutual TLS on the same port, and /steering is answered there alone.
 */
function serve(
  agent: Agent,
  address: string,
  tls: TlsDir | undefined,
  failover: () => GatewayFailover | undefined,
  followSteering: (listener: () => void) => () => void,
): { close(): void } {
  const listen = listenOptions(address);
  const flows = listen.host !== undefined && servesFlowsUnauthenticated(listen.host);
  if (!tls)
    return createServer((req, res) =>
      respond(agent, req, res, { flows, steering: true }, failover(), followSteering),
    ).listen(listen);
  return plainAndMutualTls(tls, (req, res, agentNode) =>
    respond(
      agent,
      req,
      res,
      { flows: flows && !agentNode, steering: agentNode !== undefined, ...(agentNode ? { agentNode } : {}) },
      failover(),
      followSteering,
    ),
  ).listen(listen);
}

/**
 * The TLS directory of naat's links (--tls-dir), followed as it is renewed; undefined when none
 * is given: then NAA and /steering run in plaintext, as asked, for a test or a hand-run.
 */
function linkTls(): TlsDir | undefined {
  const dir = values['tls-dir'];
  if (!dir) {
    log.warn('Running naat links in plaintext: no --tls-dir given', {});
    return undefined;
  }
  return new TlsDir(dir, { log: (level, message, fields) => log[level](message, fields) });
}

/** Where an HTTP server listens: `:PORT` leaves the host out, so Node listens on both families. */
function listenOptions(address: string): ListenAddress {
  try {
    return parseListenAddress(address);
  } catch (error) {
    usageError(usage, (error as Error).message);
  }
}

/** How often the secure listener looks for its certificate, or a renewed one, in its directory. */
const certificateReloadMs = 10_000;

/**
 * The secure listener: TLS with this node's certificate in `dir` (identity.ts), and every request
 * from a caller the apiserver authenticates and authorizes to read this gateway's flows
 * (flow-access.ts). It listens once the certificate is there (the agent may not have it yet: the
 * gateway works meanwhile) and picks up a renewed pair.
 */
async function serveSecure(
  agent: Agent,
  address: string,
  dir: string,
  followSteering: (listener: () => void) => () => void,
): Promise<{ close(): void }> {
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { ApiserverFlowAuthorizer } = await import('./flow-authorizer.ts');
  const authorizer = new ApiserverFlowAuthorizer(pooledKubeConfig());
  const listen = listenOptions(address);
  const server = createSecureServer({ minVersion: 'TLSv1.2' }, (req, res) => {
    const gateway = agent.config?.gateway ?? '';
    authorizer.authorize(bearerToken(req.headers.authorization), gateway).then(
      (access) => {
        if (access.allowed) return respond(agent, req, res, { flows: true, steering: true }, undefined, followSteering);
        // Debug: a caller polling without rights would log a line a request. Its reviews are in the
        // apiserver's audit log.
        log.debug('Refused a request for flow data', { path: req.url, status: access.status, reason: access.reason });
        res.statusCode = access.status;
        res.setHeader('content-type', 'application/json');
        res.end(`${JSON.stringify({ error: access.reason })}\n`);
      },
      (error: Error) => {
        log.error('Failed to review a request for flow data', { path: req.url, error: error.message });
        res.statusCode = 503;
        res.setHeader('content-type', 'application/json');
        res.end(`${JSON.stringify({ error: 'the apiserver could not review the request' })}\n`);
      },
    );
  });
  let loaded: string | undefined;
  let reported: string | undefined;
  const load = async () => {
    let pair: { cert: string; key: string };
    // Not there, or between the two renames of a renewal: the listener keeps what it has.
    try {
      pair = await readTlsDir(dir);
      server.setSecureContext({ cert: pair.cert, key: pair.key, minVersion: 'TLSv1.2' });
    } catch (error) {
      const message = (error as Error).message;
      if (message !== reported) log.error('Waiting for the secure listener certificate', { dir, error: message });
      reported = message;
      return;
    }
    reported = undefined;
    if (pair.cert + pair.key === loaded) return;
    const first = loaded === undefined;
    loaded = pair.cert + pair.key;
    if (!first) return void log.info('Loaded a renewed certificate for the secure listener', { dir });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(listen, resolve));
    log.info('Serving flow data to authorized callers', { address });
  };
  await load();
  const reload = setInterval(() => {
    load().catch((error: Error) => log.error('Failed to start the secure listener', { address, error: error.message }));
  }, certificateReloadMs);
  reload.unref();
  return {
    close: () => {
      clearInterval(reload);
      server.close();
    },
  };
}

async function remove(): Promise<void> {
  await agentFor().remove();
  log.info('Removed naat from the kernel');
}

function nodeAgent(relays?: RelayFactory, tls?: TlsDir): NodeAgent {
  const conntrack = new ExecConntrack();
  const watch = steeringWatch(tls && (() => tls.current()));
  return new NodeAgent({
    nft: new ExecNftables(['nft'], stateDir('node'), nodeTableName),
    tunnels: new ExecTunnelKernel(nodeTunnelOwnership, writeTunnelSysctl),
    deleteFlows: (value, mask) => conntrack.deleteMarked(value, mask),
    stateDir: stateDir('node'),
    // Each gateway's nodes are asked at their /steering whether they take flows.
    peerStates: (gateway) => {
      const monitor = createPeerMonitor({ peers: gateway.peers, healthPort: gateway.healthPort, watch });
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
  const problems = new ProblemLog(log, 'Failed to report steering status', 'Reported steering status again');
  const report = () => {
    const { config, report } = current();
    reporter.report(steeringStates(config, report)).then(
      () => problems.report('report', undefined),
      (error: Error) => problems.report('report', error.message),
    );
  };
  report();
  return setInterval(report, Number(values['report-ms']));
}

/**
 * The agent's config as the apiserver has it at SIGTERM: `gone` says why it is gone, or else
 * `text` is its current text (none from a file, or when the apiserver does not answer). It is gone
 * when the agent's watch saw the ConfigMap deleted, or a read finds it deleted (404) or no longer
 * readable (403, the agent's Role went with it). The operator's objects make sure this is so before
 * the agent is stopped for good: a gateway's DaemonSet is owned by its ConfigMap as well as by the
 * gateway, so the garbage collector deletes the ConfigMap first; the operator deletes a node's
 * config before its node agent. A rollout or an upgrade keeps the ConfigMap, and an apiserver that
 * cannot be reached says nothing: both keep the kernel as it is.
 */
async function configAtStop(source: ConfigSource): Promise<{ gone?: string; text?: string }> {
  if (source.deleted()) return { gone: 'watched deletion' };
  const [namespace, name] = (values['config-map'] ?? '').split('/');
  if (!namespace || !name) return {};
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { CoreV1Api } = await import('@kubernetes/client-node');
  try {
    const configMap = await pooledKubeConfig().makeApiClient(CoreV1Api).readNamespacedConfigMap({ name, namespace });
    // A gateway's index holds its placement as the whole config does (contracts/gateway/slices.ts).
    return { text: configMap.data?.[configKey] ?? configMap.data?.[configIndexKey] };
  } catch (error) {
    const code = (error as { code?: number }).code;
    return code === 404 ? { gone: 'not found' } : code === 403 ? { gone: 'forbidden' } : {};
  }
}

/**
 * Why this node no longer belongs to the gateway whose config `text` is (read at SIGTERM), or
 * undefined while it does or that is not known (dataplane/membership.ts): the DaemonSet controller
 * stops the agent of a node that left the gateway, and the ConfigMap stays.
 */
async function nodeLeft(text: string | undefined): Promise<string | undefined> {
  if (text === undefined) return undefined;
  let placement: GatewayConfig['placement'];
  try {
    placement = parseConfig(text).placement;
  } catch {
    return undefined;
  }
  if (!placement) return undefined;
  const { pooledKubeConfig } = await import('../common/kube/index.ts');
  const { CoreV1Api } = await import('@kubernetes/client-node');
  const read = await pooledKubeConfig()
    .makeApiClient(CoreV1Api)
    .readNode({ name: values.node! })
    .then(
      (node): NodeRead => ({ labels: node.metadata?.labels ?? {} }),
      (error: { code?: number }): NodeRead => (error.code === 404 ? 'deleted' : 'unknown'),
    );
  return whyNodeLeft(values.node!, placement, read);
}

/**
 * The node agent's NAA relays, one per gateway: the node's sidecars dial this node at their
 * gateway's association port, and the relay carries each stream to the gateway's up nodes. Each is
 * in `local` by its gateway's name while it is open: the node agent's own drivers hand it their
 * streams there.
 */
async function naaRelays(tls: TlsDir | undefined, local: Map<string, NaaRelay>): Promise<RelayFactory> {
  const { NaaRelay } = await import('./naa/relay.ts');
  const { agentChannelCredentials, naaServerCredentials } = await import('./link-tls.ts');
  const serverCredentials = naaServerCredentials(tls);
  const channelCredentials = tls && agentChannelCredentials(tls);
  return (first, peers, onSynced) => {
    let gateway = first;
    const relay: NaaRelay = new NaaRelay({
      gateway,
      peers,
      onSynced,
      // The node the plan pins the pod's flows to (Pod selection); with Flow selection, any.
      pinnedPeer: (pod) =>
        gateway.selection === 'Pod' ? rendezvous(`${pod.namespace}/${pod.name}`, relay.synced()) : undefined,
      log: (msg, fields) => log.info(msg, fields),
      serverCredentials,
      ...(channelCredentials && { channelCredentials }),
    });
    const address = `:${gateway.associationPort}`;
    relay.listen(address).then(
      () => log.info('Relaying NAA streams', { gateway: gateway.gateway, address }),
      (error: Error) =>
        log.error('Failed to listen for NAA streams', { gateway: gateway.gateway, address, error: error.message }),
    );
    local.set(first.gateway, relay);
    return {
      synced: () => relay.synced(),
      update: (next) => {
        gateway = next;
        relay.update(next);
      },
      close: () => {
        if (local.get(first.gateway) === relay) local.delete(first.gateway);
        return relay.close();
      },
    };
  };
}

/**
 * With --associate-pods: the node agent drives the association of the node's pods that have the
 * Node driver, handing each pod's stream to its gateway's relay in `relays`.
 */
async function startNodeDriver(config: NodeConfig, tracing: boolean, relays: ReadonlyMap<string, NaaRelay>) {
  if (!values['associate-pods']) return undefined;
  if (!values['tls-dir']) {
    log.warn('The gateways refuse the node’s pods’ streams: they take them only with this node’s certificate', {
      missing: '--tls-dir',
    });
  }
  const { nodeAgentPods } = await import('./naa/node-driver.ts');
  return startDriver(
    config,
    (c) => nodeAgentPods(c, (gateway) => gateway.gateway),
    join(stateDir('node'), 'stamps'),
    tracing,
    (gateway) => {
      const relay = relays.get(gateway);
      // The driver tries again later: the relay comes with the config that names the gateway.
      if (!relay) throw new Error(`no relay of gateway ${gateway} on this node`);
      return relay.openLocal();
    },
  );
}

/**
 * With --associate-pods: the gateway agent drives the association of its own node's pods that have
 * the Node driver, handing each pod's stream to its NAA server in the process, where the server
 * takes a node-driven stream of a pod of this node (naa/auth.ts); its network port never does.
 */
async function startGatewayDriver(
  naa: { openLocal(): AssociateStream } | undefined,
  config: GatewayConfig,
  tracing: boolean,
) {
  if (!values['associate-pods']) return undefined;
  if (!naa) {
    log.error('Driving no pod’s association: the gateway config has no association block', {});
    return undefined;
  }
  const { gatewayAgentPods } = await import('./naa/node-driver.ts');
  return startDriver(
    config,
    (c) => gatewayAgentPods(c, values.node!, 'naa'),
    join(stateDir('gateway'), 'stamps'),
    tracing,
    () => naa.openLocal(),
  );
}

/**
 * Drives the Node-driven pods that `pods` picks from each version of the agent's config, keeping
 * strict pods' stamps in `stampDir` across restarts: their running programs cached them.
 */
async function startDriver<C>(
  config: C,
  pods: (config: C) => ReadonlyMap<string, WantedPod>,
  stampDir: string,
  tracing: boolean,
  open: NodeDriverOptions['open'],
): Promise<{ configure(config: C): void; stop(): void }> {
  const { NodeDriver } = await import('./naa/node-driver.ts');
  await mkdir(stampDir, { recursive: true });
  const driver = new NodeDriver({
    version: process.env.npm_package_version ?? '0.1.0',
    stampDir,
    log,
    open,
    ...(tracing ? { tracer: (await import('../contracts/naa/tracing/index.ts')).associationTracer } : {}),
  });
  driver.configure(pods(config));
  driver.start();
  log.info('Driving the association of the node’s pods', {});
  return { configure: (next) => driver.configure(pods(next)), stop: () => driver.stop() };
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
  // The relay's gRPC call to a gateway node keeps the last message it wrote until the next one
  // (grpc-js frees a written message only at the following write), and grpc-js copies each message
  // into a Buffer from Node's shared pool: an idle pod's stream kept a whole 64 KiB slab of it alive,
  // 6 MiB at a hundred node-driven pods (docs/naa.md). Slabs of 8 KiB, Node 20's default (24's is 64),
  // bound that to 8 KiB a pod; a message of more than 4 KiB gets a buffer of its own.
  Buffer.poolSize = 8 * 1024;
  const parse = (text: string): NodeConfig => parseNodeConfig(parseText(text));
  const stopIdentity = await startIdentity();
  const first = await firstConfig(parse, 'node config', 'node');
  const links = linkTls();
  const relays = new Map<string, NaaRelay>();
  const agent = nodeAgent(await naaRelays(links, relays), links);
  await agent.start(first.config);
  const telemetry = await startTelemetry('naat-node', { 'k8s.node.name': first.config.node });
  const pods = await startNodeDriver(first.config, telemetry.enabled, relays);
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
        pods?.configure(config);
        current = config;
        log.info('Applied a new node config', { node: config.node, hash: config.hash });
      } catch (error) {
        log.error('Kept the last good node config', { error: (error as Error).message });
      }
    });
  });
  const metrics = new Registry();
  processMetrics(metrics, 'node-agent');
  const server = createServer((req, res) => {
    if (req.url === '/metrics') return sendMetrics(res, metrics.metrics());
    if (req.url !== '/status') {
      res.statusCode = 404;
      return void res.end('not found\n');
    }
    res.setHeader('content-type', 'application/json');
    res.end(`${JSON.stringify(agent.report(), null, 2)}\n`);
  }).listen(listenOptions(listenAddress('node')));
  const stop = async (signal: string) => {
    first.source.stop();
    server.close();
    links?.stop();
    clearInterval(reports);
    pods?.stop();
    await telemetry.shutdown();
    await stopIdentity();
    const { gone } = await configAtStop(first.source);
    if (gone) {
      log.info('Stopping; the node config is gone, so the steering goes too', { signal, config: gone });
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

/**
 * GETs `url` from an agent: over https with the bearer token of --token-file, the server verified
 * against --ca-file (or the system's CAs); over http as it is.
 */
async function getFromAgent(url: string): Promise<{ status: number; text: string }> {
  if (!url.startsWith('https:')) {
    const response = await fetch(url);
    return { status: response.status, text: await response.text() };
  }
  const { request } = await import('node:https');
  const token = values['token-file'] ? (await readFile(values['token-file'], 'utf8')).trim() : undefined;
  const ca = values['ca-file'] ? await readFile(values['ca-file'], 'utf8') : undefined;
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      { ...(ca ? { ca } : {}), headers: token ? { authorization: `Bearer ${token}` } : {} },
      (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject).end();
  });
}

/** Asks a running agent who used a public address and port at a time, and prints the answer. */
async function attribution(): Promise<void> {
  const params = new URLSearchParams({ address: values.address ?? '', port: values.port ?? '', at: values.at ?? '' });
  const problem = parseAttributionQuery(params);
  if (typeof problem === 'string') usageError(usage, `--${problem}`);
  const { status, text } = await getFromAgent(`${values.agent}/attribution?${params}`);
  if (status !== 200) throw new Error(`the agent answered ${status}: ${text.trim()}`);
  if (values.json) return void process.stdout.write(text);
  const records = (JSON.parse(text) as AttributionRecord[]).map((r) => ({
    ...r,
    start: new Date(r.start),
    ...(r.end ? { end: new Date(r.end) } : {}),
  }));
  console.log(describeAttribution(problem, records));
}

/** The init container's: the kernel settings of sysctls.ts, written before the agent starts. */
async function sysctls(): Promise<void> {
  const seconds = values['icmp-seconds'];
  if (seconds !== undefined && !/^[1-9]\d*$/.test(seconds)) {
    usageError(usage, '--icmp-seconds takes a whole number above 0');
  }
  for (const [path, value] of agentSysctls(seconds === undefined ? undefined : Number(seconds))) {
    try {
      await writeSysctl(path, value);
      log.info('Set a kernel setting', { path, value });
    } catch (error) {
      // Conntrack's settings appear with its module, which the agent's table loads where nothing
      // has yet: the kernel's default holds until the agent's pod starts again.
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || !path.startsWith('net/netfilter/')) throw error;
      log.warn('Found no conntrack setting, conntrack is not loaded yet', { path, value });
    }
  }
}

const command = positionals[0] ?? 'run';
const commands: Record<string, () => Promise<void>> = { run, remove, attribution, node, sysctls };
if (!commands[command] || positionals.length > 1) {
  usageError(usage, `Unknown command ${positionals.join(' ')}: use run, remove, attribution, node or sysctls`);
}
commands[command]().catch((error: Error) => {
  log.error('The dataplane agent failed', { error: error.message });
  process.exit(1);
});
