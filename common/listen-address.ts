// Where a server listens, as the agents' --listen flags take it: `HOST:PORT`, `[IPV6]:PORT`, or
// `:PORT` for every address of both families. A node of an IPv6-only cluster reaches its peers
// only over IPv6, and one of an IPv4-only cluster only over IPv4, so what other nodes ask (a
// gateway agent's /steering, its association port) listens on `:PORT` in a cluster.
import { isIP } from 'node:net';

export interface ListenAddress {
  /** Undefined: every address of both families (Node listens on `::`, dual-stack, or on `0.0.0.0` without IPv6). */
  host?: string;
  /** 0 for any free port. */
  port: number;
}

/** Parses `HOST:PORT`, `[IPV6]:PORT` or `:PORT`; throws naming the text when it is none of them. */
export function parseListenAddress(text: string): ListenAddress {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text);
  const port = Number(match?.[3]);
  const host = match?.[1] ?? match?.[2];
  const bracketed = match?.[1] !== undefined;
  if (!match || port > 65535 || (bracketed && isIP(host!) !== 6) || (!bracketed && host && isIP(host) === 6)) {
    throw new Error(`"${text}" is not HOST:PORT, [IPV6]:PORT or :PORT`);
  }
  return host ? { host, port } : { port };
}

/** The address as `host:port` text (IPv6 in brackets); every address of both families as `[::]:PORT`. */
export function formatListenAddress(address: ListenAddress): string {
  const host = address.host ?? '::';
  return `${isIP(host) === 6 ? `[${host}]` : host}:${address.port}`;
}
