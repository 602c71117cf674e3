import { whyNodeLeft } from './membership.ts';

const placement = { nodeSelector: { 'naat.dev/gateway': 'true', zone: 'a' }, excludedNodes: ['gw-2'] };
const member = { labels: { 'naat.dev/gateway': 'true', zone: 'a', other: 'x' } };

describe('whether a stopped agent’s node left its gateway', () => {
  test('a node whose labels still match nodeSelector is the gateway’s: a rollout keeps the kernel', () => {
    expect(whyNodeLeft('gw-1', placement, member)).toBeUndefined();
  });

  test('a node relabelled out of nodeSelector left, and the reason names the labels it lacks', () => {
    expect(whyNodeLeft('gw-1', placement, { labels: { 'naat.dev/gateway': 'false', zone: 'a' } })).toBe(
      "the node no longer has nodeSelector's naat.dev/gateway=true",
    );
    expect(whyNodeLeft('gw-1', placement, { labels: {} })).toBe(
      "the node no longer has nodeSelector's naat.dev/gateway=true, zone=a",
    );
  });

  test('a changed nodeSelector that the node does not match means it left', () => {
    expect(whyNodeLeft('gw-1', { ...placement, nodeSelector: { zone: 'b' } }, member)).toBe(
      "the node no longer has nodeSelector's zone=b",
    );
  });

  test('a node the operator excluded (another gateway holds its ports) left, whatever its labels', () => {
    expect(whyNodeLeft('gw-2', placement, member)).toBe('excluded: another gateway holds its ports on the node');
    expect(whyNodeLeft('gw-2', placement, 'unknown')).toBe('excluded: another gateway holds its ports on the node');
  });

  test('a deleted node left', () => {
    expect(whyNodeLeft('gw-1', placement, 'deleted')).toBe('the node is deleted');
  });

  test('a node that cannot be read, or a config without placement, keeps the kernel as it is', () => {
    expect(whyNodeLeft('gw-1', placement, 'unknown')).toBeUndefined();
    expect(whyNodeLeft('gw-1', undefined, { labels: {} })).toBeUndefined();
    expect(whyNodeLeft('gw-1', undefined, 'deleted')).toBeUndefined();
  });

  test('an empty nodeSelector matches every node', () => {
    expect(whyNodeLeft('gw-1', { nodeSelector: {}, excludedNodes: [] }, { labels: {} })).toBeUndefined();
  });
});
