import { addressToBytes, bytesToAddress } from './address.ts';

test.each([
  ['192.0.2.1', [192, 0, 2, 1]],
  ['2001:db8::1', [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]],
  ['::', new Array(16).fill(0)],
  ['::ffff:192.0.2.1', [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]],
  ['fd00:1:2:3:4:5:6:7', [0xfd, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7]],
  ['', []],
])('%s converts to bytes and back', (text, bytes) => {
  expect([...addressToBytes(text)]).toEqual(bytes);
  expect(bytesToAddress(Uint8Array.from(bytes))).toBe(text === '::ffff:192.0.2.1' ? '::ffff:c000:201' : text);
});

test('text comes out in RFC 5952 form: lower case, longest zero run compressed', () => {
  expect(bytesToAddress(addressToBytes('2001:DB8:0:0:1:0:0:1'))).toBe('2001:db8::1:0:0:1');
});

test('rejects what is not an address, naming it', () => {
  expect(() => addressToBytes('10.0.0.256')).toThrow('"10.0.0.256" is not an IP address');
  expect(() => bytesToAddress(new Uint8Array(5))).toThrow('an address has 4 or 16 bytes, not 5');
});
