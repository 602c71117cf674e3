// A module loader hook (module.register) that hands on TypeScript as the JavaScript Node's type
// stripping makes of it, so that loader hooks registered after it (Jazzer.js's coverage
// instrumentation, which takes only JavaScript) see the project's .ts modules. Stripping keeps
// every line and column where it was, so stack traces point into the .ts source.
import { stripTypeScriptTypes, type LoadHook } from 'node:module';

export const load: LoadHook = async (url, context, nextLoad) => {
  const loaded = await nextLoad(url, context);
  if (loaded.format !== 'module-typescript' || loaded.source === undefined) return loaded;
  const source =
    typeof loaded.source === 'string' ? loaded.source : Buffer.from(loaded.source as Uint8Array).toString();
  return { ...loaded, format: 'module', source: stripTypeScriptTypes(source) };
};
