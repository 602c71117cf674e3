import { jsonLines, logLevelFromEnvironment, ProblemLog, type LogLevel } from './log.ts';

function recorder(level: LogLevel) {
  const lines: Array<Record<string, unknown>> = [];
  const log = jsonLines(
    () => level,
    (line) => lines.push(JSON.parse(line) as Record<string, unknown>),
  );
  return { log, lines };
}

describe('log levels', () => {
  it('writes the lines at or above the level and drops the rest', () => {
    const { log, lines } = recorder('warn');
    log.debug('Synced');
    log.info('Started');
    log.warn('Slow');
    log.error('Failed', { uplink: 'isp1' });
    expect(lines.map((l) => [l.level, l.msg])).toEqual([
      ['warn', 'Slow'],
      ['error', 'Failed'],
    ]);
    expect(lines[1]).toMatchObject({ uplink: 'isp1' });
  });

  it('reads the level from NAAT_LOG_LEVEL, info when unset, and names the variable when it is wrong', () => {
    expect(logLevelFromEnvironment({})).toBe('info');
    expect(logLevelFromEnvironment({ NAAT_LOG_LEVEL: 'debug' })).toBe('debug');
    expect(() => logLevelFromEnvironment({ NAAT_LOG_LEVEL: 'verbose' })).toThrow(
      'NAAT_LOG_LEVEL is "verbose"; it must be one of debug, info, warn, error',
    );
  });
});

describe('a recurring problem', () => {
  it('logs an error when it starts or changes, debug while it repeats, and info once when it clears', () => {
    const { log, lines } = recorder('debug');
    const problems = new ProblemLog(log, 'Failed to add uplink routes', 'Added uplink routes again');
    problems.report('routes', undefined);
    problems.report('routes', 'Network is down');
    problems.report('routes', 'Network is down');
    problems.report('routes', 'Network is down');
    problems.report('routes', 'No such device');
    problems.report('routes', undefined);
    problems.report('routes', undefined);
    expect(lines.map((l) => [l.level, l.msg, l.error ?? l.after])).toEqual([
      ['error', 'Failed to add uplink routes', 'Network is down'],
      ['debug', 'Failed to add uplink routes', 'Network is down'],
      ['debug', 'Failed to add uplink routes', 'Network is down'],
      ['error', 'Failed to add uplink routes', 'No such device'],
      ['info', 'Added uplink routes again', 'No such device'],
    ]);
  });

  it('keeps the problems of different keys apart', () => {
    const { log, lines } = recorder('info');
    const problems = new ProblemLog(log, 'Failed to read an uplink interface', 'Read an uplink interface again');
    problems.report('isp1', 'gone', { uplink: 'isp1' });
    problems.report('isp2', 'gone', { uplink: 'isp2' });
    problems.report('isp1', undefined, { uplink: 'isp1' });
    expect(lines.map((l) => [l.level, l.uplink])).toEqual([
      ['error', 'isp1'],
      ['error', 'isp2'],
      ['info', 'isp1'],
    ]);
  });
});
