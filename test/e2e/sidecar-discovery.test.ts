// The driver's scanner finds, in a real network namespace, which real program owns each
// outbound socket, and notices when one goes away.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { diffAssociations, Scanner } from '../../contracts/naa/index.ts';

const ns = `naat-scan-${process.pid}`;
const pod = '10.200.0.1';
const programs: ChildProcess[] = [];
const inPod = (container: string, command: string[]) => {
  const child = spawn('ip', ['netns', 'exec', ns, 'env', `NAAT_CONTAINER_NAME=${container}`, ...command], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  programs.push(child);
  return child;
};
const ready = (child: ChildProcess) =>
  new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`exited with ${code} before it was ready`)));
  });

let server: ChildProcess;
beforeAll(async () => {
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  // The pod's own address: connections on loopback never leave a pod, and the scanner skips them.
  execFileSync('ip', ['-n', ns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'peer0']);
  execFileSync('ip', ['-n', ns, 'addr', 'add', `${pod}/24`, 'dev', 'eth0']);
  for (const link of ['eth0', 'peer0']) execFileSync('ip', ['-n', ns, 'link', 'set', link, 'up']);
  const listen = `import socket,sys,time
s=socket.socket(); s.bind(('0.0.0.0',9000)); s.listen(); print('ready',flush=True)
held=[s.accept() for _ in range(3)]; time.sleep(600)`;
  server = inPod('server', ['python3', '-c', listen]);
  await ready(server);
});

afterAll(() => {
  for (const child of programs) child.kill('SIGKILL');
  execFileSync('ip', ['netns', 'delete', ns]);
});

test('finds each program behind its connection and its unconnected UDP socket (not loopback), then sees one leave', async () => {
  const python = inPod('web', [
    'python3',
    '-c',
    `import socket,time
c=socket.create_connection(('${pod}',9000)); l=socket.create_connection(('127.0.0.1',9000))
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind(('0.0.0.0',5353))
print('ready',flush=True); time.sleep(600)`,
  ]);
  const node = inPod('worker', [
    process.execPath,
    '-e',
    `require('net').connect(9000,'${pod}',()=>console.log('ready')); setInterval(()=>{},1000)`,
  ]);
  await Promise.all([ready(python), ready(node)]);

  const scanner = new Scanner('/proc', server.pid!);
  const first = await scanner.scan();
  const seen = [...first.values()]
    .map(({ flow, application }) => ({
      transport: flow.transport,
      source: flow.sourceAddress,
      destination: `${flow.destinationAddress}:${flow.destinationPort}`,
      process: application.processName,
      container: application.containerName,
      pid: application.pid,
    }))
    .sort((a, b) => a.process.localeCompare(b.process) || a.transport.localeCompare(b.transport));
  expect(seen).toEqual([
    {
      transport: 'tcp',
      source: pod,
      destination: `${pod}:9000`,
      process: 'node',
      container: 'worker',
      pid: node.pid,
    },
    {
      transport: 'tcp',
      source: pod,
      destination: `${pod}:9000`,
      process: 'python3',
      container: 'web',
      pid: python.pid,
    },
    { transport: 'udp', source: '', destination: ':0', process: 'python3', container: 'web', pid: python.pid },
  ]);
  expect([...first.values()].find((a) => a.application.processName === 'node')!.application.executable).toBe(
    process.execPath,
  );

  const exited = new Promise((resolve) => python.once('exit', resolve));
  python.kill('SIGKILL');
  await exited;
  const changes = diffAssociations(first, await scanner.scan());
  expect(changes.associate).toEqual([]);
  expect(changes.dissociate.map((f) => `${f.transport} ${f.sourcePort}`).sort()).toEqual(
    [...first.values()]
      .filter((a) => a.application.pid === python.pid)
      .map((a) => `${a.flow.transport} ${a.flow.sourcePort}`)
      .sort(),
  );
});
