import { defaultMarks, isContiguous, markField, markOf, valueOf } from './marks.ts';

test('a field is one run of bits, anywhere in the 32', () => {
  expect([0x0000000f, 0x00000010, 0x000000e0, 0x00ff0000, 0x80000000, 0xffffffff].map(isContiguous)).toEqual([
    true,
    true,
    true,
    true,
    true,
    true,
  ]);
  expect([0, 0x00000505, 0x00ff00ff].map(isContiguous)).toEqual([false, false, false]);
  expect(markField(0x000000e0)).toEqual({ mask: 0xe0, shift: 5, max: 7 });
  expect(markField(0xff000000)).toEqual({ mask: 0xff000000, shift: 24, max: 255 });
});

test('a number goes into its bits and comes back, whatever the other bits hold', () => {
  const peers = markField(defaultMarks.steering);
  expect(markOf(peers, 7)).toBe(0xe0);
  expect(valueOf(peers, 0x4000 | 0xa0 | 0x0f)).toBe(5);
  const top = markField(0xf0000000);
  expect(markOf(top, 15)).toBe(0xf0000000);
  expect(valueOf(top, 0xf0000001)).toBe(15);
});

test('the default fields do not overlap one another', () => {
  const { uplinks, tunnel, steering } = defaultMarks;
  expect(uplinks & tunnel).toBe(0);
  expect(uplinks & steering).toBe(0);
  expect(tunnel & steering).toBe(0);
  // kube-proxy's masquerade and drop bits, Cilium's magic bits, Calico's default mask.
  for (const theirs of [0x4000, 0x8000, 0xff00, 0xffff0000]) expect((uplinks | tunnel | steering) & theirs).toBe(0);
});
