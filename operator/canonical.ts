// Comparing what the operator wants with what the apiserver holds.

/** The order of `localeCompare`, with one collator rather than one per comparison. */
export const { compare } = new Intl.Collator();

/** JSON with object keys sorted: the apiserver hands objects back with their keys reordered. */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).sort(([a], [b]) => compare(a, b)))
      : v,
  );
}
