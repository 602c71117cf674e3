// Loads replicated flows into this node's conntrack table (flow-replica.ts tells why each entry
// is written as it is): one `conntrack -R` process for all of them. That process stops at the
// first entry already in the table (by its original tuple or its translated reply tuple), so when
// it fails the table is listed and what it holds is left out of the next try.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultMarks, markField } from '../../contracts/gateway/index.ts';
import { ConntrackParser } from '../conntrack.ts';
import { exec, type Command } from '../exec.ts';
import { injectionCommands, type ReplicaFlow } from './flow-replica.ts';

export interface InjectResult {
  /**
   * The entries that went in. When a load stopped at an entry already there, the flows whose entry
   * the table then holds with the same translation count as in (whichever node made it).
   */
  injected: number;
  /** Flows left out because the table held another entry for them (another translation). */
  clashing: number;
  /** `conntrack -R` runs it took. */
  loads: number;
  milliseconds: number;
}

const attempts = 3;

export async function injectFlows(
  flows: readonly ReplicaFlow[],
  conntrack: Command = ['conntrack'],
  started = performance.now(),
): Promise<InjectResult> {
  const elapsed = () => Math.round((performance.now() - started) * 10) / 10;
  if (!flows.length) return { injected: 0, clashing: 0, loads: 0, milliseconds: elapsed() };
  const dir = await mkdtemp(join(tmpdir(), 'naat-flows-'));
  try {
    let pending = flows;
    let failure = '';
    for (let load = 1; load <= attempts; load++) {
      const file = join(dir, `load-${load}`);
      await writeFile(file, injectionCommands(pending), { mode: 0o600 });
      const { code, stderr } = await exec(conntrack, ['-R', file]);
      if (code === 0 && load === 1) return { injected: flows.length, clashing: 0, loads: 1, milliseconds: elapsed() };
      const table = await tableOf(conntrack, flows);
      const held = flows.filter((f) => table.translated.has(translatedKey(f)));
      const clashing = flows.filter((f) => !table.translated.has(translatedKey(f)) && table.clashes(f));
      if (code === 0) return { injected: held.length, clashing: clashing.length, loads: load, milliseconds: elapsed() };
      failure = stderr.trim();
      pending = flows.filter((f) => !table.translated.has(translatedKey(f)) && !table.clashes(f));
      if (!pending.length) {
        return { injected: held.length, clashing: clashing.length, loads: load, milliseconds: elapsed() };
      }
    }
    throw new Error(`conntrack -R failed ${attempts} times; last: ${failure}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const originalKey = (protocol: string, source: string, sourcePort?: number, destination?: string, port?: number) =>
  `${protocol} ${source} ${sourcePort} ${destination} ${port}`;
const replyKey = (protocol: string, destination: string, destinationPort?: number, address?: string, port?: number) =>
  `${protocol} ${destination} ${destinationPort} ${address} ${port}`;
const translatedKey = (f: ReplicaFlow) =>
  `${originalKey(f.protocol, f.source, f.sourcePort, f.destination, f.destinationPort)} ${f.address} ${f.port}`;

/** What the table holds of the families of `flows`: their entries by tuple. */
async function tableOf(conntrack: Command, flows: readonly ReplicaFlow[]) {
  const originals = new Set<string>();
  const replies = new Set<string>();
  const translated = new Set<string>();
  for (const family of new Set(flows.map((f) => f.family))) {
    const { code, stdout, stderr } = await exec(conntrack, ['-L', '-f', `ipv${family}`, '-o', 'id,extended']);
    if (code !== 0) throw new Error(`conntrack -L failed: ${stderr.trim()}`);
    const parser = new ConntrackParser(markField(defaultMarks.uplinks));
    for (const { flow: f } of parser.push(Buffer.from(stdout, 'latin1'), new Date())) {
      const original = originalKey(f.protocol, f.source, f.sourcePort, f.destination, f.destinationPort);
      originals.add(original);
      replies.add(replyKey(f.protocol, f.destination, f.destinationPort, f.mappedAddress, f.mappedPort));
      translated.add(`${original} ${f.mappedAddress} ${f.mappedPort}`);
    }
  }
  const clashes = (f: ReplicaFlow) =>
    originals.has(originalKey(f.protocol, f.source, f.sourcePort, f.destination, f.destinationPort)) ||
    replies.has(replyKey(f.protocol, f.destination, f.destinationPort, f.address, f.port));
  return { translated, clashes };
}
