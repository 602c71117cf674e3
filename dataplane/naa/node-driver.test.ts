import type { GatewayConfig, NodeConfig } from '../../contracts/gateway/index.ts';
import type { Association } from '../../contracts/naa/index.ts';
import { gatewayAgentPods, nodeAgentPods, ownFlows, podProcesses, type ProcessPlace } from './node-driver.ts';

const id = (c: string) => c.repeat(64);
const place = (podUid: string | undefined, netns: string, container = 'a'): ProcessPlace => ({
  pod: podUid ? { podUid, containerId: id(container) } : undefined,
  netns,
});

describe("a pod's processes", () => {
  test('are those its cgroup names, in the namespace most of them share, looked at through the lowest pid there', () => {
    const places = new Map<number, ProcessPlace>([
      [1, place(undefined, 'net:[1]')],
      [40, place('web', 'net:[9]', 'b')],
      [10, place('web', 'net:[5]', 'p')],
      [12, place('web', 'net:[5]', 'a')],
      [30, place('web', 'net:[5]', 'a')],
      [20, place('db', 'net:[6]')],
      [21, place('other', 'net:[7]')],
    ]);
    expect(podProcesses(places, new Set(['web', 'db', 'gone']))).toEqual(
      new Map([
        ['web', { netns: 'net:[5]', netPid: 10, pids: [10, 12, 30] }],
        ['db', { netns: 'net:[6]', netPid: 20, pids: [20] }],
      ]),
    );
  });

  test('on a tie, the namespace of the oldest process wins', () => {
    const places = new Map<number, ProcessPlace>([
      [50, place('web', 'net:[9]')],
      [7, place('web', 'net:[5]')],
    ]);
    expect(podProcesses(places, new Set(['web'])).get('web')).toEqual({ netns: 'net:[5]', netPid: 7, pids: [7] });
  });
});

test('the node agent drives the pods its node config gives the Node driver, and no other', () => {
  const gateway = {
    gateway: 'egress',
    tunnel: { vni: 7, port: 4789 },
    selection: 'Pod',
    associationPort: 7740,
    healthPort: 7741,
    bypass: [],
    peers: [],
    pods: [
      {
        namespace: 'shop',
        name: 'web',
        addresses: ['10.244.1.10'],
        association: { uid: 'uid-web', containers: [{ id: id('c'), name: 'app' }] },
      },
      { namespace: 'shop', name: 'sidecar-driven', addresses: ['10.244.1.11'] },
      {
        namespace: 'shop',
        name: 'strict',
        addresses: ['10.244.1.12'],
        association: { uid: 'uid-strict', containers: [], strict: true },
      },
    ],
  } satisfies NodeConfig['gateways'][number];
  const config: NodeConfig = { version: 1, node: 'worker-a', markMask: 0xe0, gateways: [gateway] };
  const wanted = nodeAgentPods(config, (g) => `unix:/run/naat-node/naa-${g.associationPort}.sock`);
  expect(wanted).toEqual(
    new Map([
      [
        'uid-web',
        {
          ref: { namespace: 'shop', name: 'web', uid: 'uid-web' },
          addresses: new Set(['10.244.1.10']),
          containers: new Map([[id('c'), 'app']]),
          target: 'unix:/run/naat-node/naa-7740.sock',
          strict: false,
        },
      ],
      [
        'uid-strict',
        {
          ref: { namespace: 'shop', name: 'strict', uid: 'uid-strict' },
          addresses: new Set(['10.244.1.12']),
          containers: new Map(),
          target: 'unix:/run/naat-node/naa-7740.sock',
          strict: true,
        },
      ],
    ]),
  );
});

test("the gateway agent drives the pods of its gateway's config that have the Node driver and run on its own node", () => {
  const pods: GatewayConfig['pods'] = [
    {
      namespace: 'shop',
      name: 'here',
      addresses: ['10.244.0.10'],
      node: 'gw-a',
      association: { uid: 'uid-here', containers: [{ id: id('c'), name: 'app' }] },
    },
    {
      namespace: 'shop',
      name: 'on-another-gateway-node',
      addresses: ['10.244.2.10'],
      node: 'gw-b',
      association: { uid: 'uid-there', containers: [] },
    },
    { namespace: 'shop', name: 'sidecar-driven', addresses: ['10.244.0.11'], node: 'gw-a' },
  ];
  const wanted = gatewayAgentPods({ pods } as GatewayConfig, 'gw-a', 'unix:/run/naat/naa.sock');
  expect(wanted).toEqual(
    new Map([
      [
        'uid-here',
        {
          ref: { namespace: 'shop', name: 'here', uid: 'uid-here' },
          addresses: new Set(['10.244.0.10']),
          containers: new Map([[id('c'), 'app']]),
          target: 'unix:/run/naat/naa.sock',
          strict: false,
        },
      ],
    ]),
  );
});

test("a pod's flows are those of its own addresses or of none, and the same map when that is all of them", () => {
  const association = (sourceAddress: string, sourcePort: number): [string, Association] => [
    `${sourceAddress}:${sourcePort}`,
    {
      flow: { transport: 'udp', family: 4, sourceAddress, sourcePort, destinationAddress: '', destinationPort: 0 },
      application: {
        processName: 'dns',
        executable: '',
        commandLine: [],
        containerName: '',
        containerId: '',
        uid: 0,
        pid: 9,
      },
      observedAt: new Date(0),
    },
  ];
  const own = new Map([association('10.244.1.10', 53), association('', 5353)]);
  expect(ownFlows(own, new Set(['10.244.1.10']))).toBe(own);
  const spoofed = new Map([...own, association('10.244.1.99', 53)]);
  expect([...ownFlows(spoofed, new Set(['10.244.1.10'])).keys()]).toEqual(['10.244.1.10:53', ':5353']);
});
