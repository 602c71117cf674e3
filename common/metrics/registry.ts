// What the components' /metrics share, on prom-client: each component declares prom-client's
// Counter, Gauge and Histogram in a Registry of its own (never the global one, so that tests and
// several registries in one process stay apart); this module adds values read at each scrape, and
// the process, runtime and build metrics every component serves.
import { readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { findPackageJSON } from 'node:module';
import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  prometheusContentType as contentType,
  type LabelValues,
  type Registry,
} from 'prom-client';

/** The programs that serve /metrics, as `naat_build_info` names them. */
export type Component = 'gateway-agent' | 'node-agent' | 'operator';

/**
 * A `collect` (run at each scrape) that makes a counter's or gauge's series exactly the samples
 * `read` gives, like Go's CounterFunc and GaugeFunc: for values something else keeps, such as the
 * kernel's counters, a queue's length or a table's size. A metric without labels keeps its one
 * series, at 0 when `read` gives none.
 */
export function readAtScrape<L extends string>(
  read: () => Iterable<readonly [LabelValues<L>, number]>,
): (this: Counter<L> | Gauge<L>) => void {
  return function (this: Counter<L> | Gauge<L>) {
    this.reset();
    for (const [labels, value] of read()) {
      if (this instanceof Counter) this.inc(labels, value);
      else this.set(labels, value);
    }
  };
}

/** naat's version: that of the package.json nearest this module, in the source tree as in the image. */
const version = (): string => {
  const path = findPackageJSON(import.meta.url);
  return path ? String((JSON.parse(readFileSync(path, 'utf8')) as { version?: unknown }).version) : 'unknown';
};

/** Adds `naat_build_info` to `registry`: 1, with the version, the component and Node.js's version as labels. */
export function buildInfo(registry: Registry, component: Component): void {
  new Gauge({
    name: 'naat_build_info',
    help: 'Always 1; its labels say which naat version and component run, on which Node.js.',
    labelNames: ['version', 'component', 'node_version'],
    registers: [registry],
  }).set({ version: version(), component, node_version: process.version }, 1);
}

/**
 * How often the event loop's delay is sampled for nodejs_eventloop_lag_*: prom-client's 10 ms wake
 * an idle process 100 times a second, about 0.5 % of a core; 100 ms costs a tenth of that.
 */
const eventLoopSampleMs = 100;

/**
 * Adds what every component serves besides its own metrics: prom-client's process and Node.js
 * runtime metrics under their standard names (process_cpu_seconds_total,
 * process_resident_memory_bytes, nodejs_eventloop_lag_seconds, nodejs_heap_size_used_bytes, …),
 * read at each scrape, and `naat_build_info`. Called once per registry, by a program's main module.
 */
export function processMetrics(registry: Registry, component: Component): void {
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: eventLoopSampleMs });
  buildInfo(registry, component);
}

/**
 * Answers a /metrics request with the exposition `text` will hold, in the text format (0.0.4) of
 * prom-client's registries; a collect that failed makes it a 500 with the error.
 */
export function sendMetrics(res: ServerResponse, text: Promise<string>): void {
  text.then(
    (body) => {
      res.setHeader('content-type', contentType);
      res.end(body);
    },
    (error: Error) => {
      res.statusCode = 500;
      res.end(`${error.message}\n`);
    },
  );
}
