// The NAA sidecar: looks at its pod every interval and keeps the node's NAA server told.
// Configured by environment (the admission webhook sets these from the Downward API):
//   NAAT_NAA_HOST, NAAT_NAA_PORT  the NAA server on this node: the node's address (status.hostIP)
//                        and the gateway's association port (required, unless NAAT_NAA_SERVER)
//   NAAT_NAA_SERVER      host:port of the NAA server instead, for a sidecar run by hand
//   NAAT_NAA_CA          the agents' CA bundle (PEM): the stream is TLS and the agent must show a
//                        certificate from it for the address dialled; without it, plaintext (by hand)
//   NAAT_POD_NAMESPACE, NAAT_POD_NAME, NAAT_POD_UID   the pod (required)
//   NAAT_TOKEN_FILE      projected token with the naat audience (default /var/run/secrets/naat/token)
//   NAAT_SCAN_INTERVAL_MS  how often to look (default 200)
//   NAAT_PROC            where procfs is (default /proc)
//   NAAT_LOG_LEVEL       the least severe level logged: debug, info (default), warn or error
//   NAAT_STAMP_DIR       strict mode: the folder shared with the pod's programs, where the sidecar
//                        places the stamping library and listens for them (docs/naa.md, Strict mode)
//   NAAT_STAMP_LIBRARY   the built library to place there (default stamp/libnaat_stamp.so beside
//                        this file, where `npm run build` puts it)
//   OTEL_*               OpenTelemetry, off unless they name an exporter or endpoint: a span per
//                        association that the gateway's spans continue (docs/naa.md, Tracing)
// Its image runs it compiled, with NODE_OPTIONS="--jitless --max-semi-space-size=1" (see
// images/Dockerfile and docs/naa.md, Measured): less memory, and scans no slower. Without
// WebAssembly, Node.js cannot strip types, so this file runs that way only compiled.
// common/'s entry point loads nothing until telemetry is wanted (the Kubernetes client has an entry
// point of its own), and the sidecar's memory matters.
import {
  ignoreIpServerNameWarning,
  jsonLogger as log,
  parseCommandLine,
  ProblemLog,
  startTelemetry,
} from '../common/index.ts';
import { join } from 'node:path';
import { sidecarVariables } from '../contracts/index.ts';
import { Action, AssociationMode } from '../proto/index.ts';
import { credentials } from '@grpc/grpc-js';
import { Driver, readApplication, Scanner } from '../contracts/naa/index.ts';
import { StampServer } from './stamps.ts';

parseCommandLine(
  `usage: npm run sidecar   (compiled: node sidecar/main.js); it takes no arguments, only these variables:
  NAAT_NAA_HOST, NAAT_NAA_PORT   the node's NAA server (or NAAT_NAA_SERVER=host:port)
  NAAT_NAA_CA                    the agents' CA (PEM); without it the stream is plaintext
  NAAT_POD_NAMESPACE, NAAT_POD_NAME, NAAT_POD_UID   the pod (required)
  NAAT_TOKEN_FILE, NAAT_SCAN_INTERVAL_MS, NAAT_PROC, NAAT_STAMP_DIR, NAAT_STAMP_LIBRARY,
  NAAT_LOG_LEVEL, OTEL_*
  (the head of sidecar/main.ts and docs/naa.md describe each)`,
  { options: {} },
);

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    console.error(JSON.stringify({ level: 'error', msg: `Missing environment variable ${name}` }));
    process.exit(2);
  }
  return value;
}

const pod = {
  namespace: required(sidecarVariables.podNamespace),
  name: required(sidecarVariables.podName),
  uid: required(sidecarVariables.podUid),
};
/** The gRPC target: an IPv6 node address needs brackets before its port. */
function naaServer(): string {
  if (process.env.NAAT_NAA_SERVER) return process.env.NAAT_NAA_SERVER;
  const host = required(sidecarVariables.naaHost);
  return `${host.includes(':') ? `[${host}]` : host}:${required(sidecarVariables.naaPort)}`;
}

ignoreIpServerNameWarning();

/** TLS to the agent, verified with the CA the webhook gave; plaintext only where none was given. */
function channelCredentials() {
  const ca = process.env[sidecarVariables.naaCa];
  if (ca) return credentials.createSsl(Buffer.from(ca));
  log.warn('Streaming to the NAA server in plaintext: no CA given', { variable: sidecarVariables.naaCa });
  return credentials.createInsecure();
}

const telemetry = await startTelemetry('naat-sidecar', {
  'k8s.namespace.name': pod.namespace,
  'k8s.pod.name': pod.name,
  'k8s.pod.uid': pod.uid,
});
const intervalMs = Number(process.env.NAAT_SCAN_INTERVAL_MS ?? 200);
const proc = process.env.NAAT_PROC ?? '/proc';
const scanner = new Scanner(proc);
const stampDir = process.env[sidecarVariables.stampDir];
const stamps: StampServer | undefined = stampDir
  ? new StampServer({
      dir: stampDir,
      library: process.env.NAAT_STAMP_LIBRARY ?? join(import.meta.dirname, 'stamp', 'libnaat_stamp.so'),
      application: (pid) => readApplication(proc, pid),
      announce: (stamp, application): Promise<void> => driver.stamp(stamp, application),
      log: (msg, fields) => log.info(msg, fields),
    })
  : undefined;
const driver: Driver = new Driver({
  target: naaServer(),
  channelCredentials: channelCredentials(),
  pod,
  tokenFile: process.env[sidecarVariables.tokenFile] ?? '/var/run/secrets/naat/token',
  version: process.env.npm_package_version ?? '0.1.0',
  onState: (state) =>
    log.info(`Driver ${state}`, { error: state === 'disconnected' ? driver.lastError?.message : undefined }),
  onVerdict: (verdict) => {
    if (verdict.action === Action.ACTION_DENY)
      log.info('Gateway denied flow', { rule: verdict.rule || '(default action)', port: verdict.flow?.sourcePort });
  },
  onPolicy: (policy) =>
    log.info('Received effective policy', {
      configHash: policy.configHash,
      rules: policy.rules.map((rule) => `${rule.rule} ${rule.action === Action.ACTION_DENY ? 'Deny' : 'Allow'}`),
    }),
  ...(telemetry.enabled ? { tracer: (await import('../contracts/naa/tracing/index.ts')).associationTracer } : {}),
  ...(stamps
    ? { mode: AssociationMode.ASSOCIATION_MODE_STRICT, stamps: () => stamps.stamps }
    : { mode: AssociationMode.ASSOCIATION_MODE_OBSERVE }),
});

let timer: NodeJS.Timeout | undefined;
let stopping = false;
const scanProblems = new ProblemLog(log, 'Scan failed', 'Scanned again');
async function tick(): Promise<void> {
  try {
    driver.update(await scanner.scan());
    scanProblems.report('scan', undefined);
  } catch (error) {
    scanProblems.report('scan', (error as Error).message);
  }
  if (!stopping) timer = setTimeout(() => void tick(), intervalMs);
}

const stop = () => {
  stopping = true;
  clearTimeout(timer);
  driver.stop();
  void stamps?.close();
  // Exports what the batch processor still holds.
  void telemetry.shutdown();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

log.info('Started NAA sidecar', {
  pod: `${pod.namespace}/${pod.name}`,
  intervalMs,
  telemetry: telemetry.enabled,
  mode: stamps ? 'Strict' : 'Observe',
});
await tick();
driver.start();
// Last: the kubelet starts the pod's programs once the stamping socket exists.
await stamps?.listen();
