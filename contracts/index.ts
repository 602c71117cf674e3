// The contracts between naat's components that load nothing large, so the sidecar can import
// them: addresses as the NAA protocol carries them. The compiled gateway config, which is
// validated against the API's schemas, has its own entry point, gateway/index.ts.
export { addressToBytes, bytesToAddress } from './address.ts';
