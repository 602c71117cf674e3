import { parseSocketTable } from './proc-net.ts';

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
