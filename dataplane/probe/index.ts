// Uplink health: whether new flows may use an uplink on this node. A pure core decides from probe
// rounds and the interface's carrier (health.ts); one prober per protocol (icmp.ts, tcp.ts,
// http.ts, chosen in prober.ts) probes a target through the uplink; the monitor (monitor.ts)
// probes each uplink's targets on a timer, reads its interface through `ip` and watches carrier
// changes (link.ts), and reports flips.
export * from './health.ts';
export { httpCheck, type HttpCheck } from './http.ts';
export { parsePingRtt } from './icmp.ts';
export * from './link.ts';
export * from './monitor.ts';
export { SystemProber } from './prober.ts';
export type { Prober, ProbeRequest, ProbeResult } from './protocol.ts';
