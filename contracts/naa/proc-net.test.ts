import { nodeTcpSockets, parseSocketTable, quietMarker, tcpChangeMarker } from './proc-net.ts';

const header = '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n';

test('parses IPv4 rows, whose addresses the kernel prints little-endian', () => {
  const text = `${header}   0: 0A00F40A:9C40 0A0210C6:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 40123 1 0000000000000000 20 4 30 10 -1\n`;
  expect(parseSocketTable(text, 'tcp', 4)).toEqual([
    {
      transport: 'tcp',
      family: 4,
      localAddress: '10.244.0.10',
      localPort: 40000,
      remoteAddress: '198.16.2.10',
      remotePort: 443,
      state: 1,
      uid: 1000,
      inode: 40123,
    },
  ]);
});

test('parses IPv6 rows in RFC 5952 form, and IPv4-mapped peers as IPv4', () => {
  const text =
    `${header}` +
    '   0: 000000FD000000000000000001000000:9C41 B80D0120000000000000000010000000:0050 02 00000000:00000000 00:00000000 00000000     0        0 777 1\n' +
    '   1: 0000000000000000FFFF00000A00F40A:9C42 0000000000000000FFFF0000C6330264:0035 01 00000000:00000000 00:00000000 00000000     0        0 778 1\n';
  const [v6, mapped] = parseSocketTable(text, 'tcp', 6);
  expect(v6).toMatchObject({ family: 6, localAddress: 'fd00::1', remoteAddress: '2001:db8::10', remotePort: 80 });
  expect(mapped).toMatchObject({ family: 4, localAddress: '10.244.0.10', remoteAddress: '100.2.51.198' });
});

test('passes over the header and blank lines', () => {
  expect(parseSocketTable(`${header}\n\n`, 'udp', 4)).toEqual([]);
});

const snmp = (values: string) =>
  'Ip: Forwarding DefaultTTL\nIp: 1 64\n' +
  'Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors\n' +
  `Tcp: 1 200 120000 -1 ${values} 0 0 0\n` +
  'Udp: InDatagrams NoPorts\nUdp: 5 0\n';
const sockstat = (inUse: number) =>
  `sockets: used 10\nTCP: inuse ${inUse} orphan 0 tw 0 alloc 7 mem 1\nUDP: inuse 0 mem 0\n`;
const sockstat6 = (inUse: number) => `TCP6: inuse ${inUse}\nUDP6: inuse 0\n`;

test('the TCP change marker moves with connections opened, closed and listening, not with traffic', () => {
  const marker = tcpChangeMarker(snmp('3 1 0 0 2 100 90'), sockstat(3), sockstat6(0));
  expect(marker).toBeDefined();
  // Traffic (InSegs, OutSegs) and node-wide figures (sockets used, alloc) do not count.
  expect(tcpChangeMarker(snmp('3 1 0 0 2 500 400'), sockstat(3).replace('alloc 7', 'alloc 9'), sockstat6(0))).toBe(
    marker,
  );
  // One connection closed and another opened between two looks: ActiveOpens still moves.
  expect(tcpChangeMarker(snmp('4 1 0 0 2 100 90'), sockstat(3), sockstat6(0))).not.toBe(marker);
  expect(tcpChangeMarker(snmp('3 1 0 1 1 100 90'), sockstat(2), sockstat6(0))).not.toBe(marker);
  // A new IPv6 listener.
  expect(tcpChangeMarker(snmp('3 1 0 0 2 100 90'), sockstat(3), sockstat6(1))).not.toBe(marker);
});

test('the TCP change marker is undefined when the counters cannot be read, so the tables are', () => {
  expect(tcpChangeMarker('', sockstat(3), sockstat6(0))).toBeUndefined();
  expect(tcpChangeMarker(snmp('3 1 0 0 2 100 90'), '', sockstat6(0))).toBeUndefined();
  // Without IPv6 in the namespace there is no sockstat6, and no tcp6 table either.
  expect(tcpChangeMarker(snmp('3 1 0 0 2 100 90'), sockstat(3), '')).toBeDefined();
});

const dev = (loPackets: number, eth0Packets: number) =>
  'Inter-|   Receive                                                |  Transmit\n' +
  ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n' +
  `    lo:  ${loPackets * 60} ${loPackets} 0 0 0 0 0 0 ${loPackets * 60} ${loPackets} 0 0 0 0 0 0\n` +
  `  eth0:  ${eth0Packets * 60} ${eth0Packets} 0 0 0 0 0 0 ${eth0Packets * 60} ${eth0Packets} 0 0 0 0 0 0\n`;
const quietSockstat = (used: number, tcp: number, tw: number, udp: number, nodeWide = 7) =>
  `sockets: used ${used}\nTCP: inuse ${tcp} orphan ${nodeWide} tw ${tw} alloc ${nodeWide} mem ${nodeWide}\n` +
  `UDP: inuse ${udp} mem ${nodeWide}\nUDPLITE: inuse 0\nRAW: inuse 0\nFRAG: inuse 0 memory 0\n`;

test('the quiet marker moves with any packet and any socket of the namespace, not with the rest of the node', () => {
  const marker = quietMarker(dev(4, 10), quietSockstat(3, 2, 0, 1));
  expect(marker).toBeDefined();
  // Orphans, allocated sockets and memory are counted for the whole node.
  expect(quietMarker(dev(4, 10), quietSockstat(3, 2, 0, 1, 9))).toBe(marker);
  // A packet on loopback or on the pod's interface.
  expect(quietMarker(dev(5, 10), quietSockstat(3, 2, 0, 1))).not.toBe(marker);
  expect(quietMarker(dev(4, 11), quietSockstat(3, 2, 0, 1))).not.toBe(marker);
  // A socket of any family made; one in TIME_WAIT; a UDP socket bound.
  expect(quietMarker(dev(4, 10), quietSockstat(4, 2, 0, 1))).not.toBe(marker);
  expect(quietMarker(dev(4, 10), quietSockstat(3, 2, 1, 1))).not.toBe(marker);
  expect(quietMarker(dev(4, 10), quietSockstat(3, 2, 0, 2))).not.toBe(marker);
});

test('the quiet marker is undefined when the files do not say, so the namespace is looked at', () => {
  expect(quietMarker('', quietSockstat(3, 2, 0, 1))).toBeUndefined();
  expect(quietMarker(dev(4, 10), '')).toBeUndefined();
});

test("the node's TCP socket count is the one sockstat prints for the whole node, not the namespace's", () => {
  expect(nodeTcpSockets(quietSockstat(3, 2, 0, 1, 308))).toBe(308);
  expect(nodeTcpSockets(quietSockstat(9, 8, 7, 6, 308))).toBe(308);
  expect(nodeTcpSockets('sockets: used 3\nTCP: inuse 2\n')).toBeUndefined();
  expect(nodeTcpSockets('')).toBeUndefined();
});
