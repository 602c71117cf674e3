import { narrowErrors, sessionLineBytes, sessionTakes, takeReply, transactionLine } from './session.ts';

describe('a transaction as one line', () => {
  test('joins the commands with semicolons; quoted text may hold a # or a ;', () => {
    const commands = ['add element inet naat s { 10.0.0.1 }', 'add rule inet naat c counter comment "a # b; c"'];
    expect(transactionLine(commands)).toBe(
      'add element inet naat s { 10.0.0.1 }; add rule inet naat c counter comment "a # b; c"',
    );
  });

  test('refuses a command with a line break or a comment, naming it', () => {
    expect(() => transactionLine(['add table inet naat', 'flush chain inet naat c\nadd rule inet naat c'])).toThrow(
      'nft command cannot go on a line with others: "flush chain inet naat c\\nadd rule inet naat c"',
    );
    expect(() => transactionLine(['add rule inet naat c counter # why'])).toThrow('add rule inet naat c counter # why');
  });

  test('takes a transaction up to the bytes a pipe takes in one piece, counting separators', () => {
    expect(sessionTakes([])).toBe(false);
    expect(sessionTakes(['a'.repeat(sessionLineBytes)])).toBe(true);
    expect(sessionTakes(['a'.repeat(sessionLineBytes + 1)])).toBe(false);
    expect(sessionTakes(['a'.repeat(sessionLineBytes - 3), 'b'])).toBe(true);
    expect(sessionTakes(['a'.repeat(sessionLineBytes - 2), 'b'])).toBe(false);
  });

  test('takes only ASCII, which is all that nft -i keeps', () => {
    expect(sessionTakes(['add rule inet naat c counter comment "shop/a0#a"', 'flush chain inet naat d'])).toBe(true);
    expect(sessionTakes(['add rule inet naat c counter comment "shop/a0#é"', 'flush chain inet naat d'])).toBe(false);
    expect(sessionTakes(['flush chain inet naat d', 'add rule inet naat c counter comment "shop/a0#😀"'])).toBe(false);
  });
});

describe("nft's answer", () => {
  const marker = 'naat-transaction-7-done';
  const markerError = `Error: syntax error, unexpected newline, expecting string\n${marker}\n${' '.repeat(marker.length)}^\n`;

  test('is complete once the error echoing the marker and its caret line arrived', () => {
    const failed =
      'Error: No such file or directory\nadd element inet naat nosuch { 1.2.3.4 }\n                   ^^^^^^\n';
    expect(takeReply(failed, marker)).toBeUndefined();
    expect(takeReply(`${failed}${markerError.slice(0, -3)}`, marker)).toBeUndefined();
    expect(takeReply(`${failed}${markerError}`, marker)).toEqual({ reply: failed, rest: '' });
    expect(takeReply(markerError, marker)).toEqual({ reply: '', rest: '' });
    expect(takeReply(`${markerError}Error: next`, marker)).toEqual({ reply: '', rest: 'Error: next' });
  });

  test("is not another transaction's marker", () => {
    const other = markerError.replaceAll('-7-', '-17-');
    expect(takeReply(other, marker)).toBeUndefined();
  });
});

describe('errors about a transaction line', () => {
  const commands = ['add table inet naat', 'add element inet naat nosuch { 1.2.3.4 }', 'flush chain inet naat c'];
  const line = commands.join('; ');

  test('name the command the caret points at, the caret under it as in that command alone', () => {
    const column = line.indexOf('nosuch');
    const reply = `Error: No such file or directory\n${line}\n${' '.repeat(column)}^^^^^^\n`;
    expect(narrowErrors(reply, commands)).toBe(
      'Error: No such file or directory\nadd element inet naat nosuch { 1.2.3.4 }\n                      ^^^^^^\n',
    );
  });

  test('each of several errors is narrowed; other text stays as it is', () => {
    const at = (text: string) => ' '.repeat(line.indexOf(text)) + '^'.repeat(text.length);
    const reply = `Error: one\n${line}\n${at('nosuch')}\nError: two\n${line}\n${at('chain')}\nWarning: three\n`;
    expect(narrowErrors(reply, commands)).toBe(
      `Error: one\n${commands[1]}\n${' '.repeat(22)}^^^^^^\n` +
        `Error: two\n${commands[2]}\n      ^^^^^\nWarning: three\n`,
    );
  });

  test('a caret at the end of the line stays at the end of the last command', () => {
    const reply = `Error: syntax error, unexpected newline\n${line}\n${' '.repeat(line.length)}^\n`;
    expect(narrowErrors(reply, commands)).toBe(
      `Error: syntax error, unexpected newline\n${commands[2]}\n${' '.repeat(commands[2]!.length)}^\n`,
    );
  });
});
