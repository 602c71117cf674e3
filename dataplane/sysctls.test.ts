import { agentSysctls } from './sysctls.ts';

describe('agentSysctls', () => {
  it("gives a node agent src_valid_mark for every device, and a gateway's agent its ICMP timeouts too", () => {
    expect(agentSysctls()).toEqual([['net/ipv4/conf/all/src_valid_mark', '1']]);
    expect(agentSysctls(45)).toEqual([
      ['net/ipv4/conf/all/src_valid_mark', '1'],
      ['net/netfilter/nf_conntrack_icmp_timeout', '45'],
      ['net/netfilter/nf_conntrack_icmpv6_timeout', '45'],
    ]);
  });
});
