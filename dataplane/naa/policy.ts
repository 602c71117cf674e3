// What the gateway applies to one pod, in the protocol's terms: sent to the pod's driver so that
// it can explain denials.
import { toApplicationMatch } from '../../contracts/index.ts';
import type { Destination } from '../../crds/index.ts';
import { Action, type EffectivePolicy } from '../../proto/index.ts';
import { contains, type GatewayConfig } from '../../contracts/gateway/index.ts';
import { ruleName } from '../render.ts';

/** The rules that apply to a pod with these addresses, in the order the gateway evaluates them. */
export function effectivePolicy(config: GatewayConfig, addresses: readonly string[]): EffectivePolicy {
  const theirs = config.rules.filter((rule) =>
    rule.sources.some((prefix) => addresses.some((address) => contains(prefix, address))),
  );
  const classes: EffectivePolicy['classes'] = [];
  const rules = theirs.map((rule) => {
    let applicationClasses: number[] = [];
    if (rule.applications) {
      const id = classes.length + 1;
      classes.push({ id, matches: rule.applications.map(toApplicationMatch) });
      applicationClasses = [id];
    }
    return {
      rule: ruleName(rule),
      priority: rule.priority,
      applicationClasses,
      destinations: (rule.destinations ?? []).map(describeDestination),
      action: rule.action === 'Allow' ? Action.ACTION_ALLOW : Action.ACTION_DENY,
      uplinks: rule.uplinks?.preferred ?? rule.uplinks?.allowed ?? [],
    };
  });
  return {
    configHash: config.hash ?? '',
    classes,
    rules,
    defaultAction: config.defaultAction === 'Allow' ? Action.ACTION_ALLOW : Action.ACTION_DENY,
  };
}

function describeDestination(d: Destination): string {
  const ports = d.ports?.map((p) => (p.endPort ? `${p.port}-${p.endPort}` : `${p.port}`)).join(',');
  return [d.cidr ?? 'any', d.protocol, ...(ports ? [ports] : [])].join(' ');
}
