// The import rules between naat's folders, checked on the import statements of every source file
// that is not a test (README.md, Architecture, says why):
// - a component (operator/, dataplane/, sidecar/) never imports another component;
// - a client (cli/) imports the shared folders and the components it names, each through its
//   entry point, and nothing imports a client;
// - the shared folders never import a component, and among themselves only downwards:
//   contracts/ may import common/, crds/ and proto/; crds/ and proto/ only common/; common/ none;
// - an import into another folder names one of its entry points, an index.ts (the folder's own, or
//   that of a subfolder with an entry point of its own, such as common/kube/);
// - no file imports itself through others (no import cycle, type-only imports included).
import { readdir, readFile } from 'node:fs/promises';
import { basename, join, posix } from 'node:path';
import ts from 'typescript';

const components: readonly string[] = ['operator', 'dataplane', 'sidecar'];
/** The shared folders, each with the shared folders it may import. */
const shared: Readonly<Record<string, readonly string[]>> = {
  common: [],
  contracts: ['common', 'crds', 'proto'],
  crds: ['common'],
  proto: ['common'],
};
/** The clients of the components, each with the components it may import. */
const clients: Readonly<Record<string, readonly string[]>> = { cli: ['dataplane'] };
const sourceFolders = [...components, ...Object.keys(shared), ...Object.keys(clients)];

/** Each file's imports of naat's own files, as written and resolved to a path from the root. */
type ImportGraph = Map<string, { specifier: string; target: string }[]>;

/** The graph of `files` (path from the root → text); static, type-only and dynamic imports alike. */
function importGraph(files: ReadonlyMap<string, string>): ImportGraph {
  const graph: ImportGraph = new Map();
  for (const [file, text] of files) {
    const imports = ts
      .preProcessFile(text, true, true)
      .importedFiles.map((imported) => imported.fileName)
      .filter((specifier) => specifier.startsWith('.'))
      .map((specifier) => ({ specifier, target: posix.join(posix.dirname(file), specifier) }));
    graph.set(file, imports);
  }
  return graph;
}

const folderOf = (path: string) => path.split('/')[0]!;

/** What breaks the rules, one line each, naming the file and the import. */
function violations(graph: ImportGraph): string[] {
  const found: string[] = [];
  for (const [file, imports] of graph) {
    const from = folderOf(file);
    for (const { specifier, target } of imports) {
      const to = folderOf(target);
      const report = (rule: string) => found.push(`${file} imports '${specifier}': ${rule}`);
      if (from === to) continue;
      const client = clients[from];
      if (!sourceFolders.includes(to)) report(`${to}/ is not a source folder`);
      else if (clients[to]) report(`${to}/ is a client`);
      else if (client && components.includes(to) && !client.includes(to)) report(`the client ${from}/ imports ${to}/`);
      else if (!client && components.includes(from) && components.includes(to))
        report('a component imports another component');
      else if (!client && !components.includes(from) && components.includes(to))
        report(`${from}/ is shared and imports a component`);
      else if (!client && !components.includes(from) && !shared[from]!.includes(to))
        report(`${from}/ may not import ${to}/`);
      else if (basename(target) !== 'index.ts') report(`past the entry point of ${to}/`);
    }
  }
  return [...found, ...cycles(graph).map((cycle) => `import cycle: ${cycle.join(' -> ')}`)];
}

/** The import cycles, one per strongly connected set of files (Tarjan), each from its first file back to it. */
function cycles(graph: ImportGraph): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (file: string) => {
    index.set(file, index.size);
    low.set(file, index.get(file)!);
    stack.push(file);
    onStack.add(file);
    for (const { target } of graph.get(file) ?? []) {
      if (!graph.has(target)) continue;
      if (!index.has(target)) {
        visit(target);
        low.set(file, Math.min(low.get(file)!, low.get(target)!));
      } else if (onStack.has(target)) low.set(file, Math.min(low.get(file)!, index.get(target)!));
    }
    if (low.get(file) !== index.get(file)) return;
    const members = new Set<string>();
    let member: string;
    do {
      member = stack.pop()!;
      onStack.delete(member);
      members.add(member);
    } while (member !== file);
    const selfImport = graph.get(file)!.some(({ target }) => target === file);
    if (members.size > 1 || selfImport) found.push(cyclePath(graph, file, members));
  };
  for (const file of graph.keys()) if (!index.has(file)) visit(file);
  return found;
}

/** One way round a strongly connected set, from `start` back to it (breadth first: the shortest). */
function cyclePath(graph: ImportGraph, start: string, members: ReadonlySet<string>): string[] {
  const previous = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const file = queue.shift()!;
    for (const { target } of graph.get(file)!) {
      if (!members.has(target)) continue;
      if (target === start) {
        const path = [file];
        while (path[0] !== start) path.unshift(previous.get(path[0]!)!);
        return [...path, start];
      }
      if (!previous.has(target)) {
        previous.set(target, file);
        queue.push(target);
      }
    }
  }
  return [start, start];
}

async function sourceFiles(root: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const folder of sourceFolders) {
    for (const entry of await readdir(join(root, folder), { recursive: true })) {
      const path = posix.join(folder, entry.split('\\').join('/'));
      if (path.endsWith('.ts') && !path.endsWith('.test.ts')) files.set(path, await readFile(join(root, path), 'utf8'));
    }
  }
  return files;
}

test('the source tree keeps the import rules', async () => {
  const files = await sourceFiles(join(import.meta.dirname, '..'));
  expect(files.has('dataplane/main.ts')).toBe(true);
  expect(violations(importGraph(files))).toEqual([]);
});

test('each rule names the file and the import that break it', () => {
  const files = new Map([
    ['operator/main.ts', "import { Agent } from '../dataplane/index.ts';\nimport { log } from '../common/index.ts';"],
    ['sidecar/main.ts', "import { jsonLogger } from '../common/log.ts';"],
    ['common/index.ts', "export { tokenAudience } from '../contracts/index.ts';"],
    ['contracts/index.ts', "import type { Report } from '../dataplane/index.ts';"],
    ['dataplane/index.ts', "export { Agent } from './agent.ts';"],
    ['dataplane/agent.ts', "import {\n  AgentMetrics,\n} from './metrics.ts';"],
    ['dataplane/metrics.ts', "import type { AgentReport } from './agent.ts';"],
    ['dataplane/main.ts', "const { pooledKubeConfig } = await import('../test/cluster/cluster.ts');"],
    [
      'cli/main.ts',
      "import { render } from '../dataplane/render.ts';\nimport { desired } from '../operator/index.ts';",
    ],
    ['dataplane/agent-report.ts', "import type { View } from '../cli/output.ts';"],
  ]);
  expect(violations(importGraph(files))).toEqual([
    "operator/main.ts imports '../dataplane/index.ts': a component imports another component",
    "sidecar/main.ts imports '../common/log.ts': past the entry point of common/",
    "common/index.ts imports '../contracts/index.ts': common/ may not import contracts/",
    "contracts/index.ts imports '../dataplane/index.ts': contracts/ is shared and imports a component",
    "dataplane/main.ts imports '../test/cluster/cluster.ts': test/ is not a source folder",
    "cli/main.ts imports '../dataplane/render.ts': past the entry point of dataplane/",
    "cli/main.ts imports '../operator/index.ts': the client cli/ imports operator/",
    "dataplane/agent-report.ts imports '../cli/output.ts': cli/ is a client",
    'import cycle: dataplane/agent.ts -> dataplane/metrics.ts -> dataplane/agent.ts',
  ]);
});

test('components reach the shared folders through their entry points', () => {
  const files = new Map([
    [
      'dataplane/main.ts',
      [
        "import { jsonLogger } from '../common/index.ts';",
        "import type { GatewayConfig } from '../contracts/gateway/index.ts';",
        "const { pooledKubeConfig } = await import('../common/kube/index.ts');",
        "import { Agent } from './agent.ts';",
        "import { parse } from 'yaml';",
      ].join('\n'),
    ],
    ['dataplane/agent.ts', "import type { AgentReport } from './agent-report.ts';"],
    ['contracts/gateway/index.ts', "import { Application } from '../../crds/index.ts';"],
    [
      'cli/explain.ts',
      "import { explainFlow } from '../dataplane/index.ts';\nimport { log } from '../common/index.ts';",
    ],
  ]);
  expect(violations(importGraph(files))).toEqual([]);
});
