import { failoverFigures, type ProbeOutput } from './failover-figures.ts';

const probe = (attempts: ProbeOutput['attempts'], answers: number[]): ProbeOutput => ({
  attempts,
  udp: { sent: answers.length + 3, answers, sources: { '100.64.1.100 40000': answers.length } },
});

describe('failoverFigures', () => {
  it('measures from the fault to the first success among connections started after it', () => {
    const figures = failoverFigures(
      probe(
        [
          [990, 1002, '100.64.1.100 40001'],
          // Started before the fault: its late success does not count.
          [999, 1200, '100.64.1.100 40002'],
          [1010, 2010, ''],
          [1300, 1310, ''],
          [1400, 1405, '100.64.1.100 40003'],
          [1390, 1420, '100.64.1.100 40004'],
        ],
        [997, 998, 999, 1350, 1351],
      ),
      1000,
    );
    expect(figures.newConnectionGapMs).toBe(405);
    expect(figures.failedAfterFault).toBe(1);
    expect(figures.udpGapMs).toBe(351);
    expect(figures.newConnectionSources).toEqual(['100.64.1.100']);
    expect(figures.udpSources).toEqual(['100.64.1.100 40000']);
  });

  it('says when nothing recovered', () => {
    const figures = failoverFigures(probe([[1010, 2010, '']], [990]), 1000);
    expect(figures.newConnectionGapMs).toBeUndefined();
    expect(figures.failedAfterFault).toBe(1);
    expect(figures.udpGapMs).toBe(Infinity);
  });
});
