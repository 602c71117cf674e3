import { operatorSettings } from '../test/cluster/operator.ts';
import { parseSettings } from './settings.ts';

const minimal = operatorSettings('naat', { metrics: 8080, health: 8081, webhook: 9443 });

describe('parseSettings', () => {
  it('defaults the marks to the low byte and the tunnel port to 7790', () => {
    const settings = parseSettings(minimal);
    expect(settings.marks).toEqual({ uplinks: 0x0f, tunnel: 0x10, steering: 0xe0 });
    expect(settings.steering).toEqual({
      clusterRoleName: 'naat-node',
      port: 7790,
      metricsPort: 9092,
      healthPort: 9093,
    });
  });

  it('refuses overlapping marks, naming both and the shared bits', () => {
    expect(() => parseSettings({ ...minimal, marks: { tunnel: 0x18 } })).toThrow(
      'invalid operator configuration: /marks/uplinks: 0x0000000f overlaps marks.tunnel 0x00000018 in 0x00000008; give each its own bits',
    );
    expect(() => parseSettings({ ...minimal, marks: { uplinks: 0xff000000, steering: 0x80000000 } })).toThrow(
      /marks\/uplinks: 0xff000000 overlaps marks.steering 0x80000000 in 0x80000000/,
    );
  });

  it('refuses a mark that is not one contiguous run of bits', () => {
    expect(() => parseSettings({ ...minimal, marks: { steering: 0xa0 } })).toThrow(
      /\/marks\/steering: 0x000000a0 is not one contiguous run of bits/,
    );
  });

  it('accepts other free bits', () => {
    const marks = { uplinks: 0x00ff0000, tunnel: 0x01000000, steering: 0x0e000000 };
    expect(parseSettings({ ...minimal, marks }).marks).toEqual(marks);
  });

  it('runs the agents as root with NET_ADMIN and NET_RAW only, at system-node-critical, unless configured otherwise', () => {
    const { dataplane, sidecar } = parseSettings(minimal);
    expect(dataplane.priorityClassName).toBe('system-node-critical');
    expect(dataplane.podSecurityContext).toEqual({});
    expect(dataplane.securityContext).toEqual({
      runAsUser: 0,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'], add: ['NET_ADMIN', 'NET_RAW'] },
    });
    expect(sidecar.securityContext).toEqual({
      runAsUser: 0,
      runAsNonRoot: false,
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      capabilities: { drop: ['ALL'], add: ['DAC_READ_SEARCH', 'SYS_PTRACE'] },
    });
    const chosen = parseSettings({
      ...minimal,
      dataplane: {
        ...minimal.dataplane,
        priorityClassName: '',
        podSecurityContext: { seLinuxOptions: { type: 'spc_t' } },
      },
    }).dataplane;
    expect(chosen).toMatchObject({ priorityClassName: '', podSecurityContext: { seLinuxOptions: { type: 'spc_t' } } });
  });
});
