import { parseGatewayConfig, type GatewayConfig } from '../../contracts/gateway/index.ts';
import { carries, localUplinks } from '../render.ts';
import { desiredAddresses, planAddresses } from './address.ts';
import { failoverUplinkIds, planEgress, localEgressAddresses } from './egress.ts';

const uplink = (name: string, iface: string, nextHop: { ipv4?: string; ipv6?: string }, nodes?: string[]) => ({
  name,
  interface: iface,
  nextHop,
  snat: {},
  ...(nodes ? { nodes } : {}),
});

const config: GatewayConfig = parseGatewayConfig({
  version: 1,
  gateway: 'egress',
  sources: ['10.244.0.0/16', 'fd00:244::/32'],
  pods: [
    {
      namespace: 'shop',
      name: 'a',
      addresses: ['10.244.1.2', 'fd00:244:1::2'],
      egress: ['100.64.1.100', 'fd00:64:1::100'],
    },
    // Its address is the first pod's: it belongs to the first.
    { namespace: 'shop', name: 'b', addresses: ['10.244.1.2', '10.244.1.3'], egress: ['100.64.2.100'] },
    { namespace: 'shop', name: 'c', addresses: ['10.244.1.4'] },
  ],
  uplinks: [
    uplink('isp1', 'up1', { ipv4: '100.64.1.1', ipv6: 'fd00:64:1::1' }),
    uplink('isp2', 'up2', { ipv4: '100.64.2.1' }),
    uplink('other', 'up3', { ipv4: '100.64.3.1' }, ['g2']),
  ],
  balancing: { mode: 'Weighted' },
  timeouts: {},
  steering: { tunnel: { vni: 7700, port: 4790 }, markMask: 0x10, sources: [] },
  failover: {
    addresses: [
      { address: '100.64.1.100', uplink: 'isp1' },
      { address: 'fd00:64:1:0:0::100', uplink: 'isp1' },
      { address: '100.64.2.100', uplink: 'isp2' },
      // isp2 carries no IPv6, and other is g2's.
      { address: 'fd00:64:2::100', uplink: 'isp2' },
      { address: '100.64.3.100', uplink: 'other' },
    ],
    leaseDurationMs: 600,
    failback: false,
    failbackDelaySeconds: 30,
    nodes: [],
    draining: [],
  },
});
const uplinks = localUplinks(config, 'g1');

describe('failover paths', () => {
  it('groups the owned addresses of local uplinks with the pods that leave with them, and the others with the pods that wait', () => {
    const local = localEgressAddresses(config, uplinks, carries);
    expect(local.map((a) => a.address)).toEqual(['100.64.1.100', 'fd00:64:1::100', '100.64.2.100']);
    expect(planEgress(config, local, new Set(['fd00:64:1::100', '100.64.2.100', '100.64.3.100']))).toEqual([
      { uplink: 'isp1', family: 4, addresses: ['100.64.1.100'], pods: [], waiting: ['10.244.1.2'] },
      {
        uplink: 'isp1',
        family: 6,
        addresses: ['fd00:64:1::100'],
        pods: [{ pod: 'fd00:244:1::2', address: 'fd00:64:1::100' }],
        waiting: [],
      },
      {
        uplink: 'isp2',
        family: 4,
        addresses: ['100.64.2.100'],
        pods: [{ pod: '10.244.1.3', address: '100.64.2.100' }],
        waiting: [],
      },
    ]);
  });

  it('numbers the uplinks of failover addresses alike on every node', () => {
    expect([...failoverUplinkIds(config)]).toEqual([
      ['isp1', 1],
      ['isp2', 2],
      ['other', 3],
    ]);
  });
});

describe('failover addresses on the interfaces', () => {
  it("holds the owned addresses that fit on this node, on their uplinks' interfaces", () => {
    const owned = new Set(['100.64.1.100', 'fd00:64:1::100', '100.64.2.100', 'fd00:64:2::100', '100.64.3.100']);
    expect(desiredAddresses(config, uplinks, owned, carries)).toEqual([
      { address: '100.64.1.100', interface: 'up1' },
      { address: 'fd00:64:1::100', interface: 'up1' },
      { address: '100.64.2.100', interface: 'up2' },
    ]);
  });

  it('removes what is held but not wanted there, and adds what is wanted but missing', () => {
    const held = [
      { address: '100.64.1.100', interface: 'up1' },
      { address: '100.64.2.100', interface: 'up1' },
      { address: '100.64.9.9', interface: 'up3' },
    ];
    const wanted = [
      { address: '100.64.1.100', interface: 'up1' },
      { address: '100.64.2.100', interface: 'up2' },
    ];
    expect(planAddresses(held, wanted)).toEqual({
      remove: [held[1], held[2]],
      add: [wanted[1]],
    });
  });
});
