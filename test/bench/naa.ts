// NAA benchmarks (`npm run bench:naa`, as root): prints figures, each against a baseline
// measured in the same run on the same machine.
//  1. Associations one stream sustains (driver → NAA server → acknowledged) vs a plain grpc-js
//     bidirectional stream echoing messages of the same size.
//  2. Scanning a pod with many sockets: a first scan (every owner looked up), a scan after one new
//     connection, and a scan when nothing changed, vs reading the socket table alone. The scanner
//     runs as in the sidecar: compiled, in a process with the sidecar image's NODE_OPTIONS.
//  3. The real sidecar process, built and started as its image does it: connect() → association
//     applied, memory, and CPU while idle, vs Node.js alone with the same options (and, for
//     memory, Node.js with node:http2 loaded, the least a gRPC client needs).
// The sidecar image runs Node.js without WebAssembly (--jitless), which type stripping needs: what
// runs that way is the compiled JavaScript, built here as the image build does.
import { credentials, Server, ServerCredentials, type ServerDuplexStream } from '@grpc/grpc-js';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NaaServer } from '../../dataplane/naa/server.ts';
import {
  AssociationServiceClient,
  AssociationServiceService,
  Protocol,
  type AssociateRequest,
  type AssociateResponse,
} from '../../proto/index.ts';
import { addressToBytes } from '../../common/index.ts';

const root = join(import.meta.dirname, '..', '..');
const messages = 20_000;
const podIp = '10.244.0.10';

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
async function pump(port: number, first: AssociateRequest[]): Promise<number> {
  const client = new AssociationServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
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

async function naatStream(): Promise<number> {
  const server = new NaaServer({
    authenticator: { authenticate: async (_token, pod) => ({ pod, addresses: [podIp] }) },
    sink: { apply: async () => {} },
    limits: { maxMessagesPerSecond: 10_000_000, maxAssociations: messages + 1 },
  });
  const pod = { namespace: 'bench', name: 'bench', uid: 'bench' };
  const hello = { protocolVersion: 1, pod, token: 't', driverVersion: 'b', mode: 1 } as const;
  const rate = await pump(await server.listen('127.0.0.1:0'), [
    { sequence: 1, body: { $case: 'hello', value: hello } },
  ]);
  await server.close();
  return rate;
}

/** The same messages through a bare bidi stream that answers each with an ack: grpc-js's own cost. */
async function plainStream(): Promise<number> {
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
  const rate = await pump(port, []);
  await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
  return rate;
}

interface SidecarBuild {
  /** What the image holds in its working directory: dist/, package.json, node_modules. */
  app: string;
  command: string[];
  nodeOptions: string;
}

async function scanBench(sidecar: SidecarBuild, sockets: number): Promise<void> {
  const ns = `naat-bench-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
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
s=socket.socket(); s.bind(('127.0.0.1',9000)); s.listen(4096); held=[]
def connect():
  c=socket.create_connection(('127.0.0.1',9000)); held.append(c); held.append(s.accept()[0])
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
import { Scanner } from './dist/sidecar/scanner.js';
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
    const afterNew = await median(5, async () => {
      holder.stdin.write('\n');
      await next(holderLines, 'socket holder');
      return scan();
    });
    const quiet = await median(5, scan);
    const ratio = (ms: number) => `ratio ${(ms / tablesOnly).toFixed(2)}`;
    console.log(`scan of a pod with ${sockets} outbound connections (${found} found at the end):`);
    console.log(`  reading /proc/<pid>/net/tcp alone       ${tablesOnly.toFixed(1)} ms  (baseline)`);
    console.log(`  first scan (every owner looked up)       ${first.toFixed(1)} ms  ${ratio(first)}`);
    console.log(`  scan after one new connection            ${afterNew.toFixed(1)} ms  ${ratio(afterNew)}`);
    console.log(`  scan when nothing changed                ${quiet.toFixed(2)} ms  ${ratio(quiet)}`);
  } finally {
    scanner.kill('SIGKILL');
    holder.kill('SIGKILL');
    execFileSync('ip', ['netns', 'delete', ns]);
  }
}

/**
 * Builds what the sidecar image holds in its working directory (the `npm run build` output,
 * package.json and the modules) into a temporary directory, and reads from images/Dockerfile how
 * the image starts it: its command and NODE_OPTIONS.
 */
async function buildSidecar(): Promise<SidecarBuild> {
  const dockerfile = await readFile(join(root, 'images', 'Dockerfile'), 'utf8');
  const stage = /^FROM \S+ AS sidecar$([\s\S]*?)(?=^FROM |$(?![\s\S]))/m.exec(dockerfile)?.[1] ?? '';
  const command = /^CMD (\[.*\])$/m.exec(stage)?.[1];
  if (!command) throw new Error('images/Dockerfile has no sidecar stage with a CMD');
  const app = await mkdtemp(join(tmpdir(), 'naat-bench-app-'));
  try {
    const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
    // Emitting only: type checking is `npm run typecheck`'s job.
    const build = ['-p', join(root, 'tsconfig.build.json'), '--outDir', join(app, 'dist'), '--noCheck'];
    execFileSync(process.execPath, [tsc, ...build], { stdio: 'inherit' });
    await copyFile(join(root, 'package.json'), join(app, 'package.json'));
    await symlink(join(root, 'node_modules'), join(app, 'node_modules'));
  } catch (error) {
    await rm(app, { recursive: true, force: true });
    throw error;
  }
  return {
    app,
    command: JSON.parse(command) as string[],
    nodeOptions: /^ENV NODE_OPTIONS="([^"]*)"$/m.exec(stage)?.[1] ?? '',
  };
}

const megabytes = async (pid: number, field: string) =>
  Number(new RegExp(`${field}:\\s+(\\d+)`).exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;

/** Seconds of CPU a process has used (user and system). */
async function cpuSeconds(pid: number): Promise<number> {
  const fields = (await readFile(`/proc/${pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** The share of one core a process uses over `seconds`. */
async function cpuShare(pid: number, seconds: number): Promise<number> {
  const before = await cpuSeconds(pid);
  await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
  return ((await cpuSeconds(pid)) - before) / seconds;
}

/**
 * The real sidecar process in a pod namespace, built and started as its image does it: connect() →
 * association applied, then its memory and CPU while idle with the connections held.
 */
async function sidecarBench(image: SidecarBuild, connections: number, idleSeconds: number): Promise<void> {
  const ns = `naat-bench-${process.pid}`;
  const dir = await mkdtemp(join(tmpdir(), 'naat-bench-'));
  const applied = new Map<number, number>();
  const server = new NaaServer({
    authenticator: { authenticate: async (_token, pod) => ({ pod, addresses: ['127.0.0.1'] }) },
    sink: {
      apply: async (changes) => {
        for (const entry of changes.upsert)
          if (!applied.has(entry.sourcePort)) applied.set(entry.sourcePort, Date.now());
      },
    },
  });
  await server.listen(`unix:${join(dir, 'naa.sock')}`);
  await writeFile(join(dir, 'token'), 'bench');
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
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
    const [node, ...args] = image.command;
    if (node !== 'node') throw new Error(`the sidecar image runs ${node}, not node`);
    const sidecar = inPod([process.execPath, ...args], {
      NAAT_NAA_SERVER: `unix:${join(dir, 'naa.sock')}`,
      NAAT_POD_NAMESPACE: 'bench',
      NAAT_POD_NAME: 'bench',
      NAAT_POD_UID: 'bench',
      NAAT_TOKEN_FILE: join(dir, 'token'),
    });
    while (server.sessions === 0) await new Promise((resolve) => setTimeout(resolve, 50));
    const client = inPod(
      [
        'python3',
        '-u',
        '-c',
        `import socket,time,sys
s=socket.socket(); s.bind(('127.0.0.1',9000)); s.listen(4096); held=[]
for i in range(${connections}):
  c=socket.socket(); c.connect(('127.0.0.1',9000)); print(c.getsockname()[1], int(time.time()*1000)); held.append(c); held.append(s.accept()[0]); time.sleep(0.05)
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
    const latencies = [...connected].map(([port, at]) => (applied.get(port) ?? Infinity) - at).sort((a, b) => a - b);
    const pick = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!;

    // Node.js alone, with the same options and a timer at the scan interval, measured alongside;
    // and with node:http2 loaded, the least any gRPC client in Node.js needs.
    const bare = inPod([process.execPath, '-e', 'setInterval(() => {}, 200)']);
    const http2 = inPod([process.execPath, '-e', "require('node:http2'); setInterval(() => {}, 200)"]);
    const [sidecarCpu, bareCpu] = await Promise.all([
      cpuShare(sidecar.pid!, idleSeconds),
      cpuShare(bare.pid!, idleSeconds),
    ]);
    const rss = await megabytes(sidecar.pid!, 'VmRSS');
    const anonymous = await megabytes(sidecar.pid!, 'RssAnon');
    const bareRss = await megabytes(bare.pid!, 'VmRSS');
    const http2Rss = await megabytes(http2.pid!, 'VmRSS');
    const percent = (share: number) => `${(share * 100).toFixed(2)} % of one core`;
    console.log(
      `sidecar process in a pod namespace, as its image runs it (${[node, ...args].join(' ')}, ` +
        `NODE_OPTIONS=${image.nodeOptions || '(none)'}; scan interval 200 ms; ${connections} new connections 50 ms apart):`,
    );
    console.log(
      `  connect() → association applied  p50 ${pick(0.5)} ms  p99 ${pick(0.99)} ms  (the scan interval is the bound)`,
    );
    console.log(
      `  RSS ${rss.toFixed(0)} MiB (${anonymous.toFixed(0)} MiB anonymous, the rest mapped files: the node binary and libraries)` +
        `  Node.js alone ${bareRss.toFixed(0)} MiB, with node:http2 loaded ${http2Rss.toFixed(0)} MiB`,
    );
    console.log(
      `  CPU while idle, ${connections} connections held, over ${idleSeconds} s  ${percent(sidecarCpu)}` +
        `  Node.js alone with a 200 ms timer ${percent(bareCpu)}`,
    );
  } finally {
    for (const child of children) child.kill('SIGKILL');
    execFileSync('ip', ['netns', 'delete', ns]);
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The median of `runs` figures that `work` measures. */
async function median(runs: number, work: () => Promise<number>): Promise<number> {
  const figures: number[] = [];
  for (let i = 0; i < runs; i++) figures.push(await work());
  return figures.sort((a, b) => a - b)[Math.floor(runs / 2)]!;
}

/** The median time `work` takes, in milliseconds. */
function timeIt(runs: number, work: () => Promise<unknown>): Promise<number> {
  return median(runs, async () => {
    const started = performance.now();
    await work();
    return performance.now() - started;
  });
}

const plain = await plainStream();
const naat = await naatStream();
console.log(`associations on one stream (${messages}, pipelined, acknowledged):`);
console.log(`  plain grpc-js bidi echo   ${plain.toFixed(0)} messages/s  (baseline)`);
console.log(`  naat NAA server           ${naat.toFixed(0)} associations/s  ratio ${(naat / plain).toFixed(2)}`);
const sidecar = await buildSidecar();
try {
  for (const sockets of [100, 5000]) await scanBench(sidecar, sockets);
  await sidecarBench(sidecar, 100, 30);
} finally {
  await rm(sidecar.app, { recursive: true, force: true });
}
