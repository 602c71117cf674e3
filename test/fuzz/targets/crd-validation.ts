// The API's validation (crds/ `validate`: schema with defaults, then the CEL rules' TypeScript
// counterparts) on any bytes read as JSON, as each kind. Invariant: it answers, valid or with
// errors, and throws nothing.
import { validate, type Kind } from '../../../crds/index.ts';
import { jsonOf } from '../json.ts';

const kinds: Kind[] = ['Uplink', 'EgressGateway', 'EgressPolicy'];

export function fuzz(data: Buffer): void {
  const object = jsonOf(data);
  if (object === undefined) return;
  for (const kind of kinds) validate(kind, object);
}
