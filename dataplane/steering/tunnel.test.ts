import {
  outerFamily,
  routeChanges,
  tunnelDeviceName,
  tunnelLinkLocal,
  tunnelMac,
  tunnelMss,
  tunnelMtu,
  type TunnelRoute,
  type TunnelState,
} from './tunnel.ts';

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

describe('routeChanges', () => {
  const route = (table: number, via: string, family: 4 | 6 = 4): TunnelRoute => ({
    family,
    table,
    destination: 'default',
    device: 'naatn1',
    via,
  });
  const state = (...routes: TunnelRoute[]): TunnelState => ({
    devices: [],
    routes,
    rules: [{ family: 4, preference: 7800, table: 7801, fwmark: { value: 0x20, mask: 0xe0 } }],
  });

  it('replaces the routes that changed or came and removes those that went, by table and destination', () => {
    const before = state(route(7801, 'fe80::a'), route(7802, 'fe80::a'), route(7803, 'fe80::b'));
    const after = state(
      route(7801, 'fe80::a'),
      route(7802, 'fe80::b'),
      route(7804, 'fe80::b'),
      route(7801, 'fe80::a', 6),
    );
    expect(routeChanges(before, after)).toEqual({
      replace: [route(7802, 'fe80::b'), route(7804, 'fe80::b'), route(7801, 'fe80::a', 6)],
      remove: [route(7803, 'fe80::b')],
    });
  });

  it('needs a full sync when anything but routes differs', () => {
    expect(routeChanges(state(), { ...state(), rules: [] })).toBeUndefined();
    expect(routeChanges(state(), { ...state(), sysctls: [['net/ipv4/conf/all/src_valid_mark', '1']] })).toBeUndefined();
  });
});
