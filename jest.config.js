// Three projects: `unit` runs pure logic with nothing started; `fuzz` fuzzes pure logic for a
// bounded time; `integration` runs against a real control plane (started once in global setup)
// and real network namespaces, so it needs root.
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
        '<rootDir>/{operator,dataplane,sidecar,cli,common,contracts,crds,proto,test/cluster,test/setup}/**/*.test.ts',
        // Checks of artefacts that span components, such as the dashboard against the metrics.
        '<rootDir>/test/*.test.ts',
        // The benchmarks' harness (the benchmarks themselves run in the integration project).
        '<rootDir>/test/bench/**/*.test.ts',
        // The fuzzers' harness (the fuzzing run is the fuzz project).
        '<rootDir>/test/fuzz/*.test.ts',
      ],
      testPathIgnorePatterns: ['/node_modules/', '<rootDir>/test/fuzz/fuzz\\.test\\.ts$'],
    },
    {
      ...common,
      // A short coverage-guided fuzzing run of each target (test/fuzz/): needs nothing of the machine.
      displayName: 'fuzz',
      testMatch: ['<rootDir>/test/fuzz/fuzz.test.ts'],
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
