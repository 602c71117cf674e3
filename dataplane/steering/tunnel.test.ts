import { outerFamily, tunnelDeviceName, tunnelLinkLocal, tunnelMac, tunnelMss, tunnelMtu } from './tunnel.ts';

describe('tunnel addressing', () => {
  it('derives a locally administered unicast MAC and a link-local address from the node name alone', () => {
    expect(tunnelMac('gateway-a')).toMatch(/^02(:[0-9a-f]{2}){5}$/);
    expect(tunnelMac('gateway-a')).toBe(tunnelMac('gateway-a'));
    expect(tunnelMac('gateway-a')).not.toBe(tunnelMac('gateway-b'));
    expect(tunnelLinkLocal('gateway-a')).toMatch(/^fe80::[0-9a-f]{1,4}(:[0-9a-f]{1,4}){3}$/);
    expect(tunnelLinkLocal('gateway-a')).not.toBe(tunnelLinkLocal('gateway-b'));
  });

  it('names devices within the 15 characters of an interface name, one prefix per role', () => {
    expect(tunnelDeviceName('node', 16777215)).toBe('naatn16777215');
    expect(tunnelDeviceName('gateway', 1)).toBe('naatg1');
  });

  it('takes the encapsulation off the underlay MTU, and the headers off the MTU for the MSS', () => {
    expect(tunnelMtu(1500, 4)).toBe(1450);
    expect(tunnelMtu(1500, 6)).toBe(1430);
    expect(tunnelMss(1450, 4)).toBe(1410);
    expect(tunnelMss(1450, 6)).toBe(1390);
  });

  it('tunnels over IPv4 when every peer has an IPv4 address, else over IPv6', () => {
    expect(outerFamily([['192.0.2.1', '2001:db8::1'], ['192.0.2.2']])).toBe(4);
    expect(outerFamily([['192.0.2.1'], ['2001:db8::2']])).toBe(6);
  });
});
