// The pure heart of the dataplane: from a compiled gateway config, the health and load of its
// uplinks and the known associations, the one nftables table naat owns and the policy routes of
// its uplinks. Nothing here touches the kernel.
//
// Packet path of a new flow from a served pod (prerouting, before the route is chosen):
//   flow of an earlier decision (conntrack mark set, FTP data included) → packet mark restored;
//   new flow → FTP helper and timeouts → application stamp (strict mode) or association lookup →
//   rules of the application's class
//   (or the pod-level rules) → Deny drops; Allow goes to a choice chain → an uplink chain sets the
//   uplink's bits in the conntrack and packet marks → the fwmark rule routes it by the uplink's
//   table → postrouting translates the source to the uplink's addresses.
//
// Failover addresses (config.failover): a tunnelled flow of a pod whose egress address of the flow's
// family is owned by this node skips the balancing of its choice chain (after its rule allowed it)
// and goes to that address's uplink, whose SNAT chain translates it to the address. Which pods
// those are is looked up in a set and a map per uplink and family (failover/egress.ts), so that
// ownership moving moves elements only.
import { createHash } from 'node:crypto';
import type { Application, TraceContext } from '../proto/index.ts';
import { matchesApplication } from '../contracts/index.ts';
import { balancerFor, type Balancer } from './balancing/index.ts';
import type { CompiledRule, CompiledUplink, GatewayConfig } from '../contracts/gateway/index.ts';
import {
  canonicalAddress,
  markField,
  markOf,
  normalisePrefixes,
  uplinkMarkMask,
  type MarkField,
} from '../contracts/gateway/index.ts';
import { hasPorts, rulesCompiler, type RulesCompiler } from './classify.ts';
import { addressText, type Interval } from './nft/intervals.ts';
import {
  renderElement,
  type Chain,
  type ChainVerdict,
  type Family,
  type KeyPart,
  type L4,
  type Match,
  type NamedSet,
  type NftObject,
  type Rule,
  type SetElement,
  type Statement,
  type Table,
} from './nft/model.ts';
import { localEgressAddresses, planEgress, type EgressAddress, type UplinkEgress } from './failover/egress.ts';
import { gatewayDevice, planGatewaySteering, type GatewaySteering } from './steering/gateway-plan.ts';
import type { Family as TunnelFamily, Underlay } from './steering/tunnel.ts';
import { srcValidMark, type Sysctl } from './sysctls.ts';

/** Routing table of uplink id n is routeTableBase + n; ip rules use this preference. */
export const routeTableBase = 7700;
export const rulePreference = 7700;
/**
 * The ip rules that send packets arriving on an uplink, and the node's own packets and lookups
 * (`iif lo`), to the main table's specific routes before any uplink's rule (see routing.ts).
 */
export const mainRulePreference = 7699;
/** The routing tables naat owns, routeTableBase + 1 up to this many, whatever the mark bits. */
export const routeTableCount = 254;

/** The mark bits of the config's uplink ids (marks.uplinks; 0x0000000f by default). */
export const uplinkMarks = (config: GatewayConfig): MarkField => markField(uplinkMarkMask(config));

/** The highest uplink id: what the mark bits hold, and one routing table per id. */
export const maxUplinkId = (marks: MarkField): number => Math.min(marks.max, routeTableCount);

export interface FlowAssociation {
  transport: 'tcp' | 'udp';
  sourceAddress: string;
  sourcePort: number;
  application: Application;
  /** Where the socket is connected; absent for an unconnected UDP socket. */
  destinationAddress?: string;
  destinationPort?: number;
  pod?: { namespace: string; name: string };
  /** When the sidecar saw the socket: association latency runs from here to the kernel. */
  observedAt?: Date;
  /** The W3C context of the sidecar's span for it (telemetry on), for the spans of its flows. */
  trace?: TraceContext;
}

/** In strict mode, what a pod's packets stamped `stamp` in their DSCP field come from. */
export interface StampedApplication {
  /** The pod's address (each address of a dual-stack pod has its own entry). */
  address: string;
  /** 1–63. */
  stamp: number;
  application: Application;
}

export interface RenderInput {
  config: GatewayConfig;
  /** This node's name; uplinks whose `nodes` leave it out are not used here. */
  node: string;
  /** Stable id of each uplink (see allocateUplinkIds): established flows carry it in their mark. */
  ids: ReadonlyMap<string, number>;
  /** Healthy or not, per uplink; an uplink missing here counts as healthy. */
  health: ReadonlyMap<string, boolean>;
  /** Active flows per uplink, for balancers that follow the load (LeastLoaded). */
  load?: ReadonlyMap<string, number>;
  associations?: readonly FlowAssociation[];
  stamps?: readonly StampedApplication[];
  /** Addresses of each uplink interface, the probe sources of uplinks without SNAT addresses. */
  interfaceAddresses?: ReadonlyMap<string, readonly string[]>;
  /** This node's underlay per family (config.steering): the tunnel's outer address and MTU. */
  underlay?: ReadonlyMap<TunnelFamily, Underlay>;
  /**
   * The failover addresses (config.failover) this node owns now, canonical: the tunnelled flows of
   * the pods whose egress address they are leave with them. Addresses not on an uplink of this
   * node are ignored.
   */
  owned?: ReadonlySet<string>;
  /**
   * What earlier renders made of `config` alone, to reuse: kept by the caller between renders
   * of the same config; one made for another config is ignored.
   */
  memo?: ConfigMemo;
}

/**
 * The parts of the table that depend on the config alone: the address sets and each class's
 * chain with the maps of its rules compiled. An association or a health change renders the
 * table again, and compiling 1,000 rules for each application class took most of such a sync.
 * The parts are reused as they are, so that planChanges sees them unchanged at a glance. A memo
 * of the next config takes from the last one what the two share: the address sets when the
 * addresses are the same, and the rules' source addresses read as intervals.
 */
export class ConfigMemo {
  readonly config: GatewayConfig;
  readonly addressSets: NamedSet[];
  readonly ruleIndex: ReadonlyMap<CompiledRule, number>;
  readonly compiler: RulesCompiler<CompiledRule>;
  /**
   * By class name, with the indices of the application rules it was made for (`key`): its chain,
   * its maps, and the rules their elements name in the order they were first named.
   */
  readonly classes = new Map<string, { key: string; chain: Chain; maps: NamedSet[]; rules: CompiledRule[] }>();

  constructor(config: GatewayConfig, last?: ConfigMemo) {
    this.config = config;
    const same = last && sameLists(addressLists(last.config), addressLists(config));
    this.addressSets = same ? last.addressSets : renderAddressSets(config);
    this.ruleIndex = new Map(config.rules.map((rule, i) => [rule, i]));
    this.compiler = rulesCompiler(last?.compiler);
  }
}

/** What renderAddressSets reads. */
const addressLists = (config: GatewayConfig): Array<readonly string[] | undefined> => [
  config.sources,
  config.bypass,
  config.association?.unassociatedFlows === 'Hold' ? config.association.sidecarSources : undefined,
  config.association?.strictSources,
];

const sameLists = (a: Array<readonly string[] | undefined>, b: Array<readonly string[] | undefined>) =>
  a.length === b.length &&
  a.every((list, i) => {
    const other = b[i];
    return list === other || (list && other && list.length === other.length && list.every((x, j) => x === other[j]));
  });

export interface UplinkRoute {
  uplink: string;
  id: number;
  mark: number;
  /** The uplink id bits the ip rule compares `mark` under. */
  markMask: number;
  table: number;
  interface: string;
  nextHop: { ipv4?: string; ipv6?: string };
  /** Source addresses routed by the uplink's table, so that probes from them leave through it. */
  sources: string[];
}

export interface Rendered {
  table: Table;
  routes: UplinkRoute[];
  /**
   * Kernel settings the routes rely on: `src_valid_mark` (for every device, see sysctls.ts), so
   * that the strict reverse-path check of a packet arriving on an uplink uses its mark (restored
   * in prerouting from its flow's) and finds the server behind the uplink's own table.
   */
  sysctls: Sysctl[];
  /** The steering tunnel, its return routes and rule (config.steering with a known underlay). */
  steering?: GatewaySteering;
}

export function localUplinks(config: GatewayConfig, node: string): CompiledUplink[] {
  return config.uplinks.filter((u) => !u.nodes || u.nodes.includes(node)).sort((a, b) => a.name.localeCompare(b.name));
}

const families: Family[] = [4, 6];
const family = (f: Family): Match => ({ kind: 'family', family: f });
const goto = (chain: string): ChainVerdict => ({ kind: 'goto', chain });
const drop: Statement[] = [{ kind: 'counter' }, { kind: 'verdict', verdict: 'drop' }];
const ret: Statement = { kind: 'verdict', verdict: 'return' };
const familyOf = (address: string): Family => (address.includes(':') ? 6 : 4);
const ftpHelper = (f: Family) => `ftp${f}`;

/** The table as it is built: each part adds its sets and chains in the order `nft list` shows them. */
interface TableParts {
  sets: NamedSet[];
  chains: Chain[];
}

/** What the parts of the table are rendered from: the input, with this node's uplinks and their ids. */
interface RenderContext {
  config: GatewayConfig;
  /** This node's uplinks, by name. */
  uplinks: CompiledUplink[];
  ids: ReadonlyMap<string, number>;
  /** Where the uplink ids sit in the marks. */
  marks: MarkField;
  healthy: CompiledUplink[];
  load: ReadonlyMap<string, number>;
  balancer: Balancer;
  /** The failover paths per uplink and family (failover/egress.ts); empty without steering. */
  egress: UplinkEgress[];
  /** The packet mark bits of a flow that came through the steering tunnel; 0 without steering. */
  tunnelMask: number;
}

export function render(input: RenderInput): Rendered {
  const { config } = input;
  const uplinks = localUplinks(config, input.node);
  const egressAddresses = localEgressAddresses(config, uplinks, carries);
  const owned = input.owned ?? new Set<string>();
  const context: RenderContext = {
    config,
    uplinks,
    ids: new Map(uplinks.map((u) => [u.name, idOf(input.ids, u.name)])),
    marks: uplinkMarks(config),
    healthy: uplinks.filter((u) => input.health.get(u.name) !== false),
    load: input.load ?? new Map(),
    balancer: balancerFor(config.balancing),
    egress: planEgress(config, egressAddresses, owned),
    tunnelMask: config.steering?.markMask ?? 0,
  };
  const strict = (config.association?.strictSources ?? []).length > 0;
  const memo = input.memo?.config === config ? input.memo : new ConfigMemo(config);
  const parts: TableParts = { sets: [...memo.addressSets], chains: [] };
  const classOf = renderPolicyChains(context, parts, memo);
  parts.sets.push(...renderAssociationMaps(classOf, input.associations ?? [], input.stamps ?? [], strict));
  for (const uplink of uplinks) renderUplinkChains(context, uplink, parts);
  renderEgress(context, parts);
  const objects = conntrackObjects(config);
  objects.push(...uplinks.map((u): NftObject => ({ kind: 'counter', name: newFlowsCounter(u.name), body: '' })));
  if (strict) objects.push(...strictCounters());
  const steering = input.underlay && planGatewaySteering(config, input.node, input.underlay);
  const chains = [
    renderPrerouting(config, context.marks, uplinks),
    ...parts.chains,
    renderPostrouting(context),
    renderGuard(uplinks),
    ...(strict ? [renderStrictClear()] : []),
    ...(steering ? [steering.mss] : []),
  ];
  return {
    table: { chains, sets: parts.sets, objects },
    routes: renderRoutes(context, input.interfaceAddresses, egressAddresses),
    sysctls: uplinks.length ? [srcValidMark] : [],
    ...(steering ? { steering } : {}),
  };
}

const addressElements = (addresses: readonly string[]): SetElement[] =>
  addresses.map((address) => ({ key: [{ kind: 'address', address }] }));

const addressSet = (name: string, f: Family, prefixes: readonly string[]): NamedSet => ({
  name,
  type: f === 4 ? 'ipv4_addr' : 'ipv6_addr',
  interval: true,
  elements: addressElements(normalisePrefixes([...prefixes], f)),
});

/**
 * A set of pod addresses, in two: the single addresses in a hash set, the wider prefixes in an
 * interval set. Before it changes any element, nft reads every element of every interval set of
 * one field in the ruleset: 10,000 pod addresses in one made each association, each pod added
 * and each rule edited cost 11 ms more; a hash set is not read. The prefixes are normalised, so
 * no address is in both.
 */
function podAddressSets(base: string, f: Family, prefixes: readonly string[]): NamedSet[] {
  const type = f === 4 ? 'ipv4_addr' : 'ipv6_addr';
  const normal = normalisePrefixes([...prefixes], f);
  const [addresses, networks] = podSetNames(base, f);
  return [
    { name: addresses, type, elements: addressElements(normal.filter((p) => !p.includes('/'))) },
    { name: networks, type, interval: true, elements: addressElements(normal.filter((p) => p.includes('/'))) },
  ];
}

/** The two sets of a set of pod addresses (podAddressSets): the addresses, and the wider prefixes. */
const podSetNames = (base: string, f: Family): [string, string] => [`${base}${f}`, `${base}_nets${f}`];

/** A source that is in neither set of a set of pod addresses: one rule's matches. */
const notFromPods = (base: string, f: Family): Match[] =>
  podSetNames(base, f).map((set) => ({ kind: 'saddr', family: f, set, negate: true }));

/**
 * A rule per set of a set of pod addresses, for a source of family `f` in either: `rule` places
 * the source's match. No packet matches both.
 */
const fromPods = (base: string, f: Family, rule: (source: Match) => Rule): Rule[] =>
  podSetNames(base, f).map((set) => rule({ kind: 'saddr', family: f, set }));

/** The served pods, the bypassed destinations, and the pods held (Hold) or stamped (strict mode). */
function renderAddressSets(config: GatewayConfig): NamedSet[] {
  const sets = families.flatMap((f) => [
    ...podAddressSets('sources', f, config.sources),
    addressSet(`bypass${f}`, f, config.bypass),
  ]);
  if (config.association?.unassociatedFlows === 'Hold') {
    for (const f of families) sets.push(...podAddressSets('held', f, config.association.sidecarSources));
  }
  const strictSources = config.association?.strictSources ?? [];
  if (strictSources.length) for (const f of families) sets.push(...podAddressSets('strict', f, strictSources));
  return sets;
}

/**
 * The policy's chains: `pod_rules` and the chain of each application class, which look the flow
 * up in the interval maps of their rules compiled (classify.ts), the chain of each rule that
 * decides some flow, and the choice chains their Allow verdicts go to. Returns the chain of each
 * application's class, made on first use.
 */
function renderPolicyChains(
  context: RenderContext,
  parts: TableParts,
  memo: ConfigMemo,
): (application: Application) => string | undefined {
  const { config } = context;
  const hold = config.association?.unassociatedFlows === 'Hold';
  const { chains } = parts;

  const choices = new Map<string, string>();
  const choiceChain = (rule?: CompiledRule): string => {
    const allowed = rule?.uplinks?.allowed;
    const preferred = rule?.uplinks?.preferred;
    const key = `${allowed?.join(',') ?? '*'}|${preferred?.join(',') ?? ''}`;
    let name = choices.get(key);
    if (!name) {
      name = allowed || preferred ? `choose${choices.size}` : 'choose_any';
      choices.set(key, name);
      chains.push({ name, rules: renderChoiceRules(context, allowed, preferred) });
    }
    return name;
  };

  // A rule's verdict, in a chain of its own that the maps' elements of every class share. Every
  // verdict is final (uplink chains accept).
  const ruleChains = new Map<CompiledRule, string>();
  const ruleChain = (rule: CompiledRule): string => {
    let name = ruleChains.get(rule);
    if (!name) {
      name = `rule${memo.ruleIndex.get(rule)}`;
      ruleChains.set(rule, name);
      const then: Statement[] = rule.action === 'Deny' ? drop : [{ kind: 'counter' }, goto(choiceChain(rule))];
      chains.push({ name, rules: [{ match: [], then, comment: ruleName(rule) }] });
    }
    return name;
  };
  const defaultVerdict: Rule = { match: [], then: config.defaultAction === 'Deny' ? drop : [goto(choiceChain())] };

  // The chain of a list of rules in the config's order: one lookup per family and protocol that
  // any of them matches, then the default action for what none matches. With `deciding`, only
  // the boxes those rules decide are kept, and what the maps do not hold goes on to `pod_rules`.
  // Made once per config: a later render only makes the chains of the rules its maps name again
  // (they depend on the uplinks' health).
  const classChain = (
    name: string,
    key: string,
    rules: readonly CompiledRule[],
    deciding?: ReadonlySet<CompiledRule>,
  ): Chain => {
    const known = memo.classes.get(name);
    if (known?.key === key) {
      for (const rule of known.rules) ruleChain(rule);
      parts.sets.push(...known.maps);
      return known.chain;
    }
    const named = new Set<CompiledRule>();
    const maps: NamedSet[] = [];
    const lookups = memo.compiler.compile(rules).flatMap(({ family: f, protocol, boxes: all }): Rule[] => {
      const boxes = deciding ? all.filter((box) => deciding.has(box.rule)) : all;
      if (!boxes.length) return [];
      const map = `${name}_${protocol}${f}`;
      const addr = f === 4 ? 'ipv4_addr' : 'ipv6_addr';
      const ports = hasPorts(protocol);
      maps.push({
        name: map,
        type: `${addr} . ${addr}${ports ? ' . inet_service' : ''} : verdict`,
        map: true,
        interval: true,
        elements: boxes.map((box) => {
          named.add(box.rule);
          return {
            key: [
              addresses(box.source, f),
              addresses(box.destination, f),
              ...(box.ports
                ? [{ kind: 'ports', first: Number(box.ports[0]), last: Number(box.ports[1]) } as KeyPart]
                : []),
            ],
            value: goto(ruleChain(box.rule)),
          };
        }),
      });
      const l4: L4 | undefined = protocol === 'any' ? undefined : protocol === 'icmp' && f === 6 ? 'icmpv6' : protocol;
      // A TCP, UDP or ICMP packet that missed its own map misses the map of any protocol too
      // when every box is kept; with only some kept, it goes on to pod_rules first.
      const skipAny: Rule[] =
        deciding && !l4
          ? [
              {
                match: [family(f), { kind: 'l4proto', protocols: ['tcp', 'udp', f === 4 ? 'icmp' : 'icmpv6'] }],
                then: [goto('pod_rules')],
              },
            ]
          : [];
      return [
        ...skipAny,
        {
          match: [family(f), ...(l4 ? [{ kind: 'l4proto', protocols: [l4] } as Match] : [])],
          then: [{ kind: 'classify', family: f, ports, map }],
        },
      ];
    });
    const chain = { name, rules: [...lookups, deciding ? { match: [], then: [goto('pod_rules')] } : defaultVerdict] };
    memo.classes.set(name, { key, chain, maps, rules: [...named] });
    parts.sets.push(...maps);
    return chain;
  };
  const podRules = config.rules.filter((r) => !r.applications);
  chains.push(classChain('pod_rules', '', podRules));

  // An application class: the rules without applications and the application rules one
  // application matches, in order. Its maps hold only the boxes its application rules decide,
  // compiled with the pod rules whose sources meet theirs (no other can match a packet there
  // first); a flow outside them is decided as by the pod's rules, so it goes on to `pod_rules`,
  // and an edit of a pod rule does not touch the classes' maps. A known application that no
  // rule names gets the pod's rules, like an unknown one, but it is known: in Hold mode that
  // lets it through (unknown ones do not reach the maps' pod_rules elements).
  const classes = new Map<string, string>();
  return (application) => {
    const matched = config.rules.filter((r) => r.applications?.some((m) => matchesApplication(m, application)));
    if (!matched.length) return hold ? 'pod_rules' : undefined;
    const key = matched.map((r) => memo.ruleIndex.get(r)).join(',');
    let name = classes.get(key);
    if (!name) {
      name = `class${classes.size}`;
      classes.set(key, name);
      const rules = config.rules.filter((r) => !r.applications || matched.includes(r));
      chains.push(classChain(name, key, memo.compiler.meeting(rules, matched), new Set(matched)));
    }
    return name;
  };
}

const addresses = ([first, last]: Interval, f: Family): KeyPart => ({
  kind: 'addresses',
  first: addressText(first, f),
  last: addressText(last, f),
});

/** A choice chain's rules: per family, the uplinks a flow may take now and how one is picked. */
function renderChoiceRules(
  context: RenderContext,
  allowed: readonly string[] | undefined,
  preferred: readonly string[] | undefined,
): Rule[] {
  return families.flatMap((f) => [
    ...egressChoiceRules(context, f, allowed),
    ...familyPickRules(
      f,
      chooseCandidates(
        context.healthy.filter((u) => carries(u, f)),
        allowed,
        preferred,
      ),
      context,
    ),
  ]);
}

/**
 * Before balancing: a tunnelled flow of a pod whose egress address is owned here goes to that
 * address's uplink when it is healthy (preferences do not count). A pod's flow never leaves with
 * another source address than its failover address: while another node owns the address (the
 * source node has not followed a move yet), or this node's uplink of it is down (this node gives
 * the address up), the flow is dropped and counted, and its retransmission reaches the owner. Only a
 * rule whose allowed uplinks leave the address's uplink out balances it as any other flow, with the
 * node's own SNAT address: the policy's choice.
 */
function egressChoiceRules(context: RenderContext, f: Family, allowed: readonly string[] | undefined): Rule[] {
  return context.egress
    .filter((e) => e.family === f && (!allowed || allowed.includes(e.uplink)))
    .flatMap((e) => {
      const tunnelled = [family(f), { kind: 'mark', mask: context.tunnelMask, value: context.tunnelMask } as Match];
      const healthy = context.healthy.some((u) => u.name === e.uplink);
      return [
        {
          match: [...tunnelled, { kind: 'saddr', family: f, set: egressPods(e) } as Match],
          then: healthy ? [goto(uplinkChain(e.uplink))] : drop,
        },
        { match: [...tunnelled, { kind: 'saddr', family: f, set: egressWaiting(e) } as Match], then: drop },
      ];
    });
}

/** The pods of an uplink's failover addresses of one family that are owned here (a set). */
const egressPods = (e: UplinkEgress) => `failover${e.family}_${chainPart(e.uplink)}`;
/** The pods of an uplink's failover addresses of one family that another node owns (a set). */
const egressWaiting = (e: UplinkEgress) => `failover_wait${e.family}_${chainPart(e.uplink)}`;
/** The same pods → the chain that translates to their address (a verdict map). */
const egressSnatMap = (e: UplinkEgress) => `failover_snat${e.family}_${chainPart(e.uplink)}`;
/** The chain that translates to a failover address. */
const egressSnatChain = (address: string) =>
  `snat_failover${address.includes(':') ? 6 : 4}_${address.replace(/[.:]/g, '_')}`;

/**
 * The sets, maps and SNAT chains of the failover addresses on this node's uplinks: declared for
 * every such address whether owned or not, so that a claim or a release moves elements only.
 */
function renderEgress(context: RenderContext, parts: TableParts): void {
  for (const e of context.egress) {
    const addr = e.family === 4 ? 'ipv4_addr' : 'ipv6_addr';
    parts.sets.push(
      {
        name: egressPods(e),
        type: addr,
        elements: addressElements(e.pods.map(({ pod }) => pod)),
      },
      {
        name: egressWaiting(e),
        type: addr,
        elements: addressElements(e.waiting),
      },
      {
        name: egressSnatMap(e),
        type: `${addr} : verdict`,
        map: true,
        elements: e.pods.map(({ pod, address }) => ({
          key: [{ kind: 'address', address: pod }],
          value: goto(egressSnatChain(address)),
        })),
      },
    );
    const uplink = context.uplinks.find((u) => u.name === e.uplink)!;
    for (const address of e.addresses) {
      parts.chains.push({ name: egressSnatChain(address), rules: translateRules(e.family, uplink, address) });
    }
  }
}

/**
 * The association maps (source address, protocol, source port → the chain of the application's
 * class) and in strict mode the stamp maps ((source address, stamp) → the same).
 */
function renderAssociationMaps(
  classOf: (application: Application) => string | undefined,
  associations: readonly FlowAssociation[],
  stamps: readonly StampedApplication[],
  strict: boolean,
): NamedSet[] {
  const assocElements: Record<Family, SetElement[]> = { 4: [], 6: [] };
  for (const assoc of associations) {
    const chain = classOf(assoc.application);
    if (chain) assocElements[familyOf(assoc.sourceAddress)].push(flowElement(assoc, chain));
  }
  // A stamped flow's application is known from its first packet, so it is never held.
  const stampElements: Record<Family, SetElement[]> = { 4: [], 6: [] };
  for (const stamped of stamps) {
    const chain = classOf(stamped.application) ?? 'pod_rules';
    stampElements[familyOf(stamped.address)].push({
      key: [
        { kind: 'address', address: canonicalAddress(stamped.address) },
        { kind: 'dscp', dscp: stamped.stamp },
      ],
      value: goto(chain),
    });
  }
  const sets: NamedSet[] = [];
  for (const f of families) {
    const addr = f === 4 ? 'ipv4_addr' : 'ipv6_addr';
    sets.push({
      name: `flows${f}`,
      type: `${addr} . inet_proto . inet_service : verdict`,
      map: true,
      elements: inTextOrder(assocElements[f]),
    });
    if (strict) {
      sets.push({
        name: `stamps${f}`,
        type: `${addr} . dscp : verdict`,
        map: true,
        elements: inTextOrder(stampElements[f]),
      });
    }
  }
  return sets;
}

/**
 * The kernel's count of the new flows placed on an uplink. Only a new flow enters the uplink's
 * chain, so the count is exact where conntrack's NEW events may be lost under load.
 */
export const newFlowsCounter = (uplink: string) => `new_flows_${chainPart(uplink)}`;

/** An uplink's chain (it marks the flow for the uplink) and its source NAT chains. */
function renderUplinkChains(context: RenderContext, uplink: CompiledUplink, parts: TableParts): void {
  const id = context.ids.get(uplink.name)!;
  const { mask } = context.marks;
  const then: Rule[] = [
    {
      match: [],
      then: [
        { kind: 'namedCounter', name: newFlowsCounter(uplink.name) },
        { kind: 'setMark', mask, value: markOf(context.marks, id) },
      ],
    },
  ];
  const extra = context.healthy.includes(uplink) ? context.balancer.uplinkParts : undefined;
  if (extra) {
    for (const f of families) {
      const { set, rule } = extra(id, f);
      parts.sets.push(set);
      then.push(rule);
    }
  }
  // Final: the rule chains are jumped to, and a chosen flow must not go on to later rules.
  then.push({ match: [], then: [{ kind: 'verdict', verdict: 'accept' }] });
  parts.chains.push({ name: uplinkChain(uplink.name), rules: then });
  parts.chains.push(...snatChains(uplink, context.egress, context.tunnelMask));
}

/** The base chain that classifies new flows of served pods and restores the uplink of known ones. */
function renderPrerouting(config: GatewayConfig, { mask }: MarkField, uplinks: readonly CompiledUplink[]): Chain {
  const hold = config.association?.unassociatedFlows === 'Hold';
  const strict = (config.association?.strictSources ?? []).length > 0;
  // A tunnelled flow's packets towards the uplink keep the tunnel bits too: the reverse-path
  // check of those that come from the tunnel finds the pod's route back through it.
  const tunnelMask = config.steering?.markMask ?? 0;
  const restore: Statement[] = [{ kind: 'restoreMark', mask: (mask | tunnelMask) >>> 0 }, ret];
  const rules: Rule[] = [
    // Steering: packets towards a pod of a tunnelled flow (replies, and the server's packets of
    // active FTP data, which the kernel translates to the pod) go back into the tunnel by the
    // tunnel bits; the uplink bits let the reverse-path check of the uplink (src_valid_mark)
    // find the uplink's own table.
    ...(config.steering
      ? [
          {
            match: [
              { kind: 'ctDirection', direction: 'reply' },
              { kind: 'ctStatus', status: 'dnat', negate: true },
              { kind: 'ctMarkSet', mask: tunnelMask },
            ] as Match[],
            then: restore,
          },
          {
            match: [
              { kind: 'ctDirection', direction: 'original' },
              { kind: 'ctStatus', status: 'dnat' },
              { kind: 'ctMarkSet', mask: tunnelMask },
            ] as Match[],
            then: restore,
          },
        ]
      : []),
    // Packets of flows conntrack knows are decided by their direction and translation alone, so
    // that the bulk of the traffic passes a single rule. The pods' flows keep the uplink in their
    // mark (FTP data and ICMP errors inherit their flow's). What arrives for them on an uplink
    // (replies, and the server's packets of active FTP data) gets that mark too: the strict
    // reverse-path check (src_valid_mark) then finds the server through the uplink's table, and
    // the main-table rule of the uplink's interface still routes the packet to its pod. A reply
    // that arrives elsewhere keeps no mark and goes to the pod by the main table. A flow that came
    // in through an uplink for a pod (active FTP data, which the kernel translates to the pod) is
    // the other way round: its packets from the pod are replies.
    {
      match: [
        { kind: 'ctDirection', direction: 'original' },
        { kind: 'ctStatus', status: 'dnat', negate: true },
        { kind: 'ctMarkSet', mask },
      ],
      then: restore,
    },
    ...(uplinks.length
      ? [
          {
            match: [
              { kind: 'iifnames', names: [...new Set(uplinks.map((u) => u.interface))].sort() },
              { kind: 'ctMarkSet', mask },
            ] as Match[],
            then: restore,
          },
        ]
      : []),
    {
      match: [
        { kind: 'ctDirection', direction: 'reply' },
        { kind: 'ctStatus', status: 'dnat', negate: true },
      ],
      then: [ret],
    },
    {
      match: [
        { kind: 'ctDirection', direction: 'reply' },
        { kind: 'ctMarkSet', mask },
      ],
      then: restore,
    },
    ...families.map((f) => ({ match: [family(f), ...notFromPods('sources', f)], then: [ret] })),
    { match: [{ kind: 'ctStateNew', negate: true }], then: [ret] },
    // A new flow from the tunnel: its replies must go back the way it came.
    ...(config.steering
      ? [
          {
            match: [{ kind: 'iifname', name: gatewayDevice(config.steering) } as Match],
            then: [{ kind: 'setMark', mask: tunnelMask, value: tunnelMask } as Statement],
          },
        ]
      : []),
    ...families.map((f) => ({
      match: [family(f), { kind: 'daddr', family: f, set: `bypass${f}` } as Match],
      then: [ret],
    })),
    { match: [{ kind: 'localDestination' }], then: [ret] },
    // Only there to be loaded: it turns on conntrack accounting, so that flows have packet and
    // byte counts (the flow table, the uplinks' byte metrics, flow spans).
    { match: [{ kind: 'ctAccounting' }], then: [] },
    ...families.map((f) => ({
      match: [
        family(f),
        { kind: 'l4proto', protocols: ['tcp'] } as Match,
        { kind: 'dport', ranges: [[21, 21]] } as Match,
      ],
      then: [{ kind: 'ctHelper', object: ftpHelper(f) } as Statement],
    })),
    ...families.flatMap((f) =>
      (['tcp', 'udp'] as const).map((p) => ({
        match: [family(f), { kind: 'l4proto', protocols: [p] } as Match],
        then: [{ kind: 'ctTimeout', object: timeoutName(config, p, f) } as Statement],
      })),
    ),
    ...(strict ? renderStampLookups() : []),
    ...families.map((f) => ({
      match: [family(f)],
      then: [{ kind: 'lookupFlow', family: f, map: `flows${f}` } as Statement],
    })),
    // Hold: a flow of a pod with the sidecar waits (its packets are dropped, so TCP retransmits
    // its SYN) until its association says which application it is.
    ...(hold
      ? families.flatMap((f) => fromPods('held', f, (source) => ({ match: [family(f), source], then: drop })))
      : []),
    { match: [], then: [goto('pod_rules')] },
  ];
  return { name: 'prerouting', base: { type: 'filter', hook: 'prerouting', priority: -150 }, rules };
}

/**
 * Strict mode: the share of new flows stamped from their first packet is the two counters'
 * ratio; a stamped flow goes to its application's class.
 */
function renderStampLookups(): Rule[] {
  return families.flatMap((f): Rule[] => [
    ...fromPods('strict', f, (source) => ({
      match: [family(f), source],
      then: [{ kind: 'namedCounter', name: 'strict_new_flows' }],
    })),
    ...fromPods('strict', f, (source) => ({
      match: [family(f), source, { kind: 'dscpStamped', family: f }],
      then: [
        { kind: 'namedCounter', name: 'strict_stamped_flows' },
        { kind: 'lookupStamp', family: f, map: `stamps${f}` },
      ],
    })),
  ]);
}

function strictCounters(): NftObject[] {
  return [
    { kind: 'counter', name: 'strict_new_flows', body: '' },
    { kind: 'counter', name: 'strict_stamped_flows', body: '' },
  ];
}

/** Source NAT: a packet marked for an uplink and leaving by its interface goes to its SNAT chain. */
function renderPostrouting({ uplinks, ids, marks }: RenderContext): Chain {
  return {
    name: 'postrouting',
    base: { type: 'nat', hook: 'postrouting', priority: 100 },
    rules: uplinks.map((u) => ({
      match: [
        { kind: 'mark', mask: marks.mask, value: markOf(marks, ids.get(u.name)!) },
        { kind: 'oifname', name: u.interface },
      ],
      then: [goto(snatChain(u.name))],
    })),
  };
}

/**
 * After translation, a pod's own address must never leave through an uplink: a flow that
 * escaped translation (no mark, or marked for another uplink) is dropped here and counted.
 */
function renderGuard(uplinks: readonly CompiledUplink[]): Chain {
  return {
    name: 'guard',
    base: { type: 'filter', hook: 'postrouting', priority: 300 },
    rules: [
      { match: [{ kind: 'ctStatus', status: 'snat' }], then: [ret] },
      ...uplinks.flatMap((u) =>
        families.flatMap((f) =>
          fromPods('sources', f, (source) => ({
            match: [{ kind: 'oifname', name: u.interface }, family(f), source],
            then: drop,
          })),
        ),
      ),
    ],
  };
}

/**
 * Strict mode: the stamp a pod put in its packets' DSCP field is the pod's own business and
 * must not reach the world. Cleared on every forwarded packet of a strict pod, after
 * prerouting classified it and before postrouting translates it.
 */
function renderStrictClear(): Chain {
  return {
    name: 'strict_clear',
    base: { type: 'filter', hook: 'forward', priority: -150 },
    rules: families.flatMap((f) =>
      fromPods('strict', f, (source) => ({
        match: [family(f), source, { kind: 'dscpStamped', family: f }],
        then: [{ kind: 'clearDscp', family: f }],
      })),
    ),
  };
}

/** Each uplink's routing table: its mark, next hop and the sources routed by it (probes). */
function renderRoutes(
  { uplinks, ids, marks }: RenderContext,
  interfaceAddresses: ReadonlyMap<string, readonly string[]> | undefined,
  egress: readonly EgressAddress[],
): UplinkRoute[] {
  return uplinks.map((u) => {
    // A failover address answers on the uplink it lives on (ARP, NDP, pings of it). Its rule is
    // there whether this node owns it or not (without the address here, nothing leaves from it),
    // so that a claim moves no route: the address is announced only once its routing is in place.
    const failover = egress.filter((a) => a.uplink === u.name).map((a) => a.address);
    const id = ids.get(u.name)!;
    return {
      uplink: u.name,
      id,
      mark: markOf(marks, id),
      markMask: marks.mask,
      table: routeTableBase + id,
      interface: u.interface,
      nextHop: { ...u.nextHop },
      sources: [
        ...(u.snat.addresses?.length ? u.snat.addresses : (interfaceAddresses?.get(u.interface) ?? [])),
        ...failover,
      ],
    };
  });
}

function idOf(ids: ReadonlyMap<string, number>, name: string): number {
  const id = ids.get(name);
  if (id === undefined) throw new Error(`uplink ${name} has no id`);
  return id;
}

/** How verdicts, logs and `nft list` name a policy rule. */
export const ruleName = (rule: CompiledRule) => `${rule.policy}#${rule.rule}`;

export const uplinkChain = (name: string) => `uplink_${chainPart(name)}`;
const snatChain = (name: string) => `snat_${chainPart(name)}`;

/**
 * What stands for an uplink in its chains' names: one to one, so that distinct uplinks never
 * share a chain, and short enough for nft's names (255 characters). Uplink names hold lowercase
 * letters, digits, `-` and `.`; `-` becomes `_`, which no name holds. A name with a dot or of
 * more than 200 characters is cut and followed by `_H` and a hash of the whole name: no other
 * name maps to an upper-case letter.
 */
function chainPart(name: string): string {
  const simple = name.replace(/-/g, '_');
  if (/^[a-z0-9_]{1,200}$/.test(simple)) return simple;
  const hash = createHash('sha256').update(name).digest('hex').slice(0, 16);
  return `${simple.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 200)}_H${hash}`;
}

/**
 * The uplinks a flow may take now: healthy preferred ones regardless of tier while any is, else
 * the healthy allowed ones of the lowest tier that has any. Empty when none is healthy.
 */
export function chooseCandidates(
  healthy: readonly CompiledUplink[],
  allowed?: readonly string[],
  preferred?: readonly string[],
): CompiledUplink[] {
  const usable = healthy.filter((u) => !allowed || allowed.includes(u.name));
  const preferredUp = usable.filter((u) => preferred?.includes(u.name));
  if (preferredUp.length) return preferredUp;
  const tier = Math.min(...usable.map((u) => u.tier));
  return usable.filter((u) => u.tier === tier);
}

/** Whether the uplink carries flows of this family: a next hop of it, or none at all (point to point). */
export function carries(uplink: CompiledUplink, f: Family): boolean {
  return !uplink.nextHop || Boolean(f === 4 ? uplink.nextHop.ipv4 : uplink.nextHop.ipv6);
}

function familyPickRules(f: Family, candidates: CompiledUplink[], context: RenderContext): Rule[] {
  if (!candidates.length) return [{ match: [family(f)], then: drop }];
  if (candidates.length === 1) return [{ match: [family(f)], then: [goto(uplinkChain(candidates[0]!.name))] }];
  return context.balancer.pickRules(
    f,
    candidates.map((uplink) => ({ uplink, id: context.ids.get(uplink.name)!, chain: uplinkChain(uplink.name) })),
    context.load,
  );
}

/** Source NAT to `text` (or a masquerade without one), TCP and UDP within the uplink's ports. */
function translateRules(f: Family, uplink: CompiledUplink, text?: string): Rule[] {
  const ports: [number, number] = [uplink.snat.ports.min, uplink.snat.ports.max];
  const address = text && canonicalAddress(text);
  const withPorts: Statement = address ? { kind: 'snat', family: f, address, ports } : { kind: 'masquerade', ports };
  const without: Statement = address ? { kind: 'snat', family: f, address } : { kind: 'masquerade' };
  return [
    { match: [family(f), { kind: 'l4proto', protocols: ['tcp', 'udp'] }], then: [withPorts] },
    { match: [family(f)], then: [without] },
  ];
}

/**
 * An uplink's SNAT chains. A tunnelled flow of a pod with an owned failover address on the uplink
 * is translated to that address (the map holds only those); every other flow to the uplink's own.
 */
function snatChains(uplink: CompiledUplink, egress: readonly UplinkEgress[], tunnelMask: number): Chain[] {
  const name = snatChain(uplink.name);
  const chains: Chain[] = [];
  const rules: Rule[] = egress
    .filter((e) => e.uplink === uplink.name)
    .map((e) => ({
      match: [family(e.family), { kind: 'mark', mask: tunnelMask, value: tunnelMask }],
      then: [{ kind: 'lookupSource', family: e.family, map: egressSnatMap(e) }],
    }));
  const translate = (f: Family, text?: string) => translateRules(f, uplink, text);
  for (const f of families.filter((f) => carries(uplink, f))) {
    const addresses = (uplink.snat.addresses ?? []).filter((a) => familyOf(a) === f);
    if (addresses.length <= 1) {
      rules.push(...translate(f, addresses[0]));
      continue;
    }
    // Several addresses: a source always gets the same one (paired pooling, RFC 4787).
    const slots = addresses.map((address, i) => {
      const chain = `${name}_${f}_${i}`;
      chains.push({ name: chain, rules: translate(f, address) });
      return { chain, count: 1 };
    });
    rules.push({ match: [family(f)], then: [{ kind: 'pick', by: 'source', family: f, slots }] });
  }
  return [{ name, rules }, ...chains];
}

function flowElement(assoc: FlowAssociation, chain: string): SetElement {
  return {
    key: [
      { kind: 'address', address: canonicalAddress(assoc.sourceAddress) },
      { kind: 'protocol', protocol: assoc.transport },
      { kind: 'port', port: assoc.sourcePort },
    ],
    value: goto(chain),
  };
}

/** Elements in the order of their nft text: a stable order, whatever order they came in. */
function inTextOrder(elements: SetElement[]): SetElement[] {
  return elements
    .map((element) => ({ element, text: renderElement(element) }))
    .sort((a, b) => (a.text < b.text ? -1 : a.text > b.text ? 1 : 0))
    .map(({ element }) => element);
}

function timeoutName(config: GatewayConfig, protocol: 'tcp' | 'udp', f: Family): string {
  const t = config.timeouts;
  return protocol === 'tcp'
    ? `tcp${f}_${t.tcpEstablishedSeconds}_${t.tcpTransitorySeconds}`
    : `udp${f}_${t.udpSeconds}`;
}

/**
 * Conntrack timeout policies from the config, named by their content so that a change creates a
 * new object (objects in use cannot be changed in place) and the old one is removed as an orphan.
 */
function conntrackObjects(config: GatewayConfig): NftObject[] {
  const t = config.timeouts;
  const transitory = ['syn_sent', 'syn_recv', 'fin_wait', 'close_wait', 'last_ack', 'time_wait', 'close']
    .map((state) => `${state}: ${t.tcpTransitorySeconds}`)
    .join(', ');
  const objects: NftObject[] = [];
  for (const f of families) {
    const l3 = f === 4 ? 'ip' : 'ip6';
    objects.push(
      { kind: 'ct helper', name: ftpHelper(f), body: `type "ftp" protocol tcp; l3proto ${l3};` },
      {
        kind: 'ct timeout',
        name: timeoutName(config, 'tcp', f),
        body: `protocol tcp; l3proto ${l3}; policy = { established: ${t.tcpEstablishedSeconds}, ${transitory} };`,
      },
      {
        kind: 'ct timeout',
        name: timeoutName(config, 'udp', f),
        body: `protocol udp; l3proto ${l3}; policy = { unreplied: ${t.udpSeconds}, replied: ${t.udpSeconds} };`,
      },
    );
  }
  return objects;
}
