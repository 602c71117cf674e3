import { parseConntrackLine, type FlowEvent } from '../conntrack.ts';
import {
  encodeMessage,
  FlowReplica,
  injectionCommands,
  maxMessageBytes,
  messagesOf,
  parseMessage,
  type FlowMessage,
  type ReplicaFlow,
} from './flow-replica.ts';

const flow = (sourcePort: number, overrides: Partial<ReplicaFlow> = {}): ReplicaFlow => ({
  family: 4,
  protocol: 'tcp',
  source: '10.244.2.2',
  sourcePort,
  destination: '203.0.113.10',
  destinationPort: 443,
  address: '100.64.1.100',
  port: 20_000 + sourcePort,
  mark: 1,
  timeoutSeconds: 300,
  ...overrides,
});

const v6 = flow(7, {
  family: 6,
  protocol: 'udp',
  source: 'fd00:244:2::2',
  destination: '2001:db8:113::10',
  address: 'fd00:64:1::100',
});

// As `conntrack -E -o id,extended` prints them, translated to the failover address 100.64.1.100.
const opened =
  '    [NEW] ipv4     2 tcp      6 120 SYN_SENT src=10.244.2.2 dst=203.0.113.10 sport=51234 dport=443 [UNREPLIED] src=203.0.113.10 dst=100.64.1.100 sport=443 dport=21234 mark=1 id=7';
const closed =
  ' [DESTROY] ipv4     2 tcp      6 src=10.244.2.2 dst=203.0.113.10 sport=51234 dport=443 src=203.0.113.10 dst=100.64.1.100 sport=443 dport=21234 [ASSURED] mark=1 id=7';
const elsewhere = opened.replace('dst=100.64.1.100', 'dst=100.64.1.2');

describe('the messages of conntrack events', () => {
  const events = [opened, elsewhere, closed].map((line) => parseConntrackLine(line)!) as FlowEvent[];

  it('replicates the flows translated to an owned address, with their mark and timeout', () => {
    expect(messagesOf(events, new Set(['100.64.1.100']))).toEqual([
      { op: 'flow', flow: flow(51234, { port: 21234, timeoutSeconds: 120 }) },
      { op: 'gone', flow: expect.objectContaining({ sourcePort: 51234, address: '100.64.1.100' }) },
    ]);
  });

  it('leaves out the flows of addresses not owned, and ICMP', () => {
    expect(messagesOf(events, new Set(['100.64.9.9']))).toEqual([]);
    const icmp =
      '    [NEW] ipv4     2 icmp     1 30 src=10.244.2.2 dst=203.0.113.10 type=8 code=0 id=9 [UNREPLIED] src=203.0.113.10 dst=100.64.1.100 type=0 code=0 id=9 mark=1 id=8';
    expect(messagesOf([parseConntrackLine(icmp)!], new Set(['100.64.1.100']))).toEqual([]);
  });
});

describe('the wire form', () => {
  const messages: FlowMessage[] = [
    { op: 'flow', flow: flow(1) },
    { op: 'flow', flow: v6 },
    { op: 'gone', flow: flow(1) },
    { op: 'synced' },
  ];

  it('reads back what it writes, one line each', () => {
    for (const message of messages) {
      const line = encodeMessage(message);
      expect(line.endsWith('\n') && !line.slice(0, -1).includes('\n')).toBe(true);
      const back = parseMessage(line.slice(0, -1));
      if (message.op !== 'gone') expect(back).toEqual(message);
      else expect(back).toEqual({ op: 'gone', flow: expect.not.objectContaining({ port: expect.anything() }) });
    }
  });

  it('keeps the longest flow well within the limit', () => {
    const long = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
    const line = encodeMessage({
      op: 'flow',
      flow: flow(65_535, {
        family: 6,
        source: long,
        destination: long,
        address: long,
        port: 65_535,
        mark: 0xffff_ffff,
      }),
    });
    expect(line.length).toBeLessThan(maxMessageBytes / 2);
  });

  it.each([
    ['', /not JSON/],
    ['{"op":"synced"}', /not a message/],
    ['["hello"]', /unknown message "hello"/],
    ['["synced",1]', /synced takes no fields/],
    ['["gone","tcp","10.0.0.1",1,"10.0.0.2",2]', /gone takes 6 fields, not 5/],
    ['["gone","icmp","10.0.0.1",1,"10.0.0.2",2,"10.0.0.3"]', /protocol "icmp" is not tcp or udp/],
    ['["gone","tcp","10.0.0.1",1,"10.0.0.2",2,"10.0.0.300"]', /address "10.0.0.300" is not an IP address/],
    ['["gone","tcp","fe80::1%eth0",1,"fe80::2",2,"fe80::3"]', /source "fe80::1%eth0" is not an IP address/],
    ['["gone","tcp","10.0.0.1",1,"fd00::2",2,"10.0.0.3"]', /not of one family/],
    ['["gone","tcp","10.0.0.1",0,"10.0.0.2",2,"10.0.0.3"]', /sourcePort 0 is not an integer from 1 to 65535/],
    ['["flow","tcp","10.0.0.1",1,"10.0.0.2",2,"10.0.0.3",3,-1,5]', /mark -1 is not an integer/],
    ['["flow","tcp","10.0.0.1",1,"10.0.0.2",2,"10.0.0.3",3,1,1.5]', /timeoutSeconds 1.5 is not an integer/],
    ['["flow","tcp","10.0.0.1",1,"10.0.0.2",2,"10.0.0.3",3,1,99999999]', /timeoutSeconds 99999999/],
    [`["synced"${' '.repeat(maxMessageBytes)}]`, /is over 512/],
  ])('refuses %j', (line, error) => {
    expect(() => parseMessage(line)).toThrow(error);
  });
});

describe('FlowReplica', () => {
  it('keeps each flow until it is gone or its timeout passes', () => {
    const replica = new FlowReplica();
    replica.apply('a', { op: 'flow', flow: flow(1, { timeoutSeconds: 10 }) }, 0);
    replica.apply('a', { op: 'flow', flow: flow(2) }, 0);
    replica.apply('a', { op: 'flow', flow: v6 }, 0);
    expect(replica.flows('100.64.1.100', 4_000).map((f) => [f.sourcePort, f.timeoutSeconds])).toEqual([
      [1, 6],
      [2, 296],
    ]);
    replica.apply('a', { op: 'gone', flow: flow(2) }, 5_000);
    expect(replica.flows('100.64.1.100', 9_999).map((f) => f.sourcePort)).toEqual([1]);
    expect(replica.flows('100.64.1.100', 10_000)).toEqual([]);
    replica.expire(10_000);
    expect(replica.size).toBe(1);
    expect(replica.counts()).toEqual(new Map([['fd00:64:1::100', 1]]));
  });

  it('takes a flow sent again with its new timeout', () => {
    const replica = new FlowReplica();
    replica.apply('a', { op: 'flow', flow: flow(1, { timeoutSeconds: 30 }) }, 0);
    replica.apply('a', { op: 'flow', flow: flow(1, { timeoutSeconds: 120 }) }, 20_000);
    expect(replica.flows('100.64.1.100', 60_000)).toEqual([flow(1, { timeoutSeconds: 80 })]);
    expect(replica.size).toBe(1);
  });

  it("forgets, at the end of a peer's round, the flows of that peer it did not send again", () => {
    const replica = new FlowReplica();
    replica.apply('a', { op: 'flow', flow: flow(1) }, 0);
    replica.apply('a', { op: 'flow', flow: flow(2) }, 0);
    replica.apply('b', { op: 'flow', flow: flow(3) }, 0);
    replica.apply('a', { op: 'flow', flow: flow(2) }, 1_000);
    replica.apply('a', { op: 'synced' }, 1_500, 1_000);
    expect(replica.flows('100.64.1.100', 2_000).map((f) => f.sourcePort)).toEqual([3, 2]);
  });

  it('holds no more than its limit, forgetting the flow seen longest ago', () => {
    const replica = new FlowReplica(2);
    replica.apply('a', { op: 'flow', flow: flow(1) }, 0);
    replica.apply('a', { op: 'flow', flow: flow(2) }, 0);
    replica.apply('a', { op: 'flow', flow: flow(1) }, 1);
    replica.apply('a', { op: 'flow', flow: flow(3) }, 2);
    expect(replica.flows('100.64.1.100', 3).map((f) => f.sourcePort)).toEqual([1, 3]);
    expect(replica.dropped).toBe(1);
  });

  it('forgets an address', () => {
    const replica = new FlowReplica();
    replica.apply('a', { op: 'flow', flow: flow(1) }, 0);
    replica.apply('a', { op: 'flow', flow: v6 }, 0);
    replica.forget('100.64.1.100');
    expect([...replica.counts().keys()]).toEqual(['fd00:64:1::100']);
  });
});

describe('injectionCommands', () => {
  it('writes source-NAT entries without a reply tuple, TCP ones established', () => {
    expect(injectionCommands([flow(1), { ...v6, timeoutSeconds: 0 }])).toBe(
      '-I -p tcp -s 10.244.2.2 -d 203.0.113.10 --sport 1 --dport 443 --state ESTABLISHED -u SEEN_REPLY,ASSURED -t 300 -m 1 --src-nat 100.64.1.100:20001\n' +
        '-I -p udp -s fd00:244:2::2 -d 2001:db8:113::10 --sport 7 --dport 443 -u SEEN_REPLY,ASSURED -t 1 -m 1 --src-nat [fd00:64:1::100]:20007\n',
    );
  });
});
