// The contracts between naat's components that load nothing large, so that the sidecar can import
// them: the application matchers, the environment the webhook gives a sidecar, the annotation
// that says a pod's driver, the audiences of the tokens sidecars prove their pod with and flow readers present, and how an
// agent gets its node's certificate. The compiled gateway config, which
// is validated against the API's schemas, has its own entry point, gateway/index.ts.
export { agentSignerName, agentUsages, caBundleKey, tlsFiles } from './agent-identity.ts';
export { driverAnnotation } from './association-driver.ts';
export { matchersOverlap, matchesApplication, toApplicationMatch } from './applications.ts';
export {
  containerNameVariable,
  sidecarVariables,
  stampFolder,
  stampLibraryName,
  stampSocketName,
  tokenVolume,
} from './sidecar-environment.ts';
export { flowsTokenAudience, tokenAudience } from './token-audience.ts';
