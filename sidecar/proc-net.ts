// Parses the kernel's socket tables (/proc/net/tcp, tcp6, udp, udp6) of one network namespace.

export type Transport = 'tcp' | 'udp';

export interface SocketEntry {
  transport: Transport;
  family: 4 | 6;
  localAddress: string;
  localPort: number;
  remoteAddress: string;
  remotePort: number;
  /** The kernel's TCP state number (st column); 7 for unconnected UDP. */
  state: number;
  uid: number;
  /** 0 when no process holds the socket any more (TIME_WAIT and similar). */
  inode: number;
}

export const tcpState = { established: 0x01, synSent: 0x02, timeWait: 0x06, listen: 0x0a } as const;

/** Parses one table's text; lines that are not socket rows (the header) are passed over. */
export function parseSocketTable(text: string, transport: Transport, family: 4 | 6): SocketEntry[] {
  const entries: SocketEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (!fields[0]?.endsWith(':') || fields.length < 10) continue;
    const [local, remote, state, , , , uid, , inode] = fields.slice(1);
    const [localAddress, localPort] = parseEndpoint(local!, family);
    const [remoteAddress, remotePort] = parseEndpoint(remote!, family);
    entries.push({
      transport,
      // A dual-stack socket's IPv4 peers appear in the IPv6 table as ::ffff:a.b.c.d: IPv4 on the wire.
      family: localAddress.includes('.') ? 4 : 6,
      localAddress,
      localPort,
      remoteAddress,
      remotePort,
      state: parseInt(state!, 16),
      uid: Number(uid),
      inode: Number(inode),
    });
  }
  return entries;
}

function parseEndpoint(text: string, family: 4 | 6): [string, number] {
  const [address, port] = text.split(':');
  return [family === 4 ? ipv4(address!) : ipv6(address!), parseInt(port!, 16)];
}

// The kernel prints each 32-bit word of an address in host byte order (little-endian here).
function words(hex: string): number[][] {
  const result: number[][] = [];
  for (let i = 0; i < hex.length; i += 8) {
    const word = hex.slice(i, i + 8);
    result.push([6, 4, 2, 0].map((j) => parseInt(word.slice(j, j + 2), 16)));
  }
  return result;
}

function ipv4(hex: string): string {
  return words(hex)[0]!.join('.');
}

function ipv6(hex: string): string {
  const bytes = words(hex).flat();
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return bytes.slice(12).join('.');
  }
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return compressIpv6(groups);
}

/** RFC 5952 text: the longest run of two or more zero groups becomes `::`. */
function compressIpv6(groups: string[]): string {
  let best = { start: -1, length: 0 };
  for (let i = 0; i < groups.length;) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < groups.length && groups[j] === '0') j++;
    if (j - i > best.length && j - i > 1) best = { start: i, length: j - i };
    i = j;
  }
  if (best.start < 0) return groups.join(':');
  const head = groups.slice(0, best.start).join(':');
  const tail = groups.slice(best.start + best.length).join(':');
  return `${head}::${tail}`;
}
