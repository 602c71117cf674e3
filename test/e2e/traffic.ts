// Real traffic through a test topology: servers in the server namespace, clients in pods. The
// clients that make many attempts (connections, pings, a long transfer) count failures rather
// than throw, so that tests can assert on them; the others reject with what went wrong.
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { isIPv6 } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ExecError, server, stopProcess, type Topology } from './topology.ts';

/** What the traffic needs of a topology: programs in its namespaces, and the server's namespace. */
export type TrafficTopology = Pick<Topology, 'exec' | 'spawn'> & { ns: Pick<Topology['ns'], 'srv'> };

const programs = join(dirname(fileURLToPath(import.meta.url)), 'programs');

export interface Server {
  stop(): Promise<void>;
}

/**
 * Answers TCP connections and UDP datagrams on both server addresses (or on `addresses`, in the
 * topology's server namespace) with how it saw the client.
 */
export function startWhoami(
  topology: TrafficTopology,
  port = 9000,
  addresses: readonly string[] = [server.v4, server.v6],
): Promise<Server> {
  return startNodeServer(topology, [join(programs, 'whoami.ts'), String(port), ...addresses]);
}

export interface ConnectOptions {
  /** At most this many at a time; 100 by default. */
  concurrency?: number;
  /** How long each may take; 2 s by default. */
  timeoutMs?: number;
  transport?: 'tcp' | 'udp';
  /** Every ask from this source port, one at a time; a new one each time by default. */
  sourcePort?: number;
}

export interface Answers {
  /** How the whoami server saw each client that got an answer: "<address> <port>". */
  answers: string[];
  failures: number;
  /** The first failure's message. */
  error?: string;
  /** From the first ask to the last answer. */
  seconds: number;
}

/** Asks a whoami server `count` times from namespace `ns`, each time from a new source port unless one is given. */
export async function connectMany(
  topology: TrafficTopology,
  ns: string,
  address: string,
  port: number,
  count: number,
  options: ConnectOptions = {},
): Promise<Answers> {
  const concurrency = options.sourcePort ? 1 : (options.concurrency ?? 100);
  const timeoutMs = options.timeoutMs ?? 2000;
  const { stdout } = await topology.exec(
    ns,
    [
      process.execPath,
      join(programs, 'connect-many.ts'),
      options.transport ?? 'tcp',
      address,
      String(port),
      String(count),
      String(concurrency),
      String(timeoutMs),
      ...(options.sourcePort ? [String(options.sourcePort)] : []),
    ],
    { timeoutMs: Math.ceil(count / concurrency) * timeoutMs + 30_000 },
  );
  return JSON.parse(stdout) as Answers;
}

/**
 * Whether `address` answers pings from namespace `ns` that carry ICMP identifier `identifier`
 * (iputils' `-e`, which makes ping use a raw socket so that the identifier is really its own).
 */
export async function ping(
  topology: TrafficTopology,
  ns: string,
  address: string,
  { identifier, count = 3 }: { identifier: number; count?: number },
): Promise<boolean> {
  const argv = ['ping', '-n', '-q', '-c', String(count), '-i', '0.2', '-W', '1', '-e', String(identifier), address];
  try {
    await topology.exec(ns, argv);
    return true;
  } catch (error) {
    // ping exits with 1 when nothing answered and with 2 when it could not ping at all.
    if (error instanceof ExecError && error.exitCode === 1) return false;
    throw error;
  }
}

export interface FtpServer extends Server {
  /** What the server hands out as `ftpPath`. */
  content: Buffer;
}

export const ftpPath = '/data.bin';

/**
 * vsftpd on both server addresses (one process for each family), serving a file of random bytes
 * to anonymous users, in passive and active mode, with active data connections from port 20.
 */
export async function startFtpServer(topology: TrafficTopology): Promise<FtpServer> {
  const dir = await mkdtemp(join(tmpdir(), 'naat-ftp-'));
  const content = randomBytes(300 * 1024);
  await mkdir(join(dir, 'root'));
  await mkdir(join(dir, 'empty'));
  await writeFile(join(dir, 'root', ftpPath), content);
  const common = [
    'background=NO',
    'anonymous_enable=YES',
    'no_anon_password=YES',
    'local_enable=NO',
    'write_enable=NO',
    `anon_root=${join(dir, 'root')}`,
    `secure_chroot_dir=${join(dir, 'empty')}`,
    'pasv_enable=YES',
    'port_enable=YES',
    'connect_from_port_20=YES',
  ];
  const listen = {
    v4: ['listen=YES', 'listen_ipv6=NO', `listen_address=${server.v4}`],
    v6: ['listen=NO', 'listen_ipv6=YES', `listen_address6=${server.v6}`],
  };
  const servers: Server[] = [];
  try {
    for (const family of ['v4', 'v6'] as const) {
      const config = join(dir, `vsftpd-${family}.conf`);
      await writeFile(config, [...common, ...listen[family]].join('\n') + '\n');
      servers.push(await startServer(topology, ['vsftpd', config], () => listening(topology, server[family], 21)));
    }
  } catch (error) {
    await Promise.all(servers.map((s) => s.stop()));
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    content,
    stop: async () => {
      await Promise.all(servers.map((s) => s.stop()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface FtpOptions {
  /** The server opens the data connection to the client (PORT/EPRT) instead of the other way round. */
  active?: boolean;
  /** PASV or PORT, which carry an IPv4 address, instead of EPSV or EPRT; for IPv4 only. */
  classic?: boolean;
}

/** Fetches `ftpPath` with curl from namespace `ns`; rejects with curl's complaint. */
export async function fetchFtp(
  topology: TrafficTopology,
  ns: string,
  address: string,
  options: FtpOptions = {},
): Promise<Buffer> {
  const dir = await mkdtemp(join(tmpdir(), 'naat-ftp-fetch-'));
  const file = join(dir, 'data');
  const host = isIPv6(address) ? `[${address}]` : address;
  try {
    await topology.exec(ns, [
      'curl',
      '--silent',
      '--show-error',
      '--globoff',
      '--connect-timeout',
      '5',
      '--max-time',
      '20',
      // The address the control connection comes from, that is the pod's.
      ...(options.active ? ['--ftp-port', '-'] : []),
      ...(options.classic ? ['--disable-epsv', '--disable-eprt'] : []),
      '--output',
      file,
      `ftp://${host}${ftpPath}`,
    ]);
    return await readFile(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface IperfOptions {
  seconds?: number;
  /** The server sends and the pod receives. */
  reverse?: boolean;
  port?: number;
}

/** Bits per second that iperf3 moved between namespace `ns` and the server over TCP. */
export async function iperf(
  topology: TrafficTopology,
  ns: string,
  address: string,
  options: IperfOptions = {},
): Promise<number> {
  const seconds = options.seconds ?? 2;
  const port = options.port ?? 5201;
  const iperfServer = await startServer(topology, ['iperf3', '-s', '-1', '-B', address, '-p', String(port)], () =>
    listening(topology, address, port),
  );
  try {
    const { stdout } = await topology.exec(
      ns,
      [
        'iperf3',
        '-J',
        '-c',
        address,
        '-p',
        String(port),
        '-t',
        String(seconds),
        '--connect-timeout',
        '3000',
        ...(options.reverse ? ['-R'] : []),
      ],
      { timeoutMs: seconds * 1000 + 30_000 },
    );
    const report = JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } };
    return report.end.sum_received.bits_per_second;
  } finally {
    await iperfServer.stop();
  }
}

/** Serves slow, steady downloads on both server addresses; see startTransfer. */
export function startStreamServer(topology: TrafficTopology, port = 9100): Promise<Server> {
  return startNodeServer(topology, [join(programs, 'stream.ts'), 'serve', String(port), server.v4, server.v6]);
}

export interface TransferOptions {
  seconds: number;
  /** 100 kB/s by default. */
  bytesPerSecond?: number;
  /** The transfer fails after this long without a byte; 5 s by default. */
  idleTimeoutMs?: number;
}

export interface TransferResult {
  /** Whether every byte arrived and the server closed the connection normally. */
  ok: boolean;
  bytes: number;
  expected: number;
  error?: string;
}

export interface Transfer {
  /** Resolves at the first byte, rejects if the transfer ended before. */
  receiving: Promise<void>;
  result: Promise<TransferResult>;
}

/** Downloads from a stream server for `seconds`, from namespace `ns`, while the test does something else. */
export function startTransfer(
  topology: TrafficTopology,
  ns: string,
  address: string,
  port: number,
  options: TransferOptions,
): Transfer {
  const bytesPerSecond = options.bytesPerSecond ?? 100_000;
  const expected = options.seconds * bytesPerSecond;
  const client = topology.spawn(
    ns,
    [
      process.execPath,
      join(programs, 'stream.ts'),
      'fetch',
      address,
      String(port),
      String(options.seconds),
      String(bytesPerSecond),
      String(options.idleTimeoutMs ?? 5000),
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const output = collect(client);
  const receiving = new Promise<void>((resolve, reject) => {
    client.stdout!.on('data', () => {
      if (output.stdout.startsWith('receiving\n')) resolve();
    });
    client.once('exit', () => reject(new Error(`The transfer ended before its first byte: ${said(output)}`)));
  });
  // A test that only awaits the result must not fail on an unhandled rejection of `receiving`.
  receiving.catch(() => {});
  const result = new Promise<TransferResult>((resolve, reject) => {
    client.once('exit', () => {
      const last = output.stdout.trim().split('\n').at(-1) ?? '';
      if (!last.startsWith('{')) return reject(new Error(`The transfer client failed: ${said(output)}`));
      const { bytes, error } = JSON.parse(last) as { bytes: number; error?: string };
      resolve({ ok: !error && bytes === expected, bytes, expected, ...(error ? { error } : {}) });
    });
  });
  return { receiving, result };
}

function startNodeServer(topology: TrafficTopology, args: string[]): Promise<Server> {
  return startServer(topology, [process.execPath, ...args], async (output) => output.stdout.includes('listening\n'));
}

// Starts a program in the server namespace and resolves once `ready` says it serves; rejects,
// with what the program said, if it exits or is not ready within 10 s.
async function startServer(
  topology: TrafficTopology,
  argv: string[],
  ready: (output: Output) => Promise<boolean>,
): Promise<Server> {
  const child = topology.spawn(topology.ns.srv, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  const output = collect(child);
  const deadline = Date.now() + 10_000;
  while (!(await ready(output))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stopProcess(child);
      throw new Error(`${argv.join(' ')} did not start serving: ${said(output)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { stop: () => stopProcess(child) };
}

async function listening(topology: TrafficTopology, address: string, port: number): Promise<boolean> {
  const { stdout } = await topology.exec(topology.ns.srv, ['ss', '-Hltn', `sport = :${port}`]);
  return stdout.includes(address);
}

interface Output {
  stdout: string;
  stderr: string;
}

function collect(child: ChildProcess): Output {
  const output = { stdout: '', stderr: '' };
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => (output.stdout += chunk));
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => (output.stderr += chunk));
  return output;
}

function said(output: Output): string {
  return output.stderr.trim() || output.stdout.trim() || 'nothing';
}

/**
 * A python3 program (for `python3 -c`) that downloads `seconds` of `bytesPerSecond` from a stream
 * server at `address`, from `sourceAddress` if given: it prints its source port once connected,
 * and the bytes it received once the server closed the connection.
 */
export const pythonDownload = (
  address: string,
  port: number,
  seconds: number,
  bytesPerSecond: number,
  sourceAddress?: string,
): string => `import socket
s=socket.create_connection(('${address}',${port}),timeout=10${sourceAddress ? `,source_address=('${sourceAddress}',0)` : ''})
print(s.getsockname()[1],flush=True)
s.sendall(b'${seconds} ${bytesPerSecond}\\n')
n=0
while True:
  d=s.recv(65536)
  if not d: break
  n+=len(d)
print(n,flush=True)`;

/**
 * A shell script for a pod: `count` python3 connections to the server's `address` (IPv4 by
 * default) at `port`, one after another, printing the address the whoami server saw for each.
 */
export const pythonConnects = (port: number, count: number, address = server.v4): string => `python3 - <<'EOF'
import socket
for _ in range(${count}):
    s = socket.create_connection(('${address}', ${port}), timeout=4)
    print(s.recv(100).decode().split(' ')[0], flush=True)
    s.close()
EOF`;

/** A shell script for a pod: `count` curl connections to the server's `address` (IPv4 by default) at `port`, printing x for each that failed. */
export const curlConnects = (port: number, count: number, address = server.v4): string => {
  const host = isIPv6(address) ? `[${address}]` : address;
  return `for i in $(seq ${count}); do curl -s -m 2 -o /dev/null telnet://${host}:${port} </dev/null || echo x; done`;
};
