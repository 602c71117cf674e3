import { parseStampRequest } from './stamps.ts';

test("a request is a pid, with the library's pid namespace or without", () => {
  expect(parseStampRequest('42\n')).toEqual({ pid: 42 });
  expect(parseStampRequest('42 pid:[4026531836]\n')).toEqual({ pid: 42, pidNamespace: 'pid:[4026531836]' });
  for (const bad of ['', '0\n', '-1\n', 'x\n', '42 net:[1]\n', '42 pid:[1] more\n', '99999999999\n'])
    expect(parseStampRequest(bad)).toBeUndefined();
});
