import { renderAllow, renderFence, renderFenceRemoval, renderRevoke } from './fence.ts';

const guarded = ['100.64.1.100', '100.64.1.101', 'FD00:64:1:0::100'];

describe('the failover fence rendered for nft', () => {
  it('guards the addresses per family: ARP sent from them, neighbour discovery from them, unless allowed', () => {
    expect(renderFence(guarded)).toEqual([
      'add table arp naat-fence',
      'add set arp naat-fence guarded { type ipv4_addr; }',
      'add set arp naat-fence allowed { type ipv4_addr; flags timeout; }',
      'add chain arp naat-fence output { type filter hook output priority filter; policy accept; }',
      'flush chain arp naat-fence output',
      'add rule arp naat-fence output arp saddr ip @guarded arp saddr ip != @allowed counter drop',
      'flush set arp naat-fence guarded',
      'add element arp naat-fence guarded { 100.64.1.100, 100.64.1.101 }',
      'add table inet naat-fence',
      'add set inet naat-fence guarded { type ipv6_addr; }',
      'add set inet naat-fence allowed { type ipv6_addr; flags timeout; }',
      'add chain inet naat-fence output { type filter hook output priority filter; policy accept; }',
      'flush chain inet naat-fence output',
      'add rule inet naat-fence output icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 saddr @guarded ip6 saddr != @allowed counter drop',
      'flush set inet naat-fence guarded',
      'add element inet naat-fence guarded { fd00:64:1::100 }',
    ]);
  });

  it('keeps the allowances when the guarded addresses change, and drops them on a reset', () => {
    expect(renderFence(guarded)).not.toContain('flush set arp naat-fence allowed');
    const reset = renderFence(['100.64.1.100'], { reset: true });
    expect(reset).toContain('flush set arp naat-fence allowed');
    expect(reset).toContain('flush set inet naat-fence allowed');
    // A family without guarded addresses keeps its table and rule, with an empty set.
    expect(reset).toContain('flush set inet naat-fence guarded');
    expect(reset.filter((command) => command.startsWith('add element inet'))).toEqual([]);
  });

  it('extends an allowance by adding the element again, so that its timeout is new on every kernel', () => {
    expect(renderAllow(['100.64.1.100', 'fd00:64:1::100'], 599.6)).toEqual([
      'add element arp naat-fence allowed { 100.64.1.100 timeout 600ms }',
      'delete element arp naat-fence allowed { 100.64.1.100 }',
      'add element arp naat-fence allowed { 100.64.1.100 timeout 600ms }',
      'add element inet naat-fence allowed { fd00:64:1::100 timeout 600ms }',
      'delete element inet naat-fence allowed { fd00:64:1::100 }',
      'add element inet naat-fence allowed { fd00:64:1::100 timeout 600ms }',
    ]);
    // At least a millisecond after rounding.
    expect(renderAllow(['100.64.1.100'], 0.2)[0]).toContain('timeout 1ms');
  });

  it('revokes whether allowed or not, and removes both tables whether they exist or not', () => {
    expect(renderRevoke(['fd00:64:1::100'])).toEqual([
      'add element inet naat-fence allowed { fd00:64:1::100 }',
      'delete element inet naat-fence allowed { fd00:64:1::100 }',
    ]);
    expect(renderFenceRemoval()).toEqual([
      'add table arp naat-fence',
      'delete table arp naat-fence',
      'add table inet naat-fence',
      'delete table inet naat-fence',
    ]);
  });
});
