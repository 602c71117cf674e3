// Properties of the config parser and the renderer over random configs: a config is accepted or
// refused with the broken field named, and an accepted config renders to a table in which every
// reference (sets, maps, chains, objects, verdict-map elements) resolves and every uplink has
// its chains. That the kernel takes the rendered table is checked, as root, by
// test/integration/render-nft.test.ts.
import fc from 'fast-check';
import { maybeBrokenConfig, renderCases } from '../test/arbitraries.ts';
import { ConfigError, markOf, parseGatewayConfig } from '../contracts/gateway/index.ts';
import { renderElement, type Table } from './nft/model.ts';
import { localUplinks, render, uplinkChain, uplinkMarks } from './render.ts';

/** nft's limit on the names of chains, sets and objects (NFT_NAME_MAXLEN less the final NUL). */
const nftNameMax = 255;

/** Every reference of the table that does not resolve, as text; empty when all do. */
function danglingReferences(table: Table): string[] {
  const problems: string[] = [];
  const chains = new Set(table.chains.map((c) => c.name));
  const sets = new Map(table.sets.map((s) => [s.name, s]));
  const objects = new Set(table.objects.map((o) => `${o.kind}/${o.name}`));
  const unique = (what: string, names: string[]) => {
    const seen = new Set<string>();
    for (const name of names) {
      if (seen.has(name)) problems.push(`${what} ${name} is declared twice`);
      if (name.length > nftNameMax) problems.push(`${what} ${name.slice(0, 20)}… is longer than ${nftNameMax}`);
      seen.add(name);
    }
  };
  unique(
    'chain',
    table.chains.map((c) => c.name),
  );
  unique(
    'set',
    table.sets.map((s) => s.name),
  );
  unique(
    'object',
    table.objects.map((o) => `${o.kind}/${o.name}`),
  );
  const chain = (where: string, name: string) => {
    if (!chains.has(name)) problems.push(`${where}: chain ${name} is missing`);
  };
  const set = (where: string, name: string, map: boolean, type?: string) => {
    const found = sets.get(name);
    if (!found) problems.push(`${where}: ${map ? 'map' : 'set'} ${name} is missing`);
    else if (Boolean(found.map) !== map) problems.push(`${where}: ${name} is not a ${map ? 'map' : 'set'}`);
    else if (type && !found.type.startsWith(type)) problems.push(`${where}: ${name} holds ${found.type}, not ${type}`);
  };
  const addr = (family: 4 | 6) => (family === 4 ? 'ipv4_addr' : 'ipv6_addr');
  for (const c of table.chains) {
    c.rules.forEach((rule, i) => {
      const where = `${c.name}[${i}]`;
      for (const m of rule.match) {
        if ((m.kind === 'saddr' || m.kind === 'daddr') && m.set) set(where, m.set, false, addr(m.family));
        if ((m.kind === 'saddr' || m.kind === 'daddr') && !m.set && !m.prefixes?.length)
          problems.push(`${where}: ${m.kind} matches nothing`);
      }
      for (const s of rule.then) {
        switch (s.kind) {
          case 'goto':
          case 'jump':
            chain(where, s.chain);
            break;
          case 'pick':
            if (!s.slots.length) problems.push(`${where}: pick has no slots`);
            for (const slot of s.slots) chain(where, slot.chain);
            break;
          case 'lookupFlow':
          case 'lookupStamp':
            set(where, s.map, true, addr(s.family));
            break;
          case 'updateSet':
            set(where, s.set, false, addr(s.family));
            if (!sets.get(s.set)?.dynamicTimeoutSeconds) problems.push(`${where}: ${s.set} is not dynamic`);
            break;
          case 'ctHelper':
            if (!objects.has(`ct helper/${s.object}`)) problems.push(`${where}: ct helper ${s.object} is missing`);
            break;
          case 'ctTimeout':
            if (!objects.has(`ct timeout/${s.object}`)) problems.push(`${where}: ct timeout ${s.object} is missing`);
            break;
          case 'namedCounter':
            if (!objects.has(`counter/${s.name}`)) problems.push(`${where}: counter ${s.name} is missing`);
            break;
        }
      }
    });
  }
  for (const s of table.sets.filter((s) => s.map && s.type.endsWith(': verdict'))) {
    for (const element of s.elements) {
      if (!element.value) problems.push(`map ${s.name}: element ${renderElement(element)} has no chain`);
      else chain(`map ${s.name}`, element.value.chain);
    }
  }
  return problems;
}

describe('parseGatewayConfig, for any config', () => {
  it('accepts every config the API allows and refuses a broken one naming the broken field', () => {
    fc.assert(
      fc.property(maybeBrokenConfig, ([json, breakage]) => {
        if (!breakage) {
          expect(() => parseGatewayConfig(json)).not.toThrow();
          return;
        }
        let error: unknown;
        try {
          parseGatewayConfig(json);
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(ConfigError);
        const problems = (error as ConfigError).problems;
        // Each problem starts with the field it is about; the breakage's own field is among them.
        for (const problem of problems) expect(problem).toMatch(/^(\/[\w/]*|[a-z][\w.[\]]*): \S/);
        expect(problems.some((p) => p.includes(breakage.field))).toBe(true);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses anything that is not a config object with a ConfigError, never another error', () => {
    fc.assert(
      fc.property(fc.anything(), (value) => {
        expect(() => parseGatewayConfig(value)).toThrow(ConfigError);
      }),
      { numRuns: 200 },
    );
  });
});

describe('render, for any accepted config', () => {
  it('references only sets, maps, chains and objects the table declares, each declared once', () => {
    fc.assert(
      fc.property(renderCases, (input) => {
        expect(danglingReferences(render(input).table)).toEqual([]);
      }),
      { numRuns: 300 },
    );
  });

  it('gives every local uplink its own chain, which marks flows with its id, and a route', () => {
    fc.assert(
      fc.property(renderCases, (input) => {
        const { table, routes } = render(input);
        const uplinks = localUplinks(input.config, input.node);
        const names = uplinks.map((u) => uplinkChain(u.name));
        expect(new Set(names).size).toBe(uplinks.length);
        for (const u of uplinks) {
          const chain = table.chains.find((c) => c.name === uplinkChain(u.name));
          expect(chain?.rules[0]?.then).toContainEqual({
            kind: 'setMark',
            mask: uplinkMarks(input.config).mask,
            value: markOf(uplinkMarks(input.config), input.ids.get(u.name)!),
          });
        }
        expect(routes.map((r) => r.uplink).sort()).toEqual(uplinks.map((u) => u.name).sort());
        // Uplinks of other nodes leave no chain behind.
        for (const u of input.config.uplinks.filter((u) => !uplinks.includes(u))) {
          if (!names.includes(uplinkChain(u.name))) {
            expect(table.chains.map((c) => c.name)).not.toContain(uplinkChain(u.name));
          }
        }
      }),
      { numRuns: 200 },
    );
  });

  it('is deterministic: the same input renders the same table', () => {
    fc.assert(
      fc.property(renderCases, (input) => {
        expect(render(input)).toEqual(render(structuredClone(input)));
      }),
      { numRuns: 100 },
    );
  });
});
