// client-node's generated API calls take no AbortSignal, but their request context has one, and a
// middleware can set it. The runtime bounds every call with it: a request to an apiserver that
// stopped answering would otherwise hang until undici's own timeouts (minutes), holding a lease
// renewal or an informer's relist with it.
import {
  Observable,
  type ConfigurationOptions,
  type RequestContext,
  type ResponseContext,
} from '@kubernetes/client-node';

/** Options for any generated API call (its last argument) that abort it when `signal` does. */
export function withSignal(signal: AbortSignal): ConfigurationOptions {
  return {
    middleware: [
      {
        pre: (context: RequestContext) => {
          context.setSignal(signal);
          return new Observable(Promise.resolve(context));
        },
        post: (response: ResponseContext) => new Observable(Promise.resolve(response)),
      },
    ],
    middlewareMergeStrategy: 'append',
  };
}

/** The HTTP status of a failed API call or watch, if it had one. */
export function statusCode(error: unknown): number | undefined {
  const { code, statusCode } = (error ?? {}) as { code?: unknown; statusCode?: unknown };
  if (typeof code === 'number') return code;
  if (typeof statusCode === 'number') return statusCode;
  return undefined;
}

/**
 * Whether the apiserver refused a create because the object's namespace is being deleted (a 403
 * whose Status names the NamespaceTerminating cause): nothing is wrong with the caller's rights.
 */
export function namespaceTerminating(error: unknown): boolean {
  if (statusCode(error) !== 403) return false;
  const { body } = (error ?? {}) as { body?: unknown };
  let status: unknown = body;
  if (typeof body === 'string') {
    try {
      status = JSON.parse(body);
    } catch {
      return false;
    }
  }
  const causes = (status as { details?: { causes?: { reason?: unknown }[] } } | undefined)?.details?.causes;
  return Array.isArray(causes) && causes.some((cause) => cause?.reason === 'NamespaceTerminating');
}
