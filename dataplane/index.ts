// The dataplane's public entry point for other components: the audience of the tokens sidecars
// prove their pod with.
export { tokenAudience } from './naa/auth.ts';
