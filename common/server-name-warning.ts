// grpc-js sets a connection's TLS server name to the address it dials, and Node reports an IP
// address as a server name as deprecated (DEP0123), once, on stderr: a line outside the JSON log
// that log collectors and tests read. The address is still what the peer's certificate is checked
// for (an IP SAN); only that one warning is left out.

export function ignoreIpServerNameWarning(): void {
  const emit = process.emitWarning;
  process.emitWarning = function (this: NodeJS.Process, warning: string | Error, ...rest: unknown[]) {
    const code = typeof rest[0] === 'object' ? (rest[0] as { code?: string } | null)?.code : rest[1];
    if (code === 'DEP0123') return;
    return (emit as (...args: unknown[]) => void).call(process, warning, ...rest);
  } as typeof process.emitWarning;
}
