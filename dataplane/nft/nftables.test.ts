import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseGatewayConfig } from '../../contracts/gateway/index.ts';
import { maxUplinkId, render, uplinkMarks, type RenderInput } from '../render.ts';
import { allocateUplinkIds } from '../uplink-ids.ts';
import { renderTable, type Table } from './model.ts';
import { FakeNftables, operationText, planSync } from './nftables.ts';

const config = parseGatewayConfig(
  JSON.parse(await readFile(join(import.meta.dirname, '..', 'testdata', 'gateway.json'), 'utf8')),
);
const ids = allocateUplinkIds(
  new Map(),
  config.uplinks.map((u) => u.name),
  maxUplinkId(uplinkMarks(config)),
);
const input = (extra: Partial<RenderInput> = {}): RenderInput => ({
  config,
  node: 'n',
  ids,
  health: new Map(),
  ...extra,
});

const byName = <T extends { name: string }>(items: T[]) => [...items].sort((a, b) => a.name.localeCompare(b.name));
/** The table in name order: the kernel keeps creation order, which differs after removals. */
const canonical = (t: Table | undefined) =>
  t && renderTable({ chains: byName(t.chains), sets: byName(t.sets), objects: byName(t.objects) });

async function sync(nft: FakeNftables, i: RenderInput) {
  const table = render(i).table;
  await nft.run(planSync(table, await nft.list()));
  return table;
}

describe('planSync on the in-memory table', () => {
  it('brings an empty kernel to the rendered table, and re-applying changes nothing', async () => {
    const nft = new FakeNftables();
    const table = await sync(nft, input());
    expect(canonical(nft.table())).toBe(canonical(table));
    await sync(nft, input());
    expect(canonical(nft.table())).toBe(canonical(table));
  });

  it('removes what it no longer needs: the chains of a removed uplink and an unused timeout', async () => {
    const nft = new FakeNftables();
    await sync(nft, input());
    const smaller = parseGatewayConfig({
      ...config,
      uplinks: config.uplinks.filter((u) => u.name !== 'backup'),
      rules: config.rules.filter((r) => !r.uplinks),
      timeouts: { ...config.timeouts, udpSeconds: 60 },
    });
    const table = await sync(nft, { ...input(), config: smaller });
    expect(canonical(nft.table())).toBe(canonical(table));
    expect(nft.dump()).not.toMatch(/uplink_backup|udp4_120/);
  });

  it('keeps the members of dynamic sets across syncs', async () => {
    const sticky = parseGatewayConfig({ ...config, balancing: { mode: 'SourceSticky' } });
    const nft = new FakeNftables();
    await sync(nft, { ...input(), config: sticky });
    const member = { key: [{ kind: 'address' as const, address: '10.244.1.7' }] };
    await nft.run([{ op: 'add', what: 'element', set: 'sticky2_4', elements: [member] }]);
    await sync(nft, { ...input(), config: sticky });
    expect(nft.table()!.sets.find((s) => s.name === 'sticky2_4')!.elements).toEqual([member]);
  });

  it('applies a failing transaction not at all', async () => {
    const nft = new FakeNftables();
    await sync(nft, input());
    const before = nft.dump();
    await expect(
      nft.run([
        { op: 'flush', what: 'chain', name: 'pod_rules' },
        {
          op: 'add',
          what: 'rule',
          chain: 'pod_rules',
          rule: { match: [], then: [{ kind: 'goto', chain: 'nowhere' }] },
        },
      ]),
    ).rejects.toThrow(/missing chain nowhere/);
    expect(nft.dump()).toBe(before);
  });

  it('orders a transaction so the kernel accepts it: chains emptied, sets made afresh, then elements and rules, then removals', () => {
    const lines = planSync(render(input({ associations: [] })).table, {
      chains: ['old_chain', 'pod_rules'],
      sets: ['old_set', 'sources4'],
      maps: ['pod_rules_tcp4'],
      objects: [],
    }).map(operationText);
    const firstRule = lines.findIndex((l) => l.startsWith('add rule'));
    const lastChain = lines.findLastIndex((l) => l.startsWith('add chain'));
    expect(lastChain).toBeLessThan(firstRule);
    const firstDelete = lines.findIndex((l) => l.startsWith('delete'));
    for (const chain of ['old_chain', 'pod_rules'])
      expect(lines.indexOf(`flush chain inet naat ${chain}`)).toBeLessThan(firstDelete);
    for (const [what, name] of [
      ['set', 'sources4'],
      ['map', 'pod_rules_tcp4'],
    ]) {
      expect(lines.indexOf(`delete ${what} inet naat ${name}`) + 1).toBe(
        lines.findIndex((l) => l.startsWith(`add ${what} inet naat ${name} `)),
      );
    }
    expect(lines.slice(-2)).toEqual(['delete set inet naat old_set', 'delete chain inet naat old_chain']);
  });

  it('removes a verdict map before the chains its elements name (strict mode turned off)', async () => {
    const nft = new FakeNftables();
    const association = { port: 7740, unassociatedFlows: 'PodRules' as const, sidecarSources: [] };
    const strict = { ...config, association: { ...association, strictSources: ['10.244.1.0/24'] } };
    const curl = {
      processName: 'curl',
      executable: '/usr/bin/curl',
      commandLine: [],
      containerName: 'app',
      containerId: '',
      uid: 0,
      pid: 1,
    };
    const stamps = [{ address: '10.244.1.2', stamp: 5, application: curl }];
    await sync(nft, input({ config: strict, stamps }));
    expect(nft.table()!.chains.map((c) => c.name)).toContain('class0');
    const table = await sync(nft, input());
    expect(canonical(nft.table())).toBe(canonical(table));
  });
});
