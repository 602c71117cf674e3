import { markField } from '../contracts/gateway/index.ts';
import { ConntrackParser, ExecConntrack, FlowTable, parseConntrackLine, type FlowEvent } from './conntrack.ts';

// As `conntrack -E -o id,extended` printed them on the gateway of the end-to-end topology (uplink
// ids in the default mark bits, 0x0000000f).
const opened =
  '    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.244.2.2 dst=203.0.113.10 sport=51234 dport=9100 [UNREPLIED] src=203.0.113.10 dst=100.64.1.2 sport=9100 dport=61001 mark=1 id=3735928559';
const closed =
  ' [DESTROY] ipv4     2 tcp      6 src=10.244.2.2 dst=203.0.113.10 sport=51234 dport=9100 src=203.0.113.10 dst=100.64.1.2 sport=9100 dport=61001 [ASSURED] mark=1 id=3735928559';
const icmp =
  '    [NEW] ipv6     10 icmpv6   58 30 src=fd00:244:1::2 dst=2001:db8:113::10 type=128 code=0 id=4242 [UNREPLIED] src=2001:db8:113::10 dst=fd00:64:3::2 type=129 code=0 id=4242 mark=3 id=17';

describe('parseConntrackLine', () => {
  it('reads the original and the translated tuple and the uplink in the mark', () => {
    expect(parseConntrackLine(opened, new Date(0))).toEqual({
      type: 'new',
      flow: {
        id: 3735928559,
        family: 4,
        protocol: 'tcp',
        source: '10.244.2.2',
        sourcePort: 51234,
        destination: '203.0.113.10',
        destinationPort: 9100,
        mappedAddress: '100.64.1.2',
        mappedPort: 61001,
        uplink: 1,
        mark: 1,
        timeoutSeconds: 120,
        startedAt: new Date(0),
      },
    });
    expect(parseConntrackLine(closed)).toMatchObject({ type: 'destroy', flow: { id: 3735928559 } });
    // A destroy event prints no timeout: the protocol number is followed by the tuple.
    expect(parseConntrackLine(closed)?.flow.timeoutSeconds).toBeUndefined();
  });

  it('reads ICMP flows, whose last id= is the conntrack id', () => {
    expect(parseConntrackLine(icmp)?.flow).toMatchObject({ family: 6, protocol: 'icmpv6', uplink: 3, id: 17 });
  });

  it('reads the uplink id in the bits it is told, whatever the other bits of the mark hold', () => {
    // kube-proxy's masquerade bit beside uplink 2.
    expect(parseConntrackLine(opened.replace('mark=1 ', 'mark=16386 '))?.flow.uplink).toBe(2);
    const wide = markField(0x00ff0000);
    expect(parseConntrackLine(opened.replace('mark=1 ', 'mark=131072 '), new Date(0), wide)?.flow.uplink).toBe(2);
    expect(parseConntrackLine(opened, new Date(0), wide)?.flow.uplink).toBe(0);
  });

  it('reads the packets and bytes of each direction when conntrack accounting is on', () => {
    const counted =
      ' [DESTROY] ipv4     2 tcp      6 src=10.244.2.2 dst=203.0.113.10 sport=51234 dport=9100 packets=6 bytes=412 src=203.0.113.10 dst=100.64.1.2 sport=9100 dport=61001 packets=4 bytes=1296 [ASSURED] mark=1 id=3735928559';
    expect(parseConntrackLine(counted)?.flow.counters).toEqual({
      packetsSent: 6,
      bytesSent: 412,
      packetsReceived: 4,
      bytesReceived: 1296,
    });
    expect(parseConntrackLine(closed)?.flow.counters).toBeUndefined();
  });

  it('ignores what is not a flow', () => {
    expect(parseConntrackLine('conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.')).toBeUndefined();
  });
});

describe('ConntrackParser', () => {
  it('reads lines as they arrive in chunks, a line cut between two read once it is whole', () => {
    const parser = new ConntrackParser(markField(0x0000000f));
    const text = Buffer.from(`${opened}\n${closed}\n${icmp}\n`);
    const cut = text.indexOf('dport=61001', opened.length) + 3;
    const first = parser.push(text.subarray(0, cut), new Date(0));
    expect(first.map((e) => e.flow.id)).toEqual([3735928559]);
    const rest = parser.push(text.subarray(cut), new Date(1));
    expect(rest.map((e) => [e.type, e.flow.id, e.flow.mappedPort])).toEqual([
      ['destroy', 3735928559, 61001],
      ['new', 17, undefined],
    ]);
    expect(rest[0]!.flow.startedAt).toEqual(new Date(1));
  });

  it('leaves out TCP flows that are closing when asked to, as a listing of active flows does', () => {
    const listed = (state: string) =>
      `ipv4     2 tcp      6 119 ${state} src=10.244.2.2 dst=203.0.113.10 sport=51234 dport=9100 src=203.0.113.10 dst=100.64.1.2 sport=9100 dport=61001 [ASSURED] mark=1 use=1 id=7\n`;
    const active = (state: string) =>
      new ConntrackParser(markField(0x0000000f), { skipClosing: true }).push(Buffer.from(listed(state)), new Date(0))
        .length;
    expect(['ESTABLISHED', 'SYN_SENT', 'FIN_WAIT', 'TIME_WAIT', 'CLOSE', 'LAST_ACK', 'CLOSE_WAIT'].map(active)).toEqual(
      [1, 1, 0, 0, 0, 0, 0],
    );
    expect(new ConntrackParser(markField(0x0000000f)).push(Buffer.from(listed('TIME_WAIT')), new Date(0))).toHaveLength(
      1,
    );
  });
});

describe('ExecConntrack.watch', () => {
  it('hands over the events in batches, those that came together in one', async () => {
    // A stand-in for conntrack -E: three events at once, a fourth a while later, then quiet.
    const print = (count: number) => `printf '%s\\n' ${`'${opened}' `.repeat(count)}`;
    const script = `${print(3)}; sleep 0.2; ${print(1)}; exec sleep 60`;
    const conntrack = new ExecConntrack(['sh', '-c', script, 'sh']);
    const batches: FlowEvent[][] = [];
    const errors: Error[] = [];
    const stop = conntrack.watch(
      markField(0x0000000f),
      (events) => batches.push([...events]),
      (e) => errors.push(e),
    );
    try {
      const deadline = Date.now() + 5000;
      while (batches.flat().length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(batches.map((b) => b.length)).toEqual([3, 1]);
      expect(batches[0]![0]!.flow).toMatchObject({ id: 3735928559, uplink: 1 });
      expect(errors).toEqual([]);
    } finally {
      stop();
    }
  });
});

describe('FlowTable', () => {
  it('counts flows per uplink, forgets destroyed ones and stays within its limit', () => {
    const table = new FlowTable(2);
    table.apply(parseConntrackLine(opened)!);
    table.apply(parseConntrackLine(icmp)!);
    expect(table.activeByUplink()).toEqual(
      new Map([
        [1, 1],
        [3, 1],
      ]),
    );
    table.apply(parseConntrackLine(closed)!);
    expect(table.size).toBe(1);
    table.apply(parseConntrackLine(opened)!);
    table.apply(parseConntrackLine(opened.replace('id=3735928559', 'id=5'))!);
    expect(table.size).toBe(2);
    expect(table.dropped).toBe(1);
  });

  it('keeps the start a flow was first seen at when a listing or its late NEW event sees it again', () => {
    const table = new FlowTable();
    const seen = (line: string, seconds: number) => parseConntrackLine(line, new Date(seconds * 1000))!.flow;
    // A listing found the flow before its NEW event was handled; listings come every 10 s.
    table.replace([seen(opened, 10)]);
    table.apply({ type: 'new', flow: seen(opened, 11) });
    table.replace([seen(opened, 20), seen(icmp, 20)]);
    expect(table.get(3735928559)!.startedAt).toEqual(new Date(10_000));
    expect(table.get(17)!.startedAt).toEqual(new Date(20_000));
    // A listing without a flow forgets it; the same id for other tuples is another flow.
    table.replace([seen(opened.replace('sport=51234', 'sport=51235'), 30)]);
    expect(table.get(17)).toBeUndefined();
    expect(table.get(3735928559)).toMatchObject({ sourcePort: 51235, startedAt: new Date(30_000) });
    expect(table.fromSource('tcp', '10.244.2.2', 51235)).toBe(table.get(3735928559));
    expect(table.fromSource('tcp', '10.244.2.2', 51234)).toBeUndefined();
  });
});
