// The metrics side of the shared infrastructure: prom-client's metric types and registry, values
// read at each scrape, the process, runtime and build metrics, and the label-cardinality limit.
// It loads prom-client; the components that serve /metrics import it, the sidecar does not.
export { Counter, Gauge, Histogram, Registry } from 'prom-client';
export { LabelLimit } from './label-limit.ts';
export { buildInfo, processMetrics, readAtScrape, sendMetrics, type Component } from './registry.ts';
