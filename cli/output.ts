// How the CLI prints what a command found: `json` and `yaml` print the command's data, whole and
// as it is (what scripts read); the table formats print it for people, as kubectl does, one table
// per section with the wide columns only in `wide`. Pure.
import { stringify } from 'yaml';

export const outputFormats = ['table', 'wide', 'json', 'yaml'] as const;
export type OutputFormat = (typeof outputFormats)[number];

export interface Column {
  header: string;
  /** Shown only with `--output wide`. */
  wide?: boolean;
}

export interface Section {
  /** Printed above the table when the view has more than one section. */
  title: string;
  columns: readonly Column[];
  rows: ReadonlyArray<readonly string[]>;
  /** What is printed instead of an empty table. */
  empty: string;
}

export interface View {
  /** What json and yaml print. */
  data: unknown;
  sections: readonly Section[];
}

export function parseOutputFormat(text: string): OutputFormat | undefined {
  return (outputFormats as readonly string[]).includes(text) ? (text as OutputFormat) : undefined;
}

/** The view in `format`, ending with a newline. */
export function renderView(view: View, format: OutputFormat): string {
  if (format === 'json') return `${JSON.stringify(view.data, null, 2)}\n`;
  if (format === 'yaml') return stringify(view.data);
  const titled = view.sections.length > 1;
  return view.sections
    .map((section) => {
      const table = renderTable(section, format === 'wide');
      return titled ? `${section.title.toUpperCase()}\n${table}` : table;
    })
    .join('\n');
}

/** Columns padded to their widest cell, three spaces apart, as `kubectl get` prints them. */
export function renderTable(section: Section, wide: boolean): string {
  if (section.rows.length === 0) return `${section.empty}\n`;
  const shown = section.columns.map((column, i) => ({ column, i })).filter(({ column }) => wide || !column.wide);
  const lines = [
    shown.map(({ column }) => column.header.toUpperCase()),
    ...section.rows.map((row) => shown.map(({ i }) => row[i] ?? '')),
  ];
  const widths = shown.map((_, j) => Math.max(...lines.map((line) => line[j]!.length)));
  return (
    lines.map((line) => `${line.map((cell, j) => cell.padEnd(widths[j]!)).join('   ')}`.trimEnd()).join('\n') + '\n'
  );
}

/** How long ago `at` was, as kubectl prints ages: 45s, 12m, 3h, 2d. */
export function age(at: string | undefined, now: Date): string {
  if (!at) return '';
  const seconds = Math.max(0, Math.floor((now.getTime() - Date.parse(at)) / 1000));
  if (Number.isNaN(seconds)) return '';
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172_800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86_400)}d`;
}
