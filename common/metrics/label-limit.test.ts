import { LabelLimit } from './label-limit.ts';

test('keeps the first values of a bounded label and folds later ones into other', () => {
  const limit = new LabelLimit(2);
  expect(['curl', 'python3', 'node', 'curl', 'java'].map((v) => limit.get(v))).toEqual([
    'curl',
    'python3',
    'other',
    'curl',
    'other',
  ]);
});
