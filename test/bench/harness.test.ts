import {
  benchReport,
  figureLine,
  figureProblem,
  figureReport,
  goalMet,
  parseCommandLine,
  percentile,
  type Figure,
} from './harness.ts';

const host = { hostname: 'h', cpus: 2, cpuModel: 'cpu', memoryGiB: 4, kernel: '6.1', node: 'v24' };
const facts = {
  benchmark: 'b',
  form: 'quick' as const,
  startedAt: new Date(0),
  seconds: 1.26,
  host,
  strictGoals: false,
};
const byKey = (figures: Figure[]) => new Map(figures.map((f) => [f.key, f]));

const plain: Figure = { key: 'plain', label: 'plain (baseline)', value: 10, unit: 'Gbit/s' };
const masquerade: Figure = { key: 'masq', label: 'one masquerade rule', value: 8, unit: 'Gbit/s', baseline: 'plain' };
const naat = (value: number): Figure => ({
  key: 'naat',
  label: 'naat',
  value,
  unit: 'Gbit/s',
  baseline: 'plain',
  goal: { bound: 'min', value: 1, of: 'masq', source: 'issue' },
});

describe('figureProblem', () => {
  test.each([NaN, Infinity, -Infinity])('a value of %p is not measured', (value) => {
    expect(figureProblem({ ...plain, value }, byKey([]))).toBe(`not measured (${value})`);
  });

  test('a baseline of zero, not finite or not recorded makes the figure unmeasured', () => {
    expect(figureProblem(masquerade, byKey([{ ...plain, value: 0 }]))).toBe('its baseline plain is 0');
    expect(figureProblem(masquerade, byKey([{ ...plain, value: NaN }]))).toBe(
      'its baseline plain was not measured (NaN)',
    );
    expect(figureProblem(masquerade, byKey([]))).toBe('its baseline plain was not recorded');
  });

  test("a goal's reference must be measured too", () => {
    expect(figureProblem(naat(9), byKey([plain]))).toBe('its goal reference masq was not recorded');
    expect(figureProblem(naat(9), byKey([plain, masquerade]))).toBeUndefined();
  });

  test('zero is a measurement', () => {
    expect(figureProblem({ ...plain, value: 0 }, byKey([]))).toBeUndefined();
  });
});

describe('figureReport', () => {
  test('the ratio is to the baseline; a relative goal is a multiple of its reference', () => {
    const figures = byKey([plain, masquerade]);
    expect(figureReport(naat(8), figures)).toEqual({
      label: 'naat',
      value: 8,
      unit: 'Gbit/s',
      baseline: 'plain',
      ratio: 0.8,
      goal: { bound: 'min', value: 1, of: 'masq', source: 'issue', limit: 8 },
      met: true,
      problem: null,
      note: null,
    });
    expect(figureReport(naat(7.9), figures).met).toBe(false);
  });

  test('an absolute goal, at most', () => {
    const rss: Figure = {
      key: 'rss',
      label: 'RSS',
      value: 62,
      unit: 'MiB',
      goal: { bound: 'max', value: 50, source: 'doc' },
    };
    expect(figureReport(rss, byKey([])).met).toBe(false);
    expect(figureReport({ ...rss, value: 50 }, byKey([])).met).toBe(true);
  });

  test('an unmeasured figure has no value, ratio or verdict in JSON', () => {
    const report = figureReport(naat(Infinity), byKey([plain, masquerade]));
    expect(report).toMatchObject({ value: null, ratio: null, met: null, problem: 'not measured (Infinity)' });
  });
});

test('goalMet', () => {
  expect(goalMet(1, 'min', 1)).toBe(true);
  expect(goalMet(0.9, 'min', 1)).toBe(false);
  expect(goalMet(201, 'max', 200)).toBe(false);
});

describe('benchReport', () => {
  test('JSON shape: one entry per figure by key, run facts, verdict', () => {
    const report = benchReport(facts, [plain, masquerade, naat(8)]);
    expect(report).toEqual({
      benchmark: 'b',
      form: 'quick',
      startedAt: '1970-01-01T00:00:00.000Z',
      seconds: 1.3,
      host,
      strictGoals: false,
      ok: true,
      error: null,
      notMeasured: [],
      goalsMissed: [],
      figures: {
        plain: expect.objectContaining({ value: 10, baseline: null, ratio: null, goal: null, met: null }),
        masq: expect.objectContaining({ value: 8, baseline: 'plain', ratio: 0.8 }),
        naat: expect.objectContaining({ value: 8, met: true }),
      },
    });
    expect(JSON.parse(JSON.stringify(report))).toEqual(report);
  });

  test('a figure not measured fails the run', () => {
    const report = benchReport(facts, [{ ...plain, value: 0 }, masquerade]);
    expect(report.ok).toBe(false);
    expect(report.notMeasured).toEqual(['masq']);
  });

  test('a missed goal fails the run only with strict goals', () => {
    const figures = [plain, masquerade, naat(7)];
    expect(benchReport(facts, figures)).toMatchObject({ ok: true, goalsMissed: ['naat'] });
    expect(benchReport({ ...facts, strictGoals: true }, figures)).toMatchObject({ ok: false, goalsMissed: ['naat'] });
  });

  test('an error fails the run', () => {
    expect(benchReport({ ...facts, error: 'boom' }, [plain])).toMatchObject({ ok: false, error: 'boom' });
  });
});

test('figureLine prints the words, the value with its unit, the ratio and the goal', () => {
  const figures = byKey([plain, masquerade]);
  const line = figureLine(naat(7), figureReport(naat(7), figures));
  expect(line).toMatch(/^ {2}naat +7\.00 Gbit\/s {2}×0\.70 {2}\(goal ≥ 1 × masq: NOT MET\)$/);
});

test('percentile is nearest rank, NaN without values', () => {
  const values = Array.from({ length: 100 }, (_, i) => 100 - i);
  expect(percentile(values, 0.5)).toBe(50);
  expect(percentile(values, 0.99)).toBe(99);
  expect(percentile([], 0.5)).toBeNaN();
});

describe('parseCommandLine with parts', () => {
  const parts = { flag: 'fault', names: ['power-off', 'agent-kill', 'drain'] };

  test('the parts asked for, in the benchmark order, each once', () => {
    const args = ['--quick', '--fault', 'drain', '--fault', 'power-off', '--fault', 'drain'];
    expect(parseCommandLine('failover', args, 'full', { parts })).toEqual({
      form: 'quick',
      strictGoals: false,
      only: ['power-off', 'drain'],
    });
  });

  test('none asked for: no limit', () => {
    expect(parseCommandLine('failover', ['--smoke'], 'full', { parts })).toEqual({ form: 'smoke', strictGoals: false });
  });
});
