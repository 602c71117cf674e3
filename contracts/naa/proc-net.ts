// Parses the kernel's socket tables (/proc/net/tcp, tcp6, udp, udp6) of one network namespace,
// and the counters that tell when its TCP tables changed.

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

/**
 * Parses one table's text; lines that are not socket rows (the header) are passed over.
 *
 * A row is `<slot>: <local> <remote> <st> <tx:rx> <tr:when> <retrnsmt> <uid> <timeout> <inode> …`,
 * where the kernel prints addresses, ports and the state with fixed widths, so they are cut out
 * by position rather than by splitting the whole row. A pod's sockets share few addresses, and
 * decoding one is most of the work, so each is decoded once per table. Together this parses
 * 10,000 rows in 17 ms instead of 43 ms without a JIT compiler, as the sidecar runs (docs/naa.md).
 */
export function parseSocketTable(text: string, transport: Transport, family: 4 | 6): SocketEntry[] {
  const width = family === 4 ? 8 : 32;
  const decoded = new Map<string, string>();
  const address = (hex: string): string => {
    let result = decoded.get(hex);
    if (result === undefined) {
      result = family === 4 ? ipv4(hex) : ipv6(hex);
      decoded.set(hex, result);
    }
    return result;
  };
  const entries: SocketEntry[] = [];
  for (const line of text.split('\n')) {
    const local = line.indexOf(': ') + 2;
    const remote = local + width + 6;
    const state = remote + width + 6;
    if (local < 2 || line[local + width] !== ':' || line[remote + width] !== ':') continue;
    const rest = line
      .slice(state + 3)
      .split(' ')
      .filter((field) => field !== '');
    if (rest.length < 6) continue;
    const localAddress = address(line.slice(local, local + width));
    entries.push({
      transport,
      // A dual-stack socket's IPv4 peers appear in the IPv6 table as ::ffff:a.b.c.d: IPv4 on the wire.
      family: localAddress.includes('.') ? 4 : 6,
      localAddress,
      localPort: parseInt(line.slice(local + width + 1, remote - 1), 16),
      remoteAddress: address(line.slice(remote, remote + width)),
      remotePort: parseInt(line.slice(remote + width + 1, state - 1), 16),
      state: parseInt(line.slice(state, state + 2), 16),
      uid: Number(rest[3]),
      inode: Number(rest[5]),
    });
  }
  return entries;
}

const tcpCounters = ['ActiveOpens', 'PassiveOpens', 'AttemptFails', 'EstabResets', 'CurrEstab'];

/**
 * A value that changes whenever a TCP socket appears in or leaves the namespace's tables, and
 * not when sockets merely carry traffic; undefined when the files do not say (then the tables
 * must be read). It is made of the namespace's own counters: connections opened (ActiveOpens
 * counts every connect(), however many closed meanwhile), accepted, failed, reset and
 * established, from /proc/net/snmp (shared by IPv4 and IPv6), and the sockets in the tables,
 * from /proc/net/sockstat and sockstat6 (which is empty when IPv6 is off, and so is tcp6).
 * Reading these costs microseconds; reading /proc/net/tcp walks the kernel's whole connection
 * hash table, which every namespace of the node shares.
 */
export function tcpChangeMarker(snmp: string, sockstat: string, sockstat6: string): string | undefined {
  const [names, values] = snmp
    .split('\n')
    .filter((line) => line.startsWith('Tcp:'))
    .map((line) => line.trim().split(/\s+/));
  const counters = tcpCounters.map((name) => values?.[names?.indexOf(name) ?? -1]);
  const inUse = /^TCP: inuse (\d+)/m.exec(sockstat)?.[1];
  const inUse6 = sockstat6 === '' ? '' : /^TCP6: inuse (\d+)/m.exec(sockstat6)?.[1];
  if (counters.includes(undefined) || inUse === undefined || inUse6 === undefined) return undefined;
  return [...counters, inUse, inUse6].join(' ');
}

/**
 * A value that changes whenever anything that could change the namespace's outbound flows
 * happens there, bar one; undefined when the files do not say. It is made of the namespace's
 * interfaces' counters, from /proc/net/dev (every packet the pod sends or receives: a SYN, a FIN,
 * a reset, a datagram, on loopback too), and of its own socket counts, from /proc/net/sockstat
 * (sockets of any family made and closed, and per IPv4 protocol those bound, listening,
 * connected, in TIME_WAIT), not of the node-wide figures printed beside them (orphans, allocated,
 * memory), which move with every other pod. IPv6's own counts (sockstat6) add nothing an
 * outbound flow needs: its socket moves `sockets: used` when made, and its first packet the
 * interfaces' counters. The one change it misses: a UDP socket that was bound already connects,
 * or disconnects, without sending; its first datagram moves the counters. Reading these costs a
 * few microseconds, where /proc/net/snmp and the UDP tables cost tens, each of which the kernel
 * makes by walking node-wide data.
 */
export function quietMarker(dev: string, sockstat: string): string | undefined {
  const interfaces = dev.slice(dev.indexOf('\n', dev.indexOf('\n') + 1) + 1);
  if (!interfaces.includes(':') || !sockstat.startsWith('sockets: used ')) return undefined;
  // Each count is named by its place: the kernel prints the same lines in the same order each time.
  const counts = sockstat.match(/\b(?:used|inuse|tw) \d+/g)!;
  return `${interfaces}${counts.join(' ')}`;
}

/**
 * The node's count of TCP sockets, which any namespace's /proc/net/sockstat prints (`alloc`: the
 * kernel keeps one count for IPv4 and IPv6 of every namespace); undefined when the file does not
 * say. It moves when a TCP socket is made anywhere on the node, which is the first thing a pod's
 * connect() needs, or freed: one small read tells a driver of many pods whether any of them may
 * have a new connection. A socket made while another is freed leaves it where it was.
 */
export function nodeTcpSockets(sockstat: string): number | undefined {
  const count = /^TCP: .*\balloc (\d+)/m.exec(sockstat)?.[1];
  return count === undefined ? undefined : Number(count);
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
