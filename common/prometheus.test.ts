import { Counter, escapeLabelValue, formatValue, Gauge, Histogram, LabelLimit, Registry } from './prometheus.ts';

describe('the Prometheus text format', () => {
  it('renders a histogram with cumulative buckets up to +Inf, its sum and count', () => {
    const registry = new Registry();
    const h = registry.add(
      new Histogram({ name: 'apply_seconds', help: 'How long.', labelNames: ['full'], buckets: [0.1, 1] }),
    );
    h.observe({ full: 'true' }, 0.05);
    h.observe({ full: 'true' }, 0.1);
    h.observe({ full: 'true' }, 0.5);
    h.observe({ full: 'true' }, 3);
    h.observe({ full: 'false' }, 0.25);
    expect(registry.render()).toBe(
      [
        '# HELP apply_seconds How long.',
        '# TYPE apply_seconds histogram',
        'apply_seconds_bucket{full="true",le="0.1"} 2',
        'apply_seconds_bucket{full="true",le="1"} 3',
        'apply_seconds_bucket{full="true",le="+Inf"} 4',
        'apply_seconds_sum{full="true"} 3.65',
        'apply_seconds_count{full="true"} 4',
        'apply_seconds_bucket{full="false",le="0.1"} 0',
        'apply_seconds_bucket{full="false",le="1"} 1',
        'apply_seconds_bucket{full="false",le="+Inf"} 1',
        'apply_seconds_sum{full="false"} 0.25',
        'apply_seconds_count{full="false"} 1',
        '',
      ].join('\n'),
    );
    expect(h.get({ full: 'true' })).toEqual({ count: 4, sum: 3.65 });
  });

  it('renders a histogram without labels with its zero series from the start', () => {
    const h = new Histogram({ name: 'latency_seconds', help: 'h', buckets: [1] });
    expect(h.render()).toEqual([
      '# HELP latency_seconds h',
      '# TYPE latency_seconds histogram',
      'latency_seconds_bucket{le="1"} 0',
      'latency_seconds_bucket{le="+Inf"} 0',
      'latency_seconds_sum 0',
      'latency_seconds_count 0',
    ]);
  });

  it('escapes backslash, double quote and newline in label values, and backslash and newline in help', () => {
    expect(escapeLabelValue('a\\b"c\nd')).toBe('a\\\\b\\"c\\nd');
    const c = new Counter({ name: 'flows_total', help: 'Flows per "app",\nby C:\\path.', labelNames: ['application'] });
    c.inc({ application: 'we"ird\\name\n' }, 2);
    c.inc({ application: 'we"ird\\name\n' });
    expect(c.render()).toEqual([
      '# HELP flows_total Flows per "app",\\nby C:\\\\path.',
      '# TYPE flows_total counter',
      'flows_total{application="we\\"ird\\\\name\\n"} 3',
    ]);
  });

  it('starts metrics without labels at 0, and reads collected values at each render', () => {
    let depth = 4;
    const registry = new Registry();
    registry.add(new Counter({ name: 'failures_total', help: 'f' }));
    registry.add(
      new Gauge({ name: 'depth', help: 'd', labelNames: ['queue'], collect: () => [[{ queue: 'a' }, depth]] }),
    );
    expect(registry.render()).toBe(
      '# HELP failures_total f\n# TYPE failures_total counter\nfailures_total 0\n' +
        '# HELP depth d\n# TYPE depth gauge\ndepth{queue="a"} 4\n',
    );
    depth = 1;
    expect(registry.render()).toMatch(/depth\{queue="a"\} 1\n$/);
    expect(registry.sampleNames()).toEqual(['failures_total', 'depth']);
  });

  it('clears a gauge set from a snapshot, and spells infinities and NaN as Go does', () => {
    const g = new Gauge({ name: 'healthy', help: 'h', labelNames: ['uplink'] });
    g.set({ uplink: 'isp1' }, 1);
    g.clear();
    g.set({ uplink: 'isp2' }, 0);
    expect(g.render().slice(2)).toEqual(['healthy{uplink="isp2"} 0']);
    expect([Infinity, -Infinity, NaN, 1e21, 0.5].map(formatValue)).toEqual(['+Inf', '-Inf', 'NaN', '1e+21', '0.5']);
  });

  it('refuses samples with other labels than declared, counters that go down and bad names', () => {
    const c = new Counter({ name: 'x_total', help: 'x', labelNames: ['uplink'] });
    expect(() => c.inc({})).toThrow('x_total takes the labels [uplink], not []');
    expect(() => c.inc({ uplink: 'a' }, -1)).toThrow('cannot go down');
    expect(() => new Gauge({ name: 'bad-name', help: '' })).toThrow('not valid');
    expect(() => new Histogram({ name: 'h', help: '', labelNames: ['le'], buckets: [1] })).toThrow('not valid');
    expect(() => new Histogram({ name: 'h', help: '', buckets: [1, 1] })).toThrow('ascending');
    const registry = new Registry();
    registry.add(new Gauge({ name: 'g', help: '' }));
    expect(() => registry.add(new Gauge({ name: 'g', help: '' }))).toThrow('defined twice');
  });

  it('keeps the first values of a bounded label and folds later ones into other', () => {
    const limit = new LabelLimit(2);
    expect(['curl', 'python3', 'node', 'curl', 'java'].map((v) => limit.get(v))).toEqual([
      'curl',
      'python3',
      'other',
      'curl',
      'other',
    ]);
  });
});
