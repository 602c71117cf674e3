import { formatListenAddress, parseListenAddress } from './listen-address.ts';

test.each([
  [':9091', { port: 9091 }, '[::]:9091'],
  ['0.0.0.0:9091', { host: '0.0.0.0', port: 9091 }, '0.0.0.0:9091'],
  ['127.0.0.1:0', { host: '127.0.0.1', port: 0 }, '127.0.0.1:0'],
  ['[::]:7740', { host: '::', port: 7740 }, '[::]:7740'],
  ['[fd00::1]:65535', { host: 'fd00::1', port: 65535 }, '[fd00::1]:65535'],
  ['localhost:7741', { host: 'localhost', port: 7741 }, 'localhost:7741'],
])('%s listens at %j', (text, address, formatted) => {
  expect(parseListenAddress(text)).toEqual(address);
  expect(formatListenAddress(address)).toBe(formatted);
});

test.each(['9091', '::1:9091', '[10.0.0.1]:9091', '[fd00::1]', ':65536', ':port', '10.0.0.1:', '[fd00::1]9091', ''])(
  'refuses %j, naming it',
  (text) => {
    expect(() => parseListenAddress(text)).toThrow(`"${text}" is not HOST:PORT, [IPV6]:PORT or :PORT`);
  },
);
