// NAA benchmarks (`npm run bench:naa`, as root): prints figures, each against a baseline
// measured in the same run on the same machine.
//  1. Associations one stream sustains (driver → NAA server → acknowledged) vs a plain grpc-js
//     bidirectional stream echoing messages of the same size.
//  2. Scanning a pod with many sockets: a first scan (every owner looked up) and a steady scan,
//     vs reading the socket tables alone.
//  3. The real sidecar process: memory, CPU while idle, and connect() → association applied.
import { credentials, Server, ServerCredentials, type ServerDuplexStream } from '@grpc/grpc-js';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NaaServer } from '../../dataplane/naa/server.ts';
import {
  addressToBytes,
  AssociationServiceClient,
  AssociationServiceService,
  Protocol,
  type AssociateRequest,
  type AssociateResponse,
} from '../../proto/index.ts';
import { Scanner } from '../../sidecar/scanner.ts';

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

async function scanBench(sockets: number): Promise<void> {
  const ns = `naat-bench-${process.pid}`;
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  const holder = spawn(
    'ip',
    [
      'netns',
      'exec',
      ns,
      'python3',
      '-c',
      `import socket,resource,time
hard=resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE,(hard,hard))
s=socket.socket(); s.bind(('127.0.0.1',9000)); s.listen(4096); held=[]
for i in range(${sockets}):
  c=socket.create_connection(('127.0.0.1',9000)); held.append(c); held.append(s.accept()[0])
print('ready',flush=True); time.sleep(600)`,
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  try {
    await new Promise((resolve, reject) => {
      holder.stdout.once('data', resolve);
      holder.once('exit', (code) => reject(new Error(`the socket holder exited with ${code}`)));
    });
    const tablesOnly = await timeIt(5, () => readFile(`/proc/${holder.pid}/net/tcp`, 'utf8'));
    const scanner = new Scanner('/proc', holder.pid!);
    const first = await timeIt(1, () => scanner.scan());
    const steady = await timeIt(5, () => scanner.scan());
    const found = (await scanner.scan()).size;
    console.log(`scan of a pod with ${sockets} outbound connections (${found} found):`);
    console.log(`  reading /proc/<pid>/net/tcp alone   ${tablesOnly.toFixed(1)} ms  (baseline)`);
    console.log(
      `  first scan (every owner looked up)   ${first.toFixed(1)} ms  ratio ${(first / tablesOnly).toFixed(1)}`,
    );
    console.log(
      `  steady scan (owners cached)          ${steady.toFixed(1)} ms  ratio ${(steady / tablesOnly).toFixed(1)}`,
    );
  } finally {
    holder.kill('SIGKILL');
    execFileSync('ip', ['netns', 'delete', ns]);
  }
}

/** The real sidecar process in a pod namespace: its memory, its idle CPU, and connect → applied latency. */
async function sidecarBench(connections: number): Promise<void> {
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
  try {
    const sidecar = spawn('ip', ['netns', 'exec', ns, process.execPath, 'sidecar/main.ts'], {
      stdio: 'ignore',
      env: {
        ...process.env,
        NAAT_NAA_SERVER: `unix:${join(dir, 'naa.sock')}`,
        NAAT_POD_NAMESPACE: 'bench',
        NAAT_POD_NAME: 'bench',
        NAAT_POD_UID: 'bench',
        NAAT_TOKEN_FILE: join(dir, 'token'),
      },
    });
    children.push(sidecar);
    while (server.sessions === 0) await new Promise((resolve) => setTimeout(resolve, 50));
    const client = spawn(
      'ip',
      [
        'netns',
        'exec',
        ns,
        'python3',
        '-u',
        '-c',
        `import socket,time,sys
s=socket.socket(); s.bind(('127.0.0.1',9000)); s.listen(4096); held=[]
for i in range(${connections}):
  c=socket.socket(); c.connect(('127.0.0.1',9000)); print(c.getsockname()[1], int(time.time()*1000)); held.append(c); held.append(s.accept()[0]); time.sleep(0.05)
print('done'); time.sleep(600)`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    children.push(client);
    const connected = new Map<number, number>();
    let output = '';
    await new Promise<void>((resolve) =>
      client.stdout.on('data', (chunk: Buffer) => {
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
    const rss = Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${sidecar.pid}/status`, 'utf8'))?.[1]) / 1024;
    const cpu = async () => {
      const fields = (await readFile(`/proc/${sidecar.pid}/stat`, 'utf8')).split(') ')[1]!.split(' ');
      return (Number(fields[11]) + Number(fields[12])) / 100;
    };
    const cpuBefore = await cpu();
    await new Promise((resolve) => setTimeout(resolve, 10_000));
    const idleCpu = ((await cpu()) - cpuBefore) / 10;
    console.log(
      `sidecar process in a pod namespace (scan interval 200 ms, ${connections} new connections 50 ms apart):`,
    );
    console.log(
      `  connect() → association applied  p50 ${pick(0.5)} ms  p99 ${pick(0.99)} ms  (the scan interval is the bound)`,
    );
    console.log(`  RSS ${rss.toFixed(0)} MiB; CPU while idle ${(idleCpu * 100).toFixed(1)} % of one core`);
  } finally {
    for (const child of children) child.kill('SIGKILL');
    execFileSync('ip', ['netns', 'delete', ns]);
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function timeIt(runs: number, work: () => Promise<unknown>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    await work();
    times.push(performance.now() - started);
  }
  return times.sort((a, b) => a - b)[Math.floor(times.length / 2)]!;
}

const plain = await plainStream();
const naat = await naatStream();
console.log(`associations on one stream (${messages}, pipelined, acknowledged):`);
console.log(`  plain grpc-js bidi echo   ${plain.toFixed(0)} messages/s  (baseline)`);
console.log(`  naat NAA server           ${naat.toFixed(0)} associations/s  ratio ${(naat / plain).toFixed(2)}`);
for (const sockets of [100, 5000]) await scanBench(sockets);
await sidecarBench(100);
