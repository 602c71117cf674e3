// The scanner against a procfs laid out in a temporary directory: which tables it reads when.
import { mkdir, mkdtemp, rm, symlink, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readApplication } from './processes.ts';
import { fullLookEvery, Scanner } from './scanner.ts';

const header = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';
// 10.244.1.2:<port> → 203.0.113.10:9000, established, held by socket inode <inode>.
const connection = (port: number, inode: number) =>
  `   0: 0201F40A:${port.toString(16).toUpperCase()} 0A7100CB:2328 01 00000000:00000000 00:00000000 00000000     0        0 ${inode} 1\n`;
// 0.0.0.0:<port>, unconnected UDP.
const datagram = (port: number, inode: number) =>
  `   0: 00000000:${port.toString(16).toUpperCase()} 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 ${inode} 2 0\n`;
const counters = (activeOpens: number) =>
  'Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs\n' +
  `Tcp: 1 200 120000 -1 ${activeOpens} 0 0 0 1 0 0\n`;

let proc: string;
const net = (file: string, text: string) => writeFile(join(proc, '7', 'net', file), text);
const holds = (fd: number, inode: number) => symlink(`socket:[${inode}]`, join(proc, '42', 'fd', String(fd)));
const ports = (associations: Map<string, { flow: { transport: string; sourcePort: number } }>) =>
  [...associations.values()].map(({ flow }) => `${flow.transport} ${flow.sourcePort}`).sort();

beforeEach(async () => {
  proc = await mkdtemp(join(tmpdir(), 'naat-scanner-'));
  await mkdir(join(proc, '7', 'net'), { recursive: true });
  await mkdir(join(proc, '42', 'fd'), { recursive: true });
  const app = join(proc, '42');
  await writeFile(join(app, 'comm'), 'curl\n');
  await writeFile(join(app, 'cmdline'), 'curl\0https://example.test/\0');
  await writeFile(join(app, 'status'), 'Name:\tcurl\nUid:\t1000\t1000\t1000\t1000\n');
  await writeFile(join(app, 'cgroup'), '0::/\n');
  await writeFile(join(app, 'environ'), 'NAAT_CONTAINER_NAME=app\0');
  await net('tcp', header + connection(40000, 1001));
  await net('udp', header);
  await net('snmp', counters(1));
  await net('sockstat', 'TCP: inuse 1 orphan 0 tw 0 alloc 1 mem 1\n');
  await holds(3, 1001);
  await holds(4, 1002);
  await holds(5, 1003);
});

afterEach(() => rm(proc, { recursive: true, force: true }));

test('reads the TCP tables again only when the TCP counters move, or when an associated socket left its descriptor', async () => {
  const scanner = new Scanner(proc, 7, { rereadMs: 5_000 });
  const first = await scanner.scan(new Date(0));
  expect(ports(first)).toEqual(['tcp 40000']);
  expect(first.get([...first.keys()][0]!)!.application).toMatchObject({ processName: 'curl', containerName: 'app' });

  // A table that changed without the counters moving is not read: the scan hands back the same map.
  await net('tcp', header + connection(40000, 1001) + connection(40001, 1002));
  expect(await scanner.scan(new Date(200))).toBe(first);

  await net('snmp', counters(2));
  expect(ports(await scanner.scan(new Date(400)))).toEqual(['tcp 40000', 'tcp 40001']);

  // Its process closed the first connection after the peer did: the counters have not moved yet.
  await net('tcp', header + connection(40001, 1002));
  await unlink(join(proc, '42', 'fd', '3'));
  expect(ports(await scanner.scan(new Date(5_300)))).toEqual(['tcp 40000', 'tcp 40001']);
  expect(ports(await scanner.scan(new Date(5_400)))).toEqual(['tcp 40001']);
});

test('at the safety interval, reads no TCP table while every associated socket is still held', async () => {
  const scanner = new Scanner(proc, 7, { rereadMs: 5_000 });
  const first = await scanner.scan(new Date(0));
  // What the tables say now does not matter while the counters stand still and the descriptors hold.
  await net('tcp', header);
  expect(await scanner.scan(new Date(5_000))).toBe(first);

  // Its process forked, and the parent closed its descriptor: the child holds the socket on.
  await unlink(join(proc, '42', 'fd', '3'));
  await mkdir(join(proc, '43', 'fd'), { recursive: true });
  await symlink(`socket:[1001]`, join(proc, '43', 'fd', '7'));
  expect(await scanner.scan(new Date(10_000))).toBe(first);

  // The child closes it: the tables are read again.
  await unlink(join(proc, '43', 'fd', '7'));
  expect(ports(await scanner.scan(new Date(15_000)))).toEqual([]);
});

test('at the safety interval, looks at the descriptors of a process whose descriptor count moved, and of all at a full look', async () => {
  // What the kernel says of each process's descriptor count (descriptorCounter, processes.test.ts).
  const counts = new Map([[42, 3]]);
  const scanner = new Scanner(proc, 7, { rereadMs: 5_000, descriptors: (pid) => counts.get(pid) });
  const first = await scanner.scan(new Date(0));
  // The first look at the descriptors finds the socket held, and keeps the count.
  expect(await scanner.scan(new Date(5_000))).toBe(first);

  // The process closed the connection after the peer did, and opened a file: its count stands still.
  await net('tcp', header);
  await unlink(join(proc, '42', 'fd', '3'));
  expect(await scanner.scan(new Date(10_000))).toBe(first);
  expect(await scanner.scan(new Date(20_000))).toBe(first);
  // The full look, fullLookEvery intervals after the last one, sees it.
  expect(ports(await scanner.scan(new Date(5_000 + fullLookEvery * 5_000)))).toEqual([]);

  // A new connection; then it is closed, and the count moves: seen at the next interval.
  await net('tcp', header + connection(40001, 1002));
  await net('snmp', counters(2));
  const second = await scanner.scan(new Date(30_000));
  expect(ports(second)).toEqual(['tcp 40001']);
  expect(await scanner.scan(new Date(35_000))).toBe(second);
  await net('tcp', header);
  await unlink(join(proc, '42', 'fd', '4'));
  counts.set(42, 2);
  expect(ports(await scanner.scan(new Date(40_000)))).toEqual([]);
});

test('a count taken before the associations changed says nothing of the new ones', async () => {
  const counts = new Map([[42, 3]]);
  const scanner = new Scanner(proc, 7, { rereadMs: 5_000, descriptors: (pid) => counts.get(pid) });
  await scanner.scan(new Date(0));
  expect(ports(await scanner.scan(new Date(5_000)))).toEqual(['tcp 40000']);
  // A new connection, seen by its counters; the process then closes it after the peer did, and
  // meanwhile its count came back to what it was when its sockets were last found held.
  await net('tcp', header + connection(40000, 1001) + connection(40001, 1002));
  await net('snmp', counters(2));
  expect(ports(await scanner.scan(new Date(6_000)))).toEqual(['tcp 40000', 'tcp 40001']);
  await net('tcp', header + connection(40000, 1001));
  await unlink(join(proc, '42', 'fd', '4'));
  expect(ports(await scanner.scan(new Date(11_000)))).toEqual(['tcp 40000']);
});

test('reads the UDP tables at every scan, and the TCP tables when the counters cannot be read', async () => {
  const scanner = new Scanner(proc, 7);
  await scanner.scan(new Date(0));
  await net('udp', header + datagram(5353, 1003));
  expect(ports(await scanner.scan(new Date(200)))).toEqual(['tcp 40000', 'udp 5353']);

  await net('snmp', '');
  await net('tcp', header);
  expect(ports(await scanner.scan(new Date(400)))).toEqual(['udp 5353']);
});

test('with skipQuiet, looks at the namespace only when its packet or socket counters move, or when the safety interval has passed', async () => {
  const dev = (packets: number) =>
    'Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n' +
    `  eth0: ${packets * 60} ${packets} 0 0 0 0 0 0 ${packets * 60} ${packets} 0 0 0 0 0 0\n`;
  await net('dev', dev(3));
  await net('sockstat', 'sockets: used 3\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 1\nUDP: inuse 0 mem 0\n');
  const scanner = new Scanner(proc, 7, { rereadMs: 5_000, skipQuiet: true });
  const first = await scanner.scan(new Date(0));
  expect(ports(first)).toEqual(['tcp 40000']);

  // A UDP socket bound already connects: nothing moved, the namespace is not looked at.
  await net('udp', header + datagram(5353, 1003));
  expect(await scanner.scan(new Date(200))).toBe(first);
  // Its first datagram.
  await net('dev', dev(4));
  expect(ports(await scanner.scan(new Date(400)))).toEqual(['tcp 40000', 'udp 5353']);

  // A new connection is looked for once the namespace's counters move: here with its SYN.
  await net('tcp', header + connection(40000, 1001) + connection(40001, 1002));
  await net('snmp', counters(2));
  expect(ports(await scanner.scan(new Date(600)))).toEqual(['tcp 40000', 'udp 5353']);
  await net('dev', dev(5));
  expect(ports(await scanner.scan(new Date(800)))).toEqual(['tcp 40000', 'tcp 40001', 'udp 5353']);

  // The socket goes without a word of the counters: seen once the safety interval has passed.
  await net('udp', header);
  expect(ports(await scanner.scan(new Date(5_700)))).toEqual(['tcp 40000', 'tcp 40001', 'udp 5353']);
  expect(ports(await scanner.scan(new Date(5_800)))).toEqual(['tcp 40000', 'tcp 40001']);
});

test("a socket whose owner is not among the owners' processes is looked for again once they are others, quiet or not", async () => {
  await net(
    'dev',
    'Inter-|   Receive |  Transmit\n face |bytes packets|bytes packets\n  eth0: 60 1 0 0 0 0 0 0 60 1 0 0 0 0 0 0\n',
  );
  await net('sockstat', 'sockets: used 3\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 1\nUDP: inuse 0 mem 0\n');
  let pids: number[] = [];
  const scanner = new Scanner(proc, 7, {
    rereadMs: 5_000,
    skipQuiet: true,
    owners: {
      pids: () => pids,
      identify: (pid) => readApplication(proc, pid),
    },
  });
  expect(ports(await scanner.scan(new Date(0)))).toEqual([]);
  expect(scanner.unowned).toEqual(new Set([1001]));
  // The same processes: nothing to look for again, and nothing moved.
  expect(ports(await scanner.scan(new Date(200)))).toEqual([]);
  // Its owner is named now, though no count moved and no table changed.
  pids = [42];
  expect(ports(await scanner.scan(new Date(400)))).toEqual(['tcp 40000']);
  expect(scanner.unowned).toEqual(new Set());
});
