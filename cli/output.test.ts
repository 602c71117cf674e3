import { parse } from 'yaml';
import { age, renderView, type View } from './output.ts';

const view: View = {
  data: { gateways: [{ name: 'corp', ready: 'True' }] },
  sections: [
    {
      title: 'Gateways',
      columns: [{ header: 'name' }, { header: 'ready' }, { header: 'config', wide: true }],
      rows: [
        ['corp', 'True', 'sha256:1'],
        ['lab-gateway', 'False', 'sha256:2'],
      ],
      empty: 'No EgressGateways.',
    },
    { title: 'Steering', columns: [{ header: 'node' }], rows: [], empty: 'No node steers pods.' },
  ],
};

describe('renderView', () => {
  it('prints tables as kubectl does, the wide columns only in wide', () => {
    expect(renderView(view, 'table')).toBe(
      [
        'GATEWAYS',
        'NAME          READY',
        'corp          True',
        'lab-gateway   False',
        '',
        'STEERING',
        'No node steers pods.',
        '',
      ].join('\n'),
    );
    expect(renderView(view, 'wide').split('\n').slice(1, 3)).toEqual([
      'NAME          READY   CONFIG',
      'corp          True    sha256:1',
    ]);
  });

  it('prints the data whole as JSON or YAML, whatever the tables show', () => {
    expect(JSON.parse(renderView(view, 'json'))).toEqual(view.data);
    expect(parse(renderView(view, 'yaml'))).toEqual(view.data);
  });

  it('leaves the section title out when there is one section', () => {
    expect(renderView({ ...view, sections: [view.sections[1]!] }, 'table')).toBe('No node steers pods.\n');
  });
});

test('age reads as kubectl prints it', () => {
  const now = new Date('2026-12-04T12:00:00Z');
  expect(age('2026-12-04T11:59:15Z', now)).toBe('45s');
  expect(age('2026-12-04T11:30:00Z', now)).toBe('30m');
  expect(age('2026-12-04T07:00:00Z', now)).toBe('5h');
  expect(age('2026-11-30T12:00:00Z', now)).toBe('4d');
  expect(age(undefined, now)).toBe('');
});
