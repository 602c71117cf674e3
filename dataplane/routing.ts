// Policy routing of the uplinks: one routing table per uplink holding its default routes, and ip
// rules that send a flow's packets to the table of the uplink in their mark (and the uplink's own
// source addresses to it, so that probes leave through the uplink they test).
//
// Before them, the main table without its default route (`suppress_prefixlength 0`) answers what
// arrives on an uplink and what the node itself sends or looks up (`iif lo`): what it routes
// specifically (the pods, the node's own networks) goes by it, only what it would send by its
// default route is left to the uplinks' rules. Replies to the pods carry their uplink's mark, so
// that the strict reverse-path check finds the server through the uplink, and must still reach
// the pod; a node whose uplink translates to its own address must still answer its pods; and a
// reverse-path check in nftables (`fib saddr . mark . iif`) of a pod's marked packet must find
// the pod, not the uplink. naat owns the rules of its preferences and the tables of its range.
import { exec, type Command } from './exec.ts';
import { mainRulePreference, routeTableBase, routeTableCount, rulePreference, type UplinkRoute } from './render.ts';

export interface IpRule {
  family: 4 | 6;
  /** An uplink's table, or the main table without its default route (`suppress_prefixlength 0`). */
  table: number | 'main';
  /** A mark (compared under `mask`, all bits when omitted) or a source address; an input interface for `main`. */
  mark?: number;
  mask?: number;
  from?: string;
  iif?: string;
}

export interface IpRoute {
  family: 4 | 6;
  table: number;
  /** Empty for the unreachable fallback. */
  device: string;
  via?: string;
  /**
   * The last route of every uplink table: while the uplink's own route is gone (its link went
   * down and the kernel removed it), its flows and probes fail instead of falling through to the
   * main table and leaving by another path untranslated or looking healthy.
   */
  unreachable?: true;
}

const fallbackMetric = 4294967295;

export interface RoutingState {
  rules: IpRule[];
  routes: IpRoute[];
}

export interface Routing {
  list(): Promise<RoutingState>;
  add(state: RoutingState): Promise<void>;
  remove(state: RoutingState): Promise<void>;
}

export function desiredRouting(routes: readonly UplinkRoute[]): RoutingState {
  const state: RoutingState = { rules: [], routes: [] };
  // First, so that they are in place before the rules that would capture those packets.
  const interfaces = routes.length ? ['lo', ...new Set(routes.map((r) => r.interface))] : [];
  for (const iif of interfaces) {
    for (const family of [4, 6] as const) state.rules.push({ family, table: 'main', iif });
  }
  for (const r of routes) {
    for (const family of [4, 6] as const) {
      state.rules.push({ family, table: r.table, mark: r.mark, mask: r.markMask });
      const via = family === 4 ? r.nextHop.ipv4 : r.nextHop.ipv6;
      // A family without a next hop is routed on-link, unless the other family has one (then
      // the uplink simply does not carry this family).
      const other = family === 4 ? r.nextHop.ipv6 : r.nextHop.ipv4;
      if (via || !other) state.routes.push({ family, table: r.table, device: r.interface, ...(via ? { via } : {}) });
      state.routes.push({ family, table: r.table, device: '', unreachable: true });
    }
    for (const from of r.sources) state.rules.push({ family: from.includes(':') ? 6 : 4, table: r.table, from });
  }
  return state;
}

const ruleKey = (r: IpRule) =>
  `${r.family} ${r.table} ${r.mark === undefined ? '' : `${r.mark}/${r.mask ?? allBits}`} ${r.from ?? ''} ${r.iif ?? ''}`;
const routeKey = (r: IpRoute) => `${r.family} ${r.table} ${r.unreachable ? 'unreachable' : r.device} ${r.via ?? ''}`;

/**
 * What to add before the new ruleset is applied and what to remove after it, so that no flow is
 * ever marked for a table that is not there yet (make before break).
 */
export function planRouting(current: RoutingState, desired: RoutingState): { add: RoutingState; remove: RoutingState } {
  const has = { rules: new Set(current.rules.map(ruleKey)), routes: new Set(current.routes.map(routeKey)) };
  const want = { rules: new Set(desired.rules.map(ruleKey)), routes: new Set(desired.routes.map(routeKey)) };
  return {
    add: {
      rules: desired.rules.filter((r) => !has.rules.has(ruleKey(r))),
      routes: desired.routes.filter((r) => !has.routes.has(routeKey(r))),
    },
    remove: {
      rules: current.rules.filter((r) => !want.rules.has(ruleKey(r))),
      routes: current.routes.filter((r) => !want.routes.has(routeKey(r))),
    },
  };
}

const allBits = 0xffffffff;
const ownTable = (table: number) => table > routeTableBase && table <= routeTableBase + routeTableCount;
const hex = (n: number) => `0x${n.toString(16)}`;

/** Drives `ip`: listing as JSON, changes through `ip -batch` per family. */
export class ExecRouting implements Routing {
  readonly #ip: Command;
  constructor(ip: Command = ['ip']) {
    this.#ip = ip;
  }

  async list(): Promise<RoutingState> {
    const state: RoutingState = { rules: [], routes: [] };
    // The four listings at once: a claim of a failover address waits for them.
    const listed = await Promise.all(
      ([4, 6] as const).map(async (family) => {
        const [rules, routes] = await Promise.all([
          this.#run([`-${family}`, '-j', 'rule', 'show']),
          this.#run([`-${family}`, '-j', 'route', 'show', 'table', 'all']),
        ]);
        return { family, rules, routes };
      }),
    );
    for (const { family, rules: rulesText, routes: routesText } of listed) {
      const rules = JSON.parse(rulesText) as Array<Record<string, unknown>>;
      for (const r of rules) {
        if (r.priority === mainRulePreference) {
          if (r.table !== 'main' || r.suppress_prefixlen !== 0) continue;
          if (typeof r.iif === 'string') state.rules.push({ family, table: 'main', iif: r.iif });
          continue;
        }
        if (r.priority !== rulePreference) continue;
        const table = Number(r.table);
        if (!ownTable(table)) continue;
        // ip leaves out fwmask when it is all ones.
        const mask = r.fwmask === undefined ? allBits : Number(r.fwmask);
        if (r.fwmark !== undefined) state.rules.push({ family, table, mark: Number(r.fwmark), mask });
        else if (typeof r.src === 'string') state.rules.push({ family, table, from: r.src });
      }
      const routes = JSON.parse(routesText) as Array<Record<string, unknown>>;
      for (const r of routes) {
        const table = Number(r.table);
        if (!ownTable(table) || r.dst !== 'default') continue;
        if (r.type === 'unreachable') state.routes.push({ family, table, device: '', unreachable: true });
        else
          state.routes.push({ family, table, device: String(r.dev), ...(r.gateway ? { via: String(r.gateway) } : {}) });
      }
    }
    return state;
  }

  async add(state: RoutingState): Promise<void> {
    await this.#batch(
      state,
      (r) =>
        r.unreachable
          ? `route replace unreachable default table ${r.table} metric ${fallbackMetric}`
          : `route replace default${r.via ? ` via ${r.via}` : ''} dev ${r.device} table ${r.table}${r.via ? ' onlink' : ''}`,
      (r) => `rule add ${ruleSelector(r)}`,
      true,
    );
  }

  async remove(state: RoutingState): Promise<void> {
    await this.#batch(
      state,
      (r) =>
        r.unreachable
          ? `route del unreachable default table ${r.table} metric ${fallbackMetric}`
          : `route del default${r.via ? ` via ${r.via}` : ''} dev ${r.device} table ${r.table}`,
      (r) => `rule del ${ruleSelector(r)}`,
      false,
    );
  }

  async #run(args: string[], input?: string): Promise<string> {
    const { code, stdout, stderr } = await exec(this.#ip, args, input);
    if (code !== 0) throw new Error(`ip ${args.join(' ')} failed: ${stderr.trim()}`);
    return stdout;
  }

  // Routes go in before the rules that lead to them and leave after them. The families' batches
  // run at once: a rule of one never leads to a table of the other. Each runs to its end, and a
  // failure is told in family order, not by which ended first, so that the same problem reads the
  // same from one sync to the next (the agent logs a problem again only when its text changes).
  async #batch(state: RoutingState, route: (r: IpRoute) => string, rule: (r: IpRule) => string, routesFirst: boolean) {
    const outcomes = await Promise.allSettled(
      ([4, 6] as const).map(async (family) => {
        const routes = state.routes.filter((r) => r.family === family).map(route);
        const rules = state.rules.filter((r) => r.family === family).map(rule);
        const lines = routesFirst ? [...routes, ...rules] : [...rules, ...routes];
        // -force goes on past a failed line, so one broken uplink does not hold back the others;
        // the caller lists the state afterwards to learn what is in place.
        if (lines.length) await this.#run([`-${family}`, '-force', '-batch', '-'], `${lines.join('\n')}\n`);
      }),
    );
    const failed = outcomes.find((outcome) => outcome.status === 'rejected');
    if (failed) throw failed.reason;
  }
}

function ruleSelector(r: IpRule): string {
  const match =
    r.mark !== undefined
      ? `fwmark ${hex(r.mark)}/${hex(r.mask ?? allBits)}`
      : r.iif
        ? `iif ${r.iif}`
        : `from ${r.from}`;
  return r.table === 'main'
    ? `pref ${mainRulePreference} ${match} table main suppress_prefixlength 0`
    : `pref ${rulePreference} ${match} table ${r.table}`;
}

/** Routing state in memory, for unit tests of the agent. */
export class FakeRouting implements Routing {
  state: RoutingState = { rules: [], routes: [] };
  async list(): Promise<RoutingState> {
    return { rules: [...this.state.rules], routes: [...this.state.routes] };
  }
  async add(state: RoutingState): Promise<void> {
    const plan = planRouting(this.state, {
      rules: [...this.state.rules, ...state.rules],
      routes: [...this.state.routes, ...state.routes],
    });
    this.state = {
      rules: [...this.state.rules, ...plan.add.rules],
      routes: [...this.state.routes, ...plan.add.routes],
    };
  }
  async remove(state: RoutingState): Promise<void> {
    const gone = planRouting(state, { rules: [], routes: [] }).remove;
    const rules = new Set(gone.rules.map(ruleKey));
    const routes = new Set(gone.routes.map(routeKey));
    this.state = {
      rules: this.state.rules.filter((r) => !rules.has(ruleKey(r))),
      routes: this.state.routes.filter((r) => !routes.has(routeKey(r))),
    };
  }
}
