import { desiredRouting, ExecRouting, FakeRouting, planRouting, type IpRule } from './routing.ts';
import type { UplinkRoute } from './render.ts';

const uplink = (id: number, change: Partial<UplinkRoute> = {}): UplinkRoute => ({
  uplink: `isp${id}`,
  id,
  mark: id,
  markMask: 0xf,
  table: 7700 + id,
  interface: `up${id}`,
  nextHop: { ipv4: `100.64.${id}.1`, ipv6: `fd00:64:${id}::1` },
  sources: [`100.64.${id}.2`, `fd00:64:${id}::2`],
  ...change,
});

const main = (rules: readonly IpRule[]) => rules.filter((r) => r.table === 'main');

describe('desiredRouting', () => {
  it("sends what arrives on an uplink, and the node's own packets and lookups, to the main table first", () => {
    const { rules } = desiredRouting([uplink(1), uplink(2)]);
    expect(main(rules)).toEqual([
      { family: 4, table: 'main', iif: 'lo' },
      { family: 6, table: 'main', iif: 'lo' },
      { family: 4, table: 'main', iif: 'up1' },
      { family: 6, table: 'main', iif: 'up1' },
      { family: 4, table: 'main', iif: 'up2' },
      { family: 6, table: 'main', iif: 'up2' },
    ]);
    // Added before the uplinks' rules, which would otherwise capture those packets meanwhile.
    expect(rules.slice(0, 6)).toEqual(main(rules));
    expect(rules.slice(6)).toContainEqual({ family: 4, table: 7701, mark: 1, mask: 0xf });
    expect(rules.slice(6)).toContainEqual({ family: 4, table: 7701, from: '100.64.1.2' });
  });

  it('holds one main-table rule per interface, whichever uplinks share it, and none without uplinks', () => {
    expect(main(desiredRouting([uplink(1), uplink(2, { interface: 'up1' })]).rules)).toHaveLength(4);
    expect(desiredRouting([])).toEqual({ rules: [], routes: [] });
  });

  it("takes away an uplink's main-table rules with the uplink, and the last ones with the last uplink", async () => {
    const routing = new FakeRouting();
    await routing.add(desiredRouting([uplink(1), uplink(2)]));
    const plan = planRouting(await routing.list(), desiredRouting([uplink(1)]));
    expect(plan.add).toEqual({ rules: [], routes: [] });
    expect(main(plan.remove.rules)).toEqual([
      { family: 4, table: 'main', iif: 'up2' },
      { family: 6, table: 'main', iif: 'up2' },
    ]);
    await routing.remove(plan.remove);
    expect(await routing.list()).toEqual(desiredRouting([uplink(1)]));
    await routing.remove(planRouting(await routing.list(), desiredRouting([])).remove);
    expect(await routing.list()).toEqual({ rules: [], routes: [] });
  });
});

describe('ExecRouting', () => {
  it('tells a failure of both families by IPv4 first, whichever batch ended first', async () => {
    // An `ip` that fails every batch, IPv4's after IPv6's has failed.
    const ip = ['sh', '-c', 'cat > /dev/null; [ "$1" = -4 ] && sleep 0.2; echo "$1 down" >&2; exit 1', 'ip'];
    const routing = new ExecRouting(ip);
    const state = {
      routes: [4, 6].map((family) => ({ family: family as 4 | 6, table: 7702, device: 'up2' })),
      rules: [],
    };
    await expect(routing.add(state)).rejects.toThrow(/^ip -4 .* failed: -4 down$/);
  });
});
