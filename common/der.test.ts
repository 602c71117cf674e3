import { DerError, objectId, readObjectId, readOne, sequence, sequenceOf, tlv } from './der.ts';

describe('DER', () => {
  test('object identifiers written and read back', () => {
    for (const id of ['1.2.840.10045.4.3.2', '2.5.4.3', '1.3.6.1.5.5.7.3.2', '0.9.2342', '2.999.3']) {
      expect(readObjectId(readOne(objectId(id)), 'it')).toBe(id);
    }
  });

  test('what cannot be read is a DerError that says what is wrong', () => {
    const error = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(DerError);
        return (e as Error).message;
      }
      return 'read';
    };
    expect(error(() => readObjectId(readOne(Buffer.from([0x06, 0x02, 0x2a, 0x86])), 'the OID'))).toBe(
      'the OID ends inside an arc',
    );
    expect(error(() => readOne(Buffer.from([0x30])))).toBe('a value is cut short');
    expect(error(() => readOne(Buffer.from([0x30, 0x84, 1, 0, 0, 0])))).toBe('a length of more than three bytes');
    expect(error(() => readOne(Buffer.from([0x1f, 0x01, 0x00])))).toBe('multi-byte tags are not supported');
    expect(error(() => sequenceOf(readOne(sequence(objectId('2.5.4.3'))), 'the pair', 2))).toBe(
      'the pair has 1 elements, expected at least 2',
    );
    expect(error(() => tlv(0x04, Buffer.alloc(0x10000)))).toBe('DER value too long');
  });
});
