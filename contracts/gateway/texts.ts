// The JSON text of the parts of a compiled config that grow with the cluster (a served pod, a
// rule), kept while the part lives. A compiled config is never changed once made, and the
// operator's compiler hands an unchanged pod or rule on to the next config as the same object, so
// the next config's hash and slices stringify only what changed: stringifying the whole config of
// 50,000 pods, for its hash and again for its slices, took the better part of a second a change.
// The content hashes of the gateway's and the node agents' configs are made here from such parts.
import { createHash } from 'node:crypto';
import type { GatewayConfig } from './config.ts';
import type { NodeConfig } from './steering.ts';

const texts = new WeakMap<object, string>();

/** JSON.stringify(part), once per object. */
export function jsonText(part: object): string {
  let text = texts.get(part);
  if (text === undefined) texts.set(part, (text = JSON.stringify(part)));
  return text;
}

/**
 * The content hash of a config without its `hash`: the sha256 of its text with the pods and
 * rules counted instead of listed, then each pod's and each rule's text, a line each. It names
 * the content (JSON text holds no line break), but it is not the sha256 of the config's own text.
 */
export function configHash(config: GatewayConfig): string {
  const head = { ...config, pods: config.pods.length, rules: config.rules.length };
  // One update of the joined texts: an update per part cost more than the hashing.
  const parts = [JSON.stringify(head), ...config.pods.map(jsonText), ...config.rules.map(jsonText)];
  return `sha256:${createHash('sha256').update(parts.join('\n')).digest('hex')}`;
}

/**
 * The content hash of a node config without its `hash`, in the manner of configHash: its text with
 * each gateway's bypass and peers left out, then the sha256 of each of those, a line each. They are
 * the same objects in every node config the gateway steers from, each hashed once: a thousand
 * nodes' configs each spelled out the cluster's pod networks in full, 17 MB to hash per compile.
 */
export function nodeConfigHash(config: NodeConfig): string {
  const head = { ...config, gateways: config.gateways.map((g) => ({ ...g, bypass: [], peers: [] })) };
  const parts = [JSON.stringify(head), ...config.gateways.flatMap((g) => [digestOf(g.bypass), digestOf(g.peers)])];
  return `sha256:${createHash('sha256').update(parts.join('\n')).digest('hex')}`;
}

const digests = new WeakMap<object, string>();

/** The sha256 of the part's JSON text, once per object. */
function digestOf(part: object): string {
  let digest = digests.get(part);
  if (digest === undefined)
    digests.set(part, (digest = createHash('sha256').update(JSON.stringify(part)).digest('hex')));
  return digest;
}
