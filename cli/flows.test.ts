import { renderView } from './output.ts';
import { flowsView, matchesFlow, parsePodFilter, whoView, type WireFlow, type WireRecord } from './flows.ts';

const curl = {
  processName: 'curl',
  executable: '/usr/bin/curl',
  commandLine: [],
  containerName: 'app',
  containerId: '',
  uid: 0,
  pid: 7,
};
const flow = (id: number, extra: Partial<WireFlow> = {}): WireFlow => ({
  id,
  family: 4,
  protocol: 'tcp',
  source: '10.244.1.2',
  sourcePort: 40000 + id,
  destination: '203.0.113.10',
  destinationPort: 443,
  mappedAddress: '100.64.1.2',
  mappedPort: 20000 + id,
  uplink: 1,
  uplinkName: 'isp-a',
  startedAt: `2026-12-04T11:5${id}:00.000Z`,
  ...extra,
});
const shop = { pod: { namespace: 'shop', name: 'web-1' }, application: curl };
const now = new Date('2026-12-04T12:00:00Z');

describe('flows', () => {
  it('filters by pod, namespace, application and uplink', () => {
    const web = flow(1, shop);
    const other = flow(2, { pod: { namespace: 'shop', name: 'web-2' }, uplinkName: 'isp-b' });
    const unknown = flow(3);
    expect([web, other, unknown].filter((f) => matchesFlow(f, { pod: 'shop/web-1' }))).toEqual([web]);
    expect([web, other, unknown].filter((f) => matchesFlow(f, { pod: 'shop/' }))).toEqual([web, other]);
    expect([web, other, unknown].filter((f) => matchesFlow(f, { application: 'curl' }))).toEqual([web]);
    expect([web, other, unknown].filter((f) => matchesFlow(f, { uplink: 'isp-b' }))).toEqual([other]);
    expect([web, other, unknown].filter((f) => matchesFlow(f, {}))).toEqual([web, other, unknown]);
  });

  it('takes a pod filter as NAMESPACE/NAME or NAMESPACE/ only', () => {
    expect(parsePodFilter('shop/web-1')).toBe('shop/web-1');
    expect(parsePodFilter('shop/')).toBe('shop/');
    expect(parsePodFilter('web-1')).toBeUndefined();
    expect(parsePodFilter('shop/web/1')).toBeUndefined();
  });

  it("prints each agent's flows, the newest first, with where they came from in wide", () => {
    const view = flowsView(
      [
        { gateway: 'corp', node: 'gw-1', flow: flow(1, shop) },
        {
          gateway: 'corp',
          node: 'gw-2',
          flow: flow(2, { family: 6, source: 'fd00::2', destination: '2001:db8::1', mappedAddress: 'fd00:64:1::2' }),
        },
      ],
      {},
      now,
    );
    expect(renderView(view, 'table').split('\n')).toEqual([
      'POD          APPLICATION   PROTOCOL   SOURCE             DESTINATION         UPLINK   TRANSLATED             AGE',
      '<unknown>                  tcp        [fd00::2]:40002    [2001:db8::1]:443   isp-a    [fd00:64:1::2]:20002   8m',
      'shop/web-1   curl          tcp        10.244.1.2:40001   203.0.113.10:443    isp-a    100.64.1.2:20001       9m',
      '',
    ]);
    expect(renderView(view, 'wide').split('\n')[2]).toContain('corp      gw-1   app');
    expect(JSON.parse(renderView(view, 'json'))[1]).toMatchObject({ gateway: 'corp', node: 'gw-1', flow: { id: 1 } });
  });
});

describe('who', () => {
  const query = { address: '100.64.1.2', port: 20001, at: now };
  const record = (start: string, extra: Partial<WireRecord> = {}): WireRecord => ({
    id: 1,
    family: 4,
    protocol: 'tcp',
    source: '10.244.1.2',
    sourcePort: 40001,
    destination: '203.0.113.10',
    destinationPort: 443,
    mappedAddress: '100.64.1.2',
    mappedPort: 20001,
    start,
    verdict: 'Allow',
    ...extra,
  });

  it('names pod, container, application, policy and uplink of each translation, the latest first', () => {
    const view = whoView(query, [
      {
        gateway: 'corp',
        node: 'gw-1',
        record: record('2026-12-04T11:00:00.000Z', { end: '2026-12-04T11:10:00.000Z' }),
      },
      {
        gateway: 'corp',
        node: 'gw-2',
        record: record('2026-12-04T11:50:00.000Z', {
          pod: { namespace: 'shop', name: 'web-1' },
          container: 'app',
          application: { processName: 'curl', executable: '/usr/bin/curl', uid: 1000 },
          policy: 'shop/curl',
          rule: 'allow-api',
          uplink: 'isp-a',
        }),
      },
    ]);
    expect(renderView(view, 'table').split('\n').slice(0, 3)).toEqual([
      'POD          CONTAINER   APPLICATION   POLICY                VERDICT   UPLINK   FROM                       UNTIL',
      'shop/web-1   app         curl          shop/curl#allow-api   Allow     isp-a    2026-12-04T11:50:00.000Z   <open>',
      '<unknown>                              <default action>      Allow              2026-12-04T11:00:00.000Z   2026-12-04T11:10:00.000Z',
    ]);
  });

  it('says when no translation held the address and port then', () => {
    expect(renderView(whoView(query, []), 'table')).toBe(
      'No translation held 100.64.1.2:20001 at 2026-12-04T12:00:00.000Z.\n',
    );
  });
});
