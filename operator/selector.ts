// metav1.LabelSelector semantics: matchLabels and matchExpressions are ANDed; an empty selector
// selects everything.
import type { LabelSelector } from '../crds/index.ts';

export type Labels = Readonly<Record<string, string>> | undefined;

export function matchesSelector(selector: LabelSelector, labels: Labels): boolean {
  const have = labels ?? {};
  for (const [key, value] of Object.entries(selector.matchLabels ?? {})) {
    if (have[key] !== value) return false;
  }
  for (const { key, operator, values = [] } of selector.matchExpressions ?? []) {
    const present = Object.hasOwn(have, key);
    switch (operator) {
      case 'In':
        if (!present || !values.includes(have[key]!)) return false;
        break;
      case 'NotIn':
        if (present && values.includes(have[key]!)) return false;
        break;
      case 'Exists':
        if (!present) return false;
        break;
      case 'DoesNotExist':
        if (present) return false;
        break;
    }
  }
  return true;
}

/** A node selector of plain labels (all must match); every node when empty. */
export function matchesLabels(wanted: Labels, labels: Labels): boolean {
  return Object.entries(wanted ?? {}).every(([key, value]) => labels?.[key] === value);
}
