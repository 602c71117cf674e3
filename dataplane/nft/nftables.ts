// The kernel's nftables behind a small interface: what naat's table holds now, and atomic
// transactions against it. The real implementation drives `nft`; the fake keeps the table in
// memory with the kernel's referential checks, for unit tests of everything above it.
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec, type Command } from '../exec.ts';
import { NftSession, sessionTakes } from './session.ts';
import {
  baseDeclaration,
  renderElement,
  renderKey,
  renderRule,
  renderTable,
  ruleReferences,
  setDeclaration,
  tableFamily,
  tableName,
  type Chain,
  type NamedSet,
  type NftObject,
  type References,
  type Rule,
  type SetElement,
  type Table,
} from './model.ts';

export type Operation =
  | { op: 'add'; what: 'table' }
  | { op: 'delete'; what: 'table' }
  | { op: 'add'; what: 'chain'; chain: Omit<Chain, 'rules'> }
  | { op: 'flush' | 'delete'; what: 'chain'; name: string }
  | { op: 'add'; what: 'rule'; chain: string; rule: Rule }
  | { op: 'add'; what: 'set'; set: Omit<NamedSet, 'elements'> }
  | { op: 'flush' | 'delete'; what: 'set'; name: string; map?: boolean }
  | { op: 'add' | 'delete'; what: 'element'; set: string; elements: SetElement[] }
  | { op: 'add'; what: 'object'; object: NftObject }
  | { op: 'delete'; what: 'object'; kind: NftObject['kind']; name: string };

/** Names of what naat's table holds, without set elements (listing those is slow). */
export interface TableNames {
  chains: string[];
  sets: string[];
  maps: string[];
  objects: Array<{ kind: NftObject['kind']; name: string }>;
}

export interface Nftables {
  /** undefined when naat has no table. */
  list(): Promise<TableNames | undefined>;
  /** Applies every operation or none. */
  run(operations: Operation[]): Promise<void>;
  /** The packets each named counter of the table counted, by name; empty when naat has no table. */
  counters(): Promise<Map<string, number>>;
  /** Ends what the implementation keeps running; a later call starts it again. */
  close(): Promise<void>;
}

/** What a table made exactly as `table` holds, as `list` would name it. */
export function namesOf(table: Table): TableNames {
  return {
    chains: table.chains.map((c) => c.name),
    sets: table.sets.filter((s) => !s.map).map((s) => s.name),
    maps: table.sets.filter((s) => s.map).map((s) => s.name),
    objects: table.objects.map(({ kind, name }) => ({ kind, name })),
  };
}

export const operationText = (o: Operation): string => operationIn(o, tableName);

/** An operation's nft text against the table `table` of naat's family. */
export function operationIn(o: Operation, table: string): string {
  const ref = `${tableFamily} ${table}`;
  switch (o.what) {
    case 'table':
      return `${o.op} table ${ref}`;
    case 'chain':
      if (o.op === 'add')
        return `add chain ${ref} ${o.chain.name}${o.chain.base ? ` { ${baseDeclaration(o.chain.base)} }` : ''}`;
      return `${o.op} chain ${ref} ${o.name}`;
    case 'rule':
      return `add rule ${ref} ${o.chain} ${renderRule(o.rule)}`;
    case 'set':
      if (o.op === 'add')
        return `add ${o.set.map ? 'map' : 'set'} ${ref} ${o.set.name} { ${setDeclaration({ ...o.set, elements: [] })} }`;
      return `${o.op} ${o.map ? 'map' : 'set'} ${ref} ${o.name}`;
    case 'element':
      return `${o.op} element ${ref} ${o.set} { ${o.elements.map(renderElement).join(', ')} }`;
    case 'object':
      if (o.op === 'add') return `add ${o.object.kind} ${ref} ${o.object.name} { ${o.object.body} }`;
      return `delete ${o.kind} ${ref} ${o.name}`;
  }
}

const elementBatch = 1000;

/** Elements in batches, so that no single command line grows without bound. */
export function elementOperations(op: 'add' | 'delete', set: string, elements: readonly SetElement[]): Operation[] {
  const operations: Operation[] = [];
  for (let i = 0; i < elements.length; i += elementBatch) {
    operations.push({ op, what: 'element', set, elements: elements.slice(i, i + elementBatch) });
  }
  return operations;
}

/**
 * One transaction that makes naat's table exactly `desired`, whatever it holds now: every chain
 * is emptied and refilled, static sets are made afresh (deleted and declared again: refilling an
 * interval set nft has to read first took seconds), dynamic sets keep their elements, and what
 * the table holds beyond `desired` is removed last, once nothing refers to it. The whole is
 * applied atomically, so packets see either the old ruleset or the new one.
 */
export function planSync(desired: Table, existing: TableNames | undefined): Operation[] {
  const ops: Operation[] = [{ op: 'add', what: 'table' }];
  const has = {
    objects: new Set(existing?.objects.map((o) => `${o.kind}/${o.name}`)),
    sets: new Set(existing?.sets),
    maps: new Set(existing?.maps),
    chains: new Set(existing?.chains),
  };
  for (const object of desired.objects) {
    if (!has.objects.has(`${object.kind}/${object.name}`)) ops.push({ op: 'add', what: 'object', object });
  }
  // Emptied first: nothing may look a set up when it is deleted.
  for (const name of has.chains) ops.push({ op: 'flush', what: 'chain', name });
  for (const set of desired.sets) {
    const map = has.maps.has(set.name);
    if (!set.dynamicTimeoutSeconds && (map || has.sets.has(set.name))) {
      ops.push({ op: 'delete', what: 'set', name: set.name, ...(map ? { map } : {}) });
    }
    ops.push({ op: 'add', what: 'set', set });
  }
  for (const chain of desired.chains) ops.push({ op: 'add', what: 'chain', chain });
  // Elements after the chains: a verdict map's elements name chains, which must exist by then.
  for (const set of desired.sets) {
    if (!set.dynamicTimeoutSeconds) ops.push(...elementOperations('add', set.name, set.elements));
  }
  for (const chain of desired.chains) {
    for (const rule of chain.rules) ops.push({ op: 'add', what: 'rule', chain: chain.name, rule });
  }
  const wanted = {
    chains: new Set(desired.chains.map((c) => c.name)),
    sets: new Set(desired.sets.map((s) => s.name)),
    objects: new Set(desired.objects.map((o) => `${o.kind}/${o.name}`)),
  };
  // Orphans go in the order that leaves nothing referring to what is deleted: with the chains
  // empty, sets and maps go (a verdict map's elements name chains, such as the stamps maps when
  // strict mode is turned off), then the chains.
  const orphanChains = [...has.chains].filter((name) => !wanted.chains.has(name));
  for (const name of existing?.sets ?? []) if (!wanted.sets.has(name)) ops.push({ op: 'delete', what: 'set', name });
  for (const name of existing?.maps ?? []) {
    if (!wanted.sets.has(name)) ops.push({ op: 'delete', what: 'set', name, map: true });
  }
  for (const name of orphanChains) ops.push({ op: 'delete', what: 'chain', name });
  for (const object of existing?.objects ?? []) {
    if (!wanted.objects.has(`${object.kind}/${object.name}`)) ops.push({ op: 'delete', what: 'object', ...object });
  }
  return ops;
}

export class NftError extends Error {}

/**
 * Drives the `nft` binary. A transaction that fits on a line goes through one long-lived nft (a
 * process start and nft's setup cost more than most incremental changes); a longer one, such as a
 * full sync, through an nft of its own reading a script, which takes long input faster.
 */
export class ExecNftables implements Nftables {
  readonly #nft: Command;
  readonly #scriptDir: string | undefined;
  readonly #table: string;
  readonly #session: NftSession;
  /**
   * With `scriptDir`, each transaction is written to a file there first and nft reads that file:
   * nft commits whatever it has parsed when its input ends, so an agent killed while it pipes a
   * large transaction would leave a prefix of it (some chains flushed and half refilled) in the
   * kernel. A file is complete before nft starts; a kill before then applies nothing.
   */
  constructor(nft: Command = ['nft'], scriptDir?: string, table = tableName) {
    this.#nft = nft;
    this.#scriptDir = scriptDir;
    this.#table = table;
    this.#session = new NftSession(nft);
  }

  /**
   * The names in the table, from the family's ruleset: `list table` took 45 to 70 ms against
   * 17 to 23 ms for the same items at 10,000 pods and 1,000 rules (nft 1.0.6).
   */
  async list(): Promise<TableNames | undefined> {
    const { code, stdout, stderr } = await exec(this.#nft, ['-j', '-t', 'list', 'ruleset', tableFamily]);
    if (code !== 0) throw new NftError(`nft list ruleset failed: ${stderr.trim()}`);
    const all = (JSON.parse(stdout) as { nftables: Array<Record<string, { name: string; table?: string }>> }).nftables;
    if (!all.some((item) => item.table?.name === this.#table)) return undefined;
    const items = all.filter((item) => Object.values(item)[0]?.table === this.#table);
    const names: TableNames = { chains: [], sets: [], maps: [], objects: [] };
    for (const item of items) {
      if (item.chain) names.chains.push(item.chain.name);
      if (item.set) names.sets.push(item.set.name);
      if (item.map) names.maps.push(item.map.name);
      if (item['ct timeout']) names.objects.push({ kind: 'ct timeout', name: item['ct timeout'].name });
      if (item['ct helper']) names.objects.push({ kind: 'ct helper', name: item['ct helper'].name });
      if (item.counter) names.objects.push({ kind: 'counter', name: item.counter.name });
    }
    return names;
  }

  async counters(): Promise<Map<string, number>> {
    const { code, stdout, stderr } = await exec(this.#nft, [
      '-j',
      'list',
      'counters',
      'table',
      tableFamily,
      this.#table,
    ]);
    if (code !== 0) {
      if (/No such file or directory/.test(stderr)) return new Map();
      throw new NftError(`nft list counters failed: ${stderr.trim()}`);
    }
    const items = (JSON.parse(stdout) as { nftables: Array<{ counter?: { name: string; packets: number } }> }).nftables;
    return new Map(items.flatMap((item) => (item.counter ? [[item.counter.name, item.counter.packets] as const] : [])));
  }

  async run(operations: Operation[]): Promise<void> {
    if (!operations.length) return;
    const commands = operations.map((o) => operationIn(o, this.#table));
    const { code, stderr } =
      this.#scriptDir && !sessionTakes(commands)
        ? await this.#runFile(this.#scriptDir, `${commands.join('\n')}\n`)
        : await this.#session.run(commands);
    if (code !== 0) throw new NftError(`nft transaction failed: ${stderr.trim()}`);
  }

  close(): Promise<void> {
    return this.#session.close();
  }

  // Renamed into place, so that an nft left running by a killed agent keeps reading its own file.
  async #runFile(dir: string, script: string) {
    await mkdir(dir, { recursive: true });
    const file = join(dir, 'transaction.nft');
    await writeFile(`${file}.tmp`, script);
    await rename(`${file}.tmp`, file);
    return exec(this.#nft, ['-f', file]);
  }
}

/**
 * naat's table in memory. It refuses what the kernel refuses for naat's own use (a rule in a
 * missing chain, a jump to a missing chain or a lookup in a missing set, deleting what a rule
 * still uses, a duplicate element) and applies a transaction all or nothing.
 */
export class FakeNftables implements Nftables {
  #table: { chains: Map<string, Chain>; sets: Map<string, NamedSet>; objects: Map<string, NftObject> } | undefined;
  /** Packets of the named counters, as a test counts them in place of the kernel. */
  readonly #packets = new Map<string, number>();
  transactions = 0;

  async close(): Promise<void> {}

  /** Counts `packets` in the named counter, as a packet through a rule that names it would. */
  count(name: string, packets = 1): void {
    if (!this.#table?.objects.has(`counter/${name}`)) throw new NftError(`counter ${name}: No such file or directory`);
    this.#packets.set(name, (this.#packets.get(name) ?? 0) + packets);
  }

  async counters(): Promise<Map<string, number>> {
    const counters = [...(this.#table?.objects.values() ?? [])].filter((o) => o.kind === 'counter');
    return new Map(counters.map((o) => [o.name, this.#packets.get(o.name) ?? 0]));
  }

  async list(): Promise<TableNames | undefined> {
    if (!this.#table) return undefined;
    return {
      chains: [...this.#table.chains.keys()],
      sets: [...this.#table.sets.values()].filter((s) => !s.map).map((s) => s.name),
      maps: [...this.#table.sets.values()].filter((s) => s.map).map((s) => s.name),
      objects: [...this.#table.objects.values()].map(({ kind, name }) => ({ kind, name })),
    };
  }

  async run(operations: Operation[]): Promise<void> {
    const copy = this.#table && {
      chains: new Map([...this.#table.chains].map(([k, c]) => [k, { ...c, rules: [...c.rules] }])),
      sets: new Map([...this.#table.sets].map(([k, s]) => [k, { ...s, elements: [...s.elements] }])),
      objects: new Map(this.#table.objects),
    };
    let table = copy;
    for (const o of operations) table = apply(table, o);
    if (table) checkReferences(table);
    this.#table = table;
    for (const name of this.#packets.keys()) if (!table?.objects.has(`counter/${name}`)) this.#packets.delete(name);
    this.transactions++;
  }

  /** The table in `nft list` order of declaration, for golden comparisons. */
  dump(): string {
    if (!this.#table) return '';
    return renderTable({
      chains: [...this.#table.chains.values()],
      sets: [...this.#table.sets.values()],
      objects: [...this.#table.objects.values()],
    });
  }

  table(): Table | undefined {
    if (!this.#table) return undefined;
    return {
      chains: [...this.#table.chains.values()],
      sets: [...this.#table.sets.values()],
      objects: [...this.#table.objects.values()],
    };
  }
}

type FakeTable = NonNullable<ReturnType<typeof emptyTable>>;
function emptyTable() {
  return { chains: new Map<string, Chain>(), sets: new Map<string, NamedSet>(), objects: new Map<string, NftObject>() };
}

function apply(table: FakeTable | undefined, o: Operation): FakeTable | undefined {
  if (o.what === 'table') return o.op === 'add' ? (table ?? emptyTable()) : undefined;
  if (!table) throw new NftError(`${operationText(o)}: No such file or directory (no table)`);
  const fail = (why: string) => new NftError(`${operationText(o)}: ${why}`);
  switch (o.what) {
    case 'chain': {
      if (o.op === 'add') {
        const old = table.chains.get(o.chain.name);
        if (old && JSON.stringify(old.base) !== JSON.stringify(o.chain.base)) throw fail('Device or resource busy');
        if (!old)
          table.chains.set(o.chain.name, {
            name: o.chain.name,
            ...(o.chain.base ? { base: o.chain.base } : {}),
            rules: [],
          });
        return table;
      }
      const chain = table.chains.get(o.name);
      if (!chain) throw fail('No such file or directory');
      if (o.op === 'flush') chain.rules = [];
      else if (chain.rules.length || chainsUsed(table).has(o.name)) throw fail('Device or resource busy');
      else table.chains.delete(o.name);
      return table;
    }
    case 'rule': {
      const chain = table.chains.get(o.chain);
      if (!chain) throw fail('No such file or directory');
      chain.rules.push(o.rule);
      return table;
    }
    case 'set': {
      if (o.op === 'add') {
        const old = table.sets.get(o.set.name);
        if (old && old.type !== o.set.type) throw fail('File exists');
        if (!old) table.sets.set(o.set.name, { ...o.set, elements: [] });
        return table;
      }
      const set = table.sets.get(o.name);
      // The kernel keeps sets and maps apart: `flush set` does not find a map.
      if (!set || Boolean(set.map) !== Boolean(o.map)) throw fail('No such file or directory');
      if (o.op === 'flush') set.elements = [];
      else if (rulesUse(table, (refs) => refs.sets.includes(o.name))) throw fail('Device or resource busy');
      else table.sets.delete(o.name);
      return table;
    }
    case 'element': {
      const set = table.sets.get(o.set);
      if (!set) throw fail('No such file or directory');
      const present = new Map(set.elements.map((e) => [renderKey(e.key), e]));
      for (const element of o.elements) {
        // Adding an element that is there is a no-op; the same key with other data is refused.
        const old = present.get(renderKey(element.key));
        if (o.op === 'add' && old && renderElement(old) !== renderElement(element)) throw fail('File exists');
        if (o.op === 'delete' && !old) throw fail('No such file or directory');
        const target = element.value?.chain;
        if (o.op === 'add' && target !== undefined && !table.chains.has(target))
          throw fail(`No such file or directory (chain ${target})`);
      }
      const gone = new Set(o.elements.map((e) => renderKey(e.key)));
      set.elements =
        o.op === 'add'
          ? [...set.elements, ...o.elements.filter((e) => !present.has(renderKey(e.key)))]
          : set.elements.filter((e) => !gone.has(renderKey(e.key)));
      return table;
    }
    case 'object': {
      if (o.op === 'add') {
        const key = `${o.object.kind}/${o.object.name}`;
        const old = table.objects.get(key);
        if (old && old.body !== o.object.body) throw fail('File exists');
        table.objects.set(key, o.object);
        return table;
      }
      const key = `${o.kind}/${o.name}`;
      if (!table.objects.has(key)) throw fail('No such file or directory');
      if (rulesUse(table, (refs) => refs.objects.some((u) => u.kind === o.kind && u.name === o.name)))
        throw fail('Device or resource busy');
      table.objects.delete(key);
      return table;
    }
  }
}

function rulesUse(table: FakeTable, test: (refs: References) => boolean): boolean {
  for (const chain of table.chains.values()) if (chain.rules.some((r) => test(ruleReferences(r)))) return true;
  return false;
}

/** The chains that rules and verdict maps' elements continue in. */
function chainsUsed(table: FakeTable): Set<string> {
  const used = new Set<string>();
  for (const chain of table.chains.values()) {
    for (const rule of chain.rules) for (const name of ruleReferences(rule).chains) used.add(name);
  }
  for (const set of table.sets.values()) for (const e of set.elements) if (e.value) used.add(e.value.chain);
  return used;
}

/** Every chain, set and object a rule or verdict map names must exist when the transaction ends. */
function checkReferences(table: FakeTable): void {
  const objects = new Set([...table.objects.values()].map((o) => `${o.kind}/${o.name}`));
  for (const chain of table.chains.values()) {
    for (const rule of chain.rules) {
      const refs = ruleReferences(rule);
      for (const name of refs.chains) {
        if (!table.chains.has(name)) throw new NftError(`missing chain ${name} (from ${chain.name})`);
      }
      for (const name of refs.sets) {
        if (!table.sets.has(name)) throw new NftError(`rule in ${chain.name} uses missing set ${name}`);
      }
      for (const { kind, name } of refs.objects) {
        if (!objects.has(`${kind}/${name}`)) throw new NftError(`rule in ${chain.name} uses missing ${kind} ${name}`);
      }
    }
  }
  for (const set of table.sets.values()) {
    for (const { value } of set.elements) {
      if (value && !table.chains.has(value.chain)) {
        throw new NftError(`missing chain ${value.chain} (from set ${set.name})`);
      }
    }
  }
}
