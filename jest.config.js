// Two projects: `unit` runs pure logic with nothing started; `integration` runs against a real
// control plane (started once in global setup) and real network namespaces, so it needs root.
const transform = {
  '^.+\\.ts$': ['@swc/jest', { jsc: { parser: { syntax: 'typescript' }, target: 'es2024' }, module: { type: 'es6' } }],
};
const common = { transform, extensionsToTreatAsEsm: ['.ts'], testEnvironment: 'node' };

export default {
  projects: [
    {
      ...common,
      displayName: 'unit',
      testMatch: [
        '<rootDir>/{operator,dataplane,sidecar,common,contracts,crds,proto,test/cluster,test/setup}/**/*.test.ts',
        // Checks of artefacts that span components, such as the dashboard against the metrics.
        '<rootDir>/test/*.test.ts',
        // The benchmarks' harness (the benchmarks themselves run in the integration project).
        '<rootDir>/test/bench/**/*.test.ts',
      ],
    },
    {
      ...common,
      displayName: 'integration',
      testMatch: ['<rootDir>/test/{integration,e2e}/**/*.test.ts'],
      globalSetup: '<rootDir>/test/integration/global-setup.ts',
      globalTeardown: '<rootDir>/test/integration/global-teardown.ts',
      slowTestThreshold: 60,
    },
  ],
  testTimeout: 120000,
};
