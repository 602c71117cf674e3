// Whether an application a sidecar reported matches a rule's application matcher.
import type { Application as Matcher } from '../crds/index.ts';
import type { Application } from '../proto/index.ts';

export type { Matcher };

/** Every field the matcher sets must match; an empty matcher matches nothing (the API forbids it). */
export function matchesApplication(matcher: Matcher, app: Application): boolean {
  const fields = [
    matcher.processName === undefined ? undefined : matcher.processName === app.processName,
    matcher.executable === undefined ? undefined : globToRegExp(matcher.executable).test(app.executable),
    matcher.container === undefined ? undefined : matcher.container === app.containerName,
    matcher.uid === undefined ? undefined : matcher.uid === app.uid,
  ].filter((field) => field !== undefined);
  return fields.length > 0 && fields.every(Boolean);
}

const compiled = new Map<string, RegExp>();

/** `*` matches within a path segment, `**` across segments, `?` one character other than `/`. */
export function globToRegExp(glob: string): RegExp {
  let re = compiled.get(glob);
  if (re) return re;
  let source = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '*' && glob[i + 1] === '*') {
      source += '.*';
      i++;
    } else if (c === '*') source += '[^/]*';
    else if (c === '?') source += '[^/]';
    else source += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  re = new RegExp(`^${source}$`);
  compiled.set(glob, re);
  return re;
}
