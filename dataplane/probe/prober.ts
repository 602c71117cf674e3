// The one place a probe protocol is chosen: a new protocol is a file beside this one that exports
// a ProtocolProbe (protocol.ts), and an entry here.
//
// Probes leave through their uplink because they carry its source address: the agent installs a
// policy-routing rule `from <address> lookup <uplink table>`, so a probe bound to the uplink's SNAT
// address (or the interface's own primary address) is routed by the uplink's table. A prober only
// has to bind the source address.
import { isIP } from 'node:net';
import type { HealthCheck } from './health.ts';
import { httpProbe } from './http.ts';
import { icmpProbe } from './icmp.ts';
import type { ProbeRequest, ProbeResult, Prober, ProbeOptions, ProtocolProbe } from './protocol.ts';
import { tcpProbe } from './tcp.ts';

const probes: Record<HealthCheck['protocol'], ProtocolProbe> = { ICMP: icmpProbe, TCP: tcpProbe, HTTP: httpProbe };

/**
 * Probes with the programs and sockets of this host: ICMP runs iputils ping (Node has no raw
 * sockets), TCP and HTTP use Node sockets bound to the source address.
 */
export class SystemProber implements Prober {
  readonly #options: ProbeOptions;

  constructor(options: ProbeOptions = {}) {
    this.#options = options;
  }

  probe(request: ProbeRequest): Promise<ProbeResult> {
    const family = isIP(request.target);
    if (family !== 4 && family !== 6)
      return Promise.resolve({ ok: false, error: `${request.target} is not an IP address` });
    if (isIP(request.sourceAddress) !== family)
      return Promise.resolve({ ok: false, error: `source ${request.sourceAddress} is not of the target's family` });
    if (request.signal?.aborted) return Promise.resolve({ ok: false, error: 'aborted' });
    return probes[request.protocol](request, family, this.#options);
  }
}
