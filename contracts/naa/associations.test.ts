import { diffAssociations, flowKey, flowOf, outboundSockets, type Association } from './associations.ts';
import type { SocketEntry } from './proc-net.ts';
import type { Application } from '../../proto/index.ts';

const socket = (overrides: Partial<SocketEntry>): SocketEntry => ({
  transport: 'tcp',
  family: 4,
  localAddress: '10.244.0.10',
  localPort: 40000,
  remoteAddress: '203.0.113.10',
  remotePort: 443,
  state: 1,
  uid: 0,
  inode: 100,
  ...overrides,
});

test('keeps connections the pod opened and bound UDP sockets, not listeners or what they accepted', () => {
  const entries = [
    socket({ inode: 1 }),
    socket({ inode: 2, state: 0x0a, localPort: 8080, remoteAddress: '0.0.0.0', remotePort: 0 }),
    socket({ inode: 3, localPort: 8080 }),
    socket({ inode: 0, state: 0x06 }),
    socket({ inode: 4, transport: 'udp', state: 7, localAddress: '0.0.0.0', remoteAddress: '0.0.0.0', remotePort: 0 }),
    // Loopback never leaves the pod: a local collector or database client is none of the gateway's.
    socket({ inode: 5, localAddress: '127.0.0.1', remoteAddress: '127.0.0.1', remotePort: 4318 }),
    socket({ inode: 6, family: 6, localAddress: '::1', remoteAddress: '::1', remotePort: 5432 }),
    socket({
      inode: 7,
      transport: 'udp',
      state: 7,
      localAddress: '127.0.0.53',
      remoteAddress: '0.0.0.0',
      remotePort: 0,
    }),
  ];
  expect(outboundSockets(entries).map((e) => e.inode)).toEqual([1, 4]);
});

test('an unconnected, wildcard-bound UDP socket is a flow with no addresses but its port', () => {
  const flow = flowOf(socket({ transport: 'udp', localAddress: '0.0.0.0', remoteAddress: '0.0.0.0', remotePort: 0 }));
  expect(flow).toEqual({
    transport: 'udp',
    family: 4,
    sourceAddress: '',
    sourcePort: 40000,
    destinationAddress: '',
    destinationPort: 0,
  });
});

describe('diffAssociations', () => {
  const app = (pid: number, processName = 'curl'): Application => ({
    processName,
    executable: `/usr/bin/${processName}`,
    commandLine: [processName],
    containerName: 'app',
    containerId: '',
    uid: 0,
    pid,
  });
  const association = (port: number, application: Application): [string, Association] => {
    const flow = flowOf(socket({ localPort: port }));
    return [flowKey(flow), { flow, application, observedAt: new Date(0) }];
  };

  test('reports new flows, flows gone, and flows that changed hands; nothing for what stayed', () => {
    const previous = new Map([association(1, app(10)), association(2, app(11)), association(3, app(12))]);
    const current = new Map([association(1, app(10)), association(3, app(13, 'python3')), association(4, app(14))]);
    const changes = diffAssociations(previous, current);
    expect(changes.associate.map((a) => [a.flow.sourcePort, a.application.processName])).toEqual([
      [3, 'python3'],
      [4, 'curl'],
    ]);
    expect(changes.dissociate.map((f) => f.sourcePort)).toEqual([2]);
  });

  test('says nothing when nothing changed', () => {
    const same = new Map([association(1, app(10))]);
    expect(diffAssociations(same, new Map(same))).toEqual({ associate: [], dissociate: [] });
  });
});
