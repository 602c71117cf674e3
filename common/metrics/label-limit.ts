/**
 * Bounds a label's cardinality: the first `limit` distinct values are kept, later ones become
 * `other`, so a flood of names (process names come from the pods) cannot grow a series per name.
 */
export class LabelLimit {
  readonly #limit: number;
  readonly #seen = new Set<string>();

  constructor(limit: number) {
    this.#limit = limit;
  }

  get(value: string): string {
    if (this.#seen.has(value)) return value;
    if (this.#seen.size >= this.#limit) return 'other';
    this.#seen.add(value);
    return value;
  }
}
