// NAA benchmarks (`npm run bench:naa`, as root; --quick, --smoke, --json: test/bench/harness.ts):
// figures, each against a baseline measured in the same run on the same machine.
//  1. Associations one stream sustains (driver → NAA server → acknowledged) vs a plain grpc-js
//     bidirectional stream echoing messages of the same size, and over TLS (as sidecars stream in
//     a cluster, docs/security.md) vs plaintext.
//  2. Scanning a pod with many sockets: a first scan (every owner looked up), a scan after one new
//     connection, and a scan when nothing changed, vs reading the socket table alone. The scanner
//     runs as in the sidecar: compiled, in a process with the sidecar image's NODE_OPTIONS.
//  3. The real sidecar process, built and started as its image does it: connect() → association
//     applied, in plaintext and over TLS, memory, and CPU while idle, vs Node.js alone with the
//     same options (and, for memory, Node.js with node:http2 loaded, the least a gRPC client needs).
// The pod namespaces have an address of their own besides loopback, and every connection uses it:
// the sidecar ignores loopback sockets, which never leave the pod.
// The sidecar image runs Node.js without WebAssembly (--jitless), which type stripping needs: what
// runs that way is the compiled JavaScript, built here as the image build does.
import { credentials, Server, ServerCredentials, type ServerDuplexStream } from '@grpc/grpc-js';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { naaServerCredentials, TlsDir } from '../../dataplane/link-tls.ts';
import { NaaServer } from '../../dataplane/naa/server.ts';
import { makeTestCa, writeTlsDir } from '../tls.ts';
import { buildImage, imageArgv, type ImageBuild } from './image.ts';
import { median, percentile, runBenchmark, type Bench } from './harness.ts';
import { cpuShare } from './process.ts';
import {
  AssociationServiceClient,
  AssociationServiceService,
  Protocol,
  type AssociateRequest,
  type AssociateResponse,
} from '../../proto/index.ts';
import { addressToBytes } from '../../common/index.ts';

const podIp = '10.244.0.10';

interface Size {
  /** Associations sent on one stream. */
  messages: number;
  /** Connections held by the pod in the small and the large scan. */
  sockets: { small: number; large: number };
  /** Connections the sidecar sees opened, 50 ms apart. */
  connections: number;
  /** How long CPU is sampled while idle. */
  idleSeconds: number;
}

function association(port: number) {
  return {
    flow: {
      protocol: Protocol.PROTOCOL_TCP,
      sourceAddress: addressToBytes(podIp),
      sourcePort: 1 + (port % 65000),
      destinationAddress: addressToBytes('203.0.113.10'),
      destinationPort: 443,
    },
    application: {
      processName: 'curl',
      executable: '/usr/bin/curl',
      commandLine: ['curl', 'https://example.test/'],
      containerName: 'app',
      containerId: 'a'.repeat(64),
      uid: 1000,
      pid: 4242,
    },
    observedAt: new Date(),
    trace: undefined,
  };
}

/**
 * Sends `messages` associations on one stream to `port`, pipelined, after `first` messages of
 * set-up, and resolves with the rate at which they were acknowledged.
 */
async function pump(port: number, first: AssociateRequest[], messages: number, ca?: string): Promise<number> {
  const client = new AssociationServiceClient(
    `127.0.0.1:${port}`,
    ca ? credentials.createSsl(Buffer.from(ca)) : credentials.createInsecure(),
  );
  const call = client.associate();
  const last = first.length + messages;
  const started = performance.now();
  const done = new Promise<void>((resolve) =>
    call.on('data', (m: AssociateResponse) => {
      if (m.body?.$case === 'ack' && m.body.value.sequence === last) resolve();
    }),
  );
  for (const message of first) call.write(message);
  for (let i = 0; i < messages; i++) {
    call.write({ sequence: first.length + i + 1, body: { $case: 'associate', value: association(i) } });
  }
  await done;
  const seconds = (performance.now() - started) / 1000;
  call.end();
  client.close();
  return messages / seconds;
}

async function naatStream(messages: number, tls?: LinkTls): Promise<number> {
  const server = new NaaServer({
    authenticator: {
      authenticate: async (_token, pod) => ({ pod, addresses: [podIp] }),
      authenticateNodeDriven: async (pod) => ({ pod, addresses: [podIp] }),
    },
    sink: { apply: async () => {} },
    limits: { maxMessagesPerSecond: 10_000_000, maxAssociations: messages + 1 },
    credentials: naaServerCredentials(tls?.dir),
  });
  const pod = { namespace: 'bench', name: 'bench', uid: 'bench' };
  const hello = { protocolVersion: 1, pod, token: 't', driverVersion: 'b', mode: 1, nodeDriven: false } as const;
  const rate = await pump(
    await server.listen('127.0.0.1:0'),
    [{ sequence: 1, body: { $case: 'hello', value: hello } }],
    messages,
    tls?.ca,
  );
  await server.close();
  return rate;
}

/** A node's TLS directory as an agent follows it, and the CA a sidecar verifies it with. */
interface LinkTls {
  dir: TlsDir;
  ca: string;
}

/**
 * A TLS directory for the bench's agent, from a CA of its own, for the names a client dials here:
 * 127.0.0.1, and localhost (what gRPC checks on a Unix socket).
 */
async function linkTls(): Promise<{ tls: LinkTls; remove(): Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), 'naat-bench-tls-'));
  const ca = makeTestCa();
  writeTlsDir(path, ca, 'bench-node', ['localhost', '127.0.0.1']);
  const dir = new TlsDir(path);
  await dir.ready();
  return {
    tls: { dir, ca: ca.cert },
    remove: async () => {
      dir.stop();
      await rm(path, { recursive: true, force: true });
    },
  };
}

/** The same messages through a bare bidi stream that answers each with an ack: grpc-js's own cost. */
async function plainStream(messages: number): Promise<number> {
  const server = new Server();
  server.addService(AssociationServiceService, {
    associate: (call: ServerDuplexStream<AssociateRequest, AssociateResponse>) => {
      call.on('data', (m: AssociateRequest) => call.write({ body: { $case: 'ack', value: { sequence: m.sequence } } }));
      call.on('end', () => call.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const rate = await pump(port, [], messages);
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  return rate;
}

/**
 * A network namespace standing for a pod: loopback, and the pod's address on one end of a veth
 * pair whose other end stays in the namespace too (the kernel here may lack dummy links).
 */
function addPodNamespace(ns: string): void {
  execFileSync('ip', ['netns', 'add', ns]);
  const links = [
    'link set lo up',
    'link add eth0 type veth peer name eth1',
    `address add ${podIp}/24 dev eth0`,
    'link set eth1 up',
    'link set eth0 up',
  ];
  try {
    execFileSync('ip', ['-n', ns, '-batch', '-'], { input: links.join('\n') + '\n' });
  } catch (error) {
    execFileSync('ip', ['netns', 'delete', ns]);
    throw error;
  }
}

async function scanBench(bench: Bench, sidecar: ImageBuild, key: string, sockets: number): Promise<void> {
  const ns = `naat-bench-${process.pid}`;
  addPodNamespace(ns);
  // Holds `sockets` connections, and opens one more for each line it reads.
  const holder = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      'python3',
      '-c',
      `import socket,resource,sys
hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE,(hard,hard))
s=socket.socket(); s.bind(('${podIp}',9000)); s.listen(4096); held=[]
def connect():
  c=socket.create_connection(('${podIp}',9000)); held.append(c); held.append(s.accept()[0])
for i in range(${sockets}): connect()
print('ready',flush=True)
for line in sys.stdin: connect(); print('connected',flush=True)`,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const holderLines = createInterface({ input: holder.stdout })[Symbol.asyncIterator]();
  // The compiled scanner, looking at the holder's namespace; it scans for each line it reads and
  // answers how long the scan took and how many flows it found.
  const scanner = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { createInterface } from 'node:readline';
import { Scanner } from './dist/contracts/naa/scanner.js';
const scanner = new Scanner('/proc', Number(process.argv[1]));
for await (const line of createInterface({ input: process.stdin })) {
  const started = performance.now();
  const found = (await scanner.scan()).size;
  console.log(performance.now() - started, found);
}`,
      String(holder.pid),
    ],
    {
      cwd: sidecar.app,
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, NODE_OPTIONS: sidecar.nodeOptions },
    },
  );
  const scannerLines = createInterface({ input: scanner.stdout })[Symbol.asyncIterator]();
  const next = async (lines: AsyncIterator<string>, from: string) => {
    const line = await lines.next();
    if (line.done) throw new Error(`the ${from} exited`);
    return line.value;
  };
  let found = 0;
  const scan = async () => {
    scanner.stdin.write('\n');
    const [ms, size] = (await next(scannerLines, 'scanner')).split(' ').map(Number);
    found = size!;
    return ms!;
  };
  try {
    await next(holderLines, 'socket holder');
    const tablesOnly = await timeIt(5, () => readFile(`/proc/${holder.pid}/net/tcp`, 'utf8'));
    const first = await scan();
    const afterNew = await medianOf(5, async () => {
      holder.stdin.write('\n');
      await next(holderLines, 'socket holder');
      return scan();
    });
    const quiet = await medianOf(5, scan);
    // Connections the scanner does not see cost it nothing: a scan that found them not measured them.
    if (found < sockets) {
      throw new Error(`the scans of ${key} found ${found} of the pod's ${sockets} outbound connections`);
    }
    const baseline = `${key}.table-read`;
    bench.section(`scan of a pod with ${sockets} outbound connections (${found} found at the end):`);
    bench.figure({
      key: baseline,
      label: 'reading /proc/<pid>/net/tcp alone (baseline)',
      value: tablesOnly,
      unit: 'ms',
    });
    bench.figure({
      key: `${key}.first`,
      label: 'first scan (every owner looked up)',
      value: first,
      unit: 'ms',
      baseline,
    });
    bench.figure({
      key: `${key}.after-new`,
      label: 'scan after one new connection',
      value: afterNew,
      unit: 'ms',
      baseline,
    });
    bench.figure({ key: `${key}.quiet`, label: 'scan when nothing changed', value: quiet, unit: 'ms', baseline });
  } finally {
    scanner.kill('SIGKILL');
    holder.kill('SIGKILL');
    execFileSync('ip', ['netns', 'delete', ns]);
  }
}

const megabytes = async (pid: number, field: string) =>
  Number(new RegExp(`${field}:\\s+(\\d+)`).exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;

/**
 * The real sidecar process in a pod namespace, built and started as its image does it: connect() →
 * association applied, then its memory and CPU while idle with the connections held.
 */
async function sidecarBench(
  bench: Bench,
  image: ImageBuild,
  connections: number,
  idleSeconds: number,
  tls?: LinkTls,
): Promise<void> {
  const ns = `naat-bench-${process.pid}`;
  const dir = await mkdtemp(join(tmpdir(), 'naat-bench-'));
  const applied = new Map<number, number>();
  const server = new NaaServer({
    authenticator: {
      authenticate: async (_token, pod) => ({ pod, addresses: [podIp] }),
      authenticateNodeDriven: async (pod) => ({ pod, addresses: [podIp] }),
    },
    sink: {
      apply: async (changes) => {
        for (const entry of changes.upsert)
          if (!applied.has(entry.sourcePort)) applied.set(entry.sourcePort, Date.now());
      },
    },
    credentials: naaServerCredentials(tls?.dir),
  });
  await server.listen(`unix:${join(dir, 'naa.sock')}`);
  await writeFile(join(dir, 'token'), 'bench');
  addPodNamespace(ns);
  const children: ChildProcess[] = [];
  // `ip netns exec` execs the command, so each child's pid is the program's own.
  const inPod = (command: string[], env: NodeJS.ProcessEnv = {}, stdout: 'pipe' | 'ignore' = 'ignore') => {
    const child = spawn('ip', ['netns', 'exec', ns, ...command], {
      cwd: image.app,
      stdio: ['ignore', stdout, 'inherit'],
      env: { ...process.env, NODE_OPTIONS: image.nodeOptions, ...env },
    });
    children.push(child);
    return child;
  };
  try {
    const sidecar = inPod(imageArgv(image), {
      NAAT_NAA_SERVER: `unix:${join(dir, 'naa.sock')}`,
      NAAT_POD_NAMESPACE: 'bench',
      NAAT_POD_NAME: 'bench',
      NAAT_POD_UID: 'bench',
      NAAT_TOKEN_FILE: join(dir, 'token'),
      ...(tls ? { NAAT_NAA_CA: tls.ca } : {}),
    });
    while (server.sessions === 0) await new Promise((resolve) => setTimeout(resolve, 50));
    const client = inPod(
      [
        'python3',
        '-u',
        '-c',
        `import socket,time,sys
s=socket.socket(); s.bind(('${podIp}',9000)); s.listen(4096); held=[]
for i in range(${connections}):
  c=socket.socket(); c.connect(('${podIp}',9000)); print(c.getsockname()[1], int(time.time()*1000)); held.append(c); held.append(s.accept()[0]); time.sleep(0.05)
print('done'); time.sleep(600)`,
      ],
      {},
      'pipe',
    );
    const connected = new Map<number, number>();
    let output = '';
    await new Promise<void>((resolve) =>
      client.stdout!.on('data', (chunk: Buffer) => {
        output += chunk;
        for (const line of output.split('\n').slice(0, -1)) {
          const [port, ms] = line.split(' ').map(Number);
          if (line === 'done') resolve();
          else connected.set(port!, ms!);
        }
        output = output.slice(output.lastIndexOf('\n') + 1);
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, 1000));
    // A connection never applied makes its latency infinite: the run then does not count.
    const latencies = [...connected].map(([port, at]) => (applied.get(port) ?? Infinity) - at);
    const unapplied = [...connected.keys()].filter((port) => !applied.has(port)).length;
    const latency = (q: number, note?: string) =>
      bench.figure({
        key: `sidecar${tls ? '-tls' : ''}.connect-to-applied.p${q * 100}`,
        label: `connect() → association applied${tls ? ' over TLS' : ''}, p${q * 100}`,
        value: percentile(latencies, q),
        unit: 'ms',
        digits: 0,
        ...(tls ? { baseline: `sidecar.connect-to-applied.p${q * 100}` } : {}),
        ...(note ? { note } : {}),
      });
    if (tls) {
      latency(0.5);
      latency(0.99, unapplied ? `(${unapplied} of ${connections} never applied)` : undefined);
      return;
    }

    // Node.js alone, with the same options and a timer at the scan interval, measured alongside;
    // and with node:http2 loaded, the least any gRPC client in Node.js needs.
    const bare = inPod([process.execPath, '-e', 'setInterval(() => {}, 200)']);
    const http2 = inPod([process.execPath, '-e', "require('node:http2'); setInterval(() => {}, 200)"]);
    // Past their start-up, which would count as idle CPU.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const [sidecarCpu, bareCpu] = await Promise.all([
      cpuShare(sidecar.pid!, idleSeconds),
      cpuShare(bare.pid!, idleSeconds),
    ]);
    const rss = await megabytes(sidecar.pid!, 'VmRSS');
    const anonymous = await megabytes(sidecar.pid!, 'RssAnon');
    const bareRss = await megabytes(bare.pid!, 'VmRSS');
    const http2Rss = await megabytes(http2.pid!, 'VmRSS');
    bench.section(
      `sidecar process in a pod namespace, as its image runs it (${image.command.join(' ')}, ` +
        `NODE_OPTIONS=${image.nodeOptions || '(none)'}; scan interval 200 ms; ${connections} new connections 50 ms apart):`,
    );
    latency(0.5, '(the scan interval is the bound)');
    latency(0.99, unapplied ? `(${unapplied} of ${connections} never applied)` : undefined);
    bench.figure({ key: 'node.rss', label: 'Node.js alone, RSS (baseline)', value: bareRss, unit: 'MiB', digits: 0 });
    bench.figure({
      key: 'node-http2.rss',
      label: 'Node.js with node:http2 loaded, RSS',
      value: http2Rss,
      unit: 'MiB',
      digits: 0,
      baseline: 'node.rss',
    });
    bench.figure({
      key: 'sidecar.rss',
      label: 'sidecar RSS',
      value: rss,
      unit: 'MiB',
      digits: 0,
      baseline: 'node.rss',
      goal: { bound: 'max', value: 50, source: 'docs/naa.md: the 50 MiB target' },
    });
    bench.figure({
      key: 'sidecar.rss-anonymous',
      label: 'sidecar RSS, anonymous (the rest: mapped files, node and libraries)',
      value: anonymous,
      unit: 'MiB',
      digits: 0,
    });
    bench.figure({
      key: 'node.idle-cpu',
      label: 'Node.js alone with a 200 ms timer, CPU (baseline)',
      value: bareCpu * 100,
      unit: '% of one core',
    });
    bench.figure({
      key: 'sidecar.idle-cpu',
      label: `sidecar CPU while idle, ${connections} connections held, over ${idleSeconds} s`,
      value: sidecarCpu * 100,
      unit: '% of one core',
      baseline: 'node.idle-cpu',
    });
  } finally {
    for (const child of children) child.kill('SIGKILL');
    execFileSync('ip', ['netns', 'delete', ns]);
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The median of `runs` figures that `work` measures. */
async function medianOf(runs: number, work: () => Promise<number>): Promise<number> {
  const figures: number[] = [];
  for (let i = 0; i < runs; i++) figures.push(await work());
  return median(figures);
}

/** The median time `work` takes, in milliseconds. */
function timeIt(runs: number, work: () => Promise<unknown>): Promise<number> {
  return medianOf(runs, async () => {
    const started = performance.now();
    await work();
    return performance.now() - started;
  });
}

await runBenchmark<Size>({
  name: 'naa',
  sizes: {
    full: { messages: 20_000, sockets: { small: 100, large: 5000 }, connections: 100, idleSeconds: 30 },
    quick: { messages: 5000, sockets: { small: 100, large: 1000 }, connections: 40, idleSeconds: 5 },
    smoke: { messages: 500, sockets: { small: 20, large: 100 }, connections: 5, idleSeconds: 1 },
  },
  async run(bench, size) {
    const { tls, remove } = await linkTls();
    try {
      await measure(bench, size, tls);
    } finally {
      await remove();
    }
  },
});

async function measure(bench: Bench, size: Size, tls: LinkTls): Promise<void> {
  const plain = await plainStream(size.messages);
  const naat = await naatStream(size.messages);
  const naatTls = await naatStream(size.messages, tls);
  bench.section(`associations on one stream (${size.messages}, pipelined, acknowledged):`);
  bench.figure({
    key: 'stream.plain',
    label: 'plain grpc-js bidi echo (baseline)',
    value: plain,
    unit: 'messages/s',
  });
  bench.figure({
    key: 'stream.naat',
    label: 'naat NAA server',
    value: naat,
    unit: 'associations/s',
    baseline: 'stream.plain',
  });
  bench.figure({
    key: 'stream.naat-tls',
    label: 'naat NAA server over TLS (vs plaintext)',
    value: naatTls,
    unit: 'associations/s',
    baseline: 'stream.naat',
  });
  const sidecar = await buildImage('sidecar');
  try {
    await scanBench(bench, sidecar, 'scan-small', size.sockets.small);
    await scanBench(bench, sidecar, 'scan-large', size.sockets.large);
    await sidecarBench(bench, sidecar, size.connections, size.idleSeconds);
    await sidecarBench(bench, sidecar, size.connections, 0, tls);
  } finally {
    await rm(sidecar.app, { recursive: true, force: true });
  }
}
