import { renderElement } from '../nft/model.ts';
import { stickyRefresh, stickyRefreshMs } from './source-sticky.ts';

describe('SourceSticky renewal', () => {
  const sets = new Set(['sticky1_4', 'sticky1_6', 'sticky2_4']);

  it('adds, deletes and adds again each source once per set, only in the sets the table holds', () => {
    const operations = stickyRefresh(
      [
        { uplink: 1, family: 4, source: '10.244.1.7' },
        { uplink: 1, family: 4, source: '10.244.1.2' },
        { uplink: 1, family: 4, source: '10.244.1.7' },
        { uplink: 1, family: 6, source: 'fd00:244::7' },
        // An uplink that is down has no set: its sources are left alone.
        { uplink: 3, family: 4, source: '10.244.1.9' },
      ],
      sets,
    );
    const text = operations.map((o) =>
      o.what === 'element' ? `${o.op} ${o.set} ${o.elements.map(renderElement).join(', ')}` : o.what,
    );
    expect(text).toEqual([
      'add sticky1_4 10.244.1.2, 10.244.1.7',
      'delete sticky1_4 10.244.1.2, 10.244.1.7',
      'add sticky1_4 10.244.1.2, 10.244.1.7',
      'add sticky1_6 fd00:244::7',
      'delete sticky1_6 fd00:244::7',
      'add sticky1_6 fd00:244::7',
    ]);
  });

  it('has nothing to do without sources', () => {
    expect(stickyRefresh([], sets)).toEqual([]);
  });

  it('renews at half the timeout, and at least every 10 s', () => {
    expect(stickyRefreshMs(1)).toBe(500);
    expect(stickyRefreshMs(16)).toBe(8000);
    expect(stickyRefreshMs(300)).toBe(10_000);
  });
});
