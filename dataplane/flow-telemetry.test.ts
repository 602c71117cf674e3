import { flowAttributes } from './flow-telemetry.ts';

describe('flowAttributes', () => {
  it('uses semantic-convention names for the pod, the process and the peer, and naat.* for the translation', () => {
    expect(
      flowAttributes({
        id: 1,
        start: new Date(0),
        end: new Date(5000),
        family: 6,
        protocol: 'udp',
        source: 'fd00:244:1::2',
        sourcePort: 5353,
        destination: '2001:db8::53',
        destinationPort: 53,
        mappedAddress: 'fd00:64:1::2',
        mappedPort: 20000,
        uplink: 'isp-a',
        pod: { namespace: 'shop', name: 'web-1' },
        container: 'app',
        application: { processName: 'dig', executable: '/usr/bin/dig', uid: 1000 },
        policy: 'shop/dns',
        rule: 'via-a',
        verdict: 'Allow',
        counters: { packetsSent: 1, bytesSent: 60, packetsReceived: 1, bytesReceived: 120 },
      }),
    ).toEqual({
      'network.transport': 'udp',
      'network.type': 'ipv6',
      'source.address': 'fd00:244:1::2',
      'source.port': 5353,
      'network.peer.address': '2001:db8::53',
      'network.peer.port': 53,
      'k8s.namespace.name': 'shop',
      'k8s.pod.name': 'web-1',
      'k8s.container.name': 'app',
      'process.executable.name': 'dig',
      'process.executable.path': '/usr/bin/dig',
      'process.user.id': 1000,
      'naat.uplink': 'isp-a',
      'naat.mapped.address': 'fd00:64:1::2',
      'naat.mapped.port': 20000,
      'naat.policy': 'shop/dns',
      'naat.rule': 'via-a',
      'naat.verdict': 'Allow',
      'naat.bytes.sent': 60,
      'naat.bytes.received': 120,
      'naat.packets.sent': 1,
      'naat.packets.received': 1,
    });
  });
});
