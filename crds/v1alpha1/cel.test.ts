import { isCidr, isMasked, isUsableIp } from './cel.ts';

test.each([
  ['192.0.2.1', undefined, true],
  ['2001:db8::1', undefined, true],
  ['fe80::1', 6, true],
  ['192.0.2.1', 6, false],
  ['0.0.0.0', undefined, false],
  ['::', undefined, false],
  ['127.0.0.53', undefined, false],
  ['::1', undefined, false],
  ['::ffff:192.0.2.1', undefined, false],
  ['fe80::1%eth0', undefined, false],
  ['192.0.2.01', undefined, false],
  ['isp-a.example', undefined, false],
] as const)('isUsableIp(%s, family %s) is %s, as in CEL', (text, family, expected) => {
  expect(isUsableIp(text, family)).toBe(expected);
});

test.each([
  ['203.0.113.0/24', true, true],
  ['203.0.113.7/24', true, false],
  ['0.0.0.0/0', true, true],
  ['2001:db8::/32', true, true],
  ['2001:db8::1/32', true, false],
  ['2001:db8::1/128', true, true],
  ['10.0.0.0/33', false, false],
  ['10.0.0.0/08', false, false],
  ['10.0.0.0', false, false],
  ['::ffff:10.0.0.0/104', false, false],
])('%s: isCIDR %s, masked %s', (text, cidr, masked) => {
  expect(isCidr(text)).toBe(cidr);
  expect(isMasked(text)).toBe(masked);
});
