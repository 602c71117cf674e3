// The operator's controller runtime against the real apiserver: an informer-driven controller
// converges on the state of the world whatever happens to its events; informers survive broken
// connections, an apiserver that refuses connections for a while, and a watch that goes silent;
// two leader electors on one Lease never both lead, and one takes over when the other releases,
// crashes or is cut off. The apiserver is shared, so the broken and silent connections are made by
// a TCP proxy between the component under test and the apiserver.
import { connect, createServer, type Server, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { isDeepStrictEqual } from 'node:util';
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
  type KubernetesObject,
  type V1ConfigMap,
} from '@kubernetes/client-node';
import { Controller } from '../../operator/runtime/controller.ts';
import { Informer, apiListerWatcher, splitKey, type ApiListerWatcherOptions } from '../../common/kube/index.ts';
import { LeaderElector } from '../../operator/runtime/leader.ts';
import { jsonLines, type Logger } from '../../common/index.ts';
import { statusCode } from '../../common/kube/index.ts';
import { naatListPage } from '../../operator/caches.ts';
import { apiVersion, group, version, type EgressPolicy } from '../../crds/index.ts';
import { installCrds } from '../cluster/crds.ts';

// Tests share one apiserver: everything here lives in this namespace, deleted afterwards.
const namespace = `naat-runtime${process.pid}`;
const kubeConfig = new KubeConfig();
kubeConfig.loadFromFile(process.env.KUBECONFIG!);
const core = kubeConfig.makeApiClient(CoreV1Api);
const role = 'naat.dev/runtime-test';

/** Log lines of the components under test, printed when a test fails. */
const logs: string[] = [];
const log: Logger = jsonLines(
  () => 'debug',
  (line) => logs.push(line),
);
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  await core.createNamespace({ body: { metadata: { name: namespace } } });
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

afterAll(async () => {
  await core.deleteNamespace({ name: namespace }).catch(() => {});
});

/** Retries `check` until it stops throwing; the last error says what was still wrong. */
async function eventually<T>(check: () => Promise<T> | T, what: string, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() > end) {
        throw new Error(`${what}: ${(error as Error).message}\n${logs.slice(-30).join('\n')}`, { cause: error });
      }
    }
    await sleep(50);
  }
}

async function read(name: string): Promise<V1ConfigMap | undefined> {
  try {
    return await core.readNamespacedConfigMap({ namespace, name });
  } catch (error) {
    if (statusCode(error) === 404) return undefined;
    throw error;
  }
}

async function put(name: string, labels: Record<string, string>, data: Record<string, string>): Promise<void> {
  await core.patchNamespacedConfigMap(
    {
      namespace,
      name,
      body: { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, namespace, labels }, data },
      fieldManager: 'naat-runtime-test',
      force: true,
    },
    setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply),
  );
}

async function remove(name: string): Promise<void> {
  await core.deleteNamespacedConfigMap({ namespace, name }).catch((error: unknown) => {
    if (statusCode(error) !== 404) throw error;
  });
}

function configMapInformer(config: KubeConfig, labelSelector: string, options: { silenceMs?: number } = {}) {
  const api = config.makeApiClient(CoreV1Api);
  const informer = new Informer<V1ConfigMap>(
    apiListerWatcher(config, {
      path: `/api/v1/namespaces/${namespace}/configmaps`,
      labelSelector,
      list: (page, requestOptions) =>
        api.listNamespacedConfigMap({ namespace, labelSelector, ...page }, requestOptions),
    }),
    { kind: 'ConfigMap', initialBackoffMs: 100, maxBackoffMs: 1000, log, ...options },
  );
  cleanups.push(() => informer.stop());
  return informer;
}

/**
 * A TCP proxy to the apiserver that a test can break: reset every connection, refuse new ones
 * (the apiserver looks down), or leave the open ones silent (half-open connections).
 */
class ApiProxy {
  readonly #target: { host: string; port: number };
  #server: Server | undefined;
  #port = 0;
  readonly #pairs = new Set<{ client: Socket; upstream: Socket }>();

  constructor(server: string) {
    const url = new URL(server);
    this.#target = { host: url.hostname, port: Number(url.port) };
  }

  async open(): Promise<void> {
    const server = createServer((client) => {
      const upstream = connect(this.#target);
      const pair = { client, upstream };
      this.#pairs.add(pair);
      const end = () => {
        this.#pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', end).on('close', end);
      upstream.on('error', end).on('close', end);
      client.pipe(upstream);
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#port, '127.0.0.1', () => resolve());
    });
    this.#server = server;
    this.#port = (server.address() as { port: number }).port;
  }

  /** Resets every open connection. */
  reset(): void {
    for (const { client, upstream } of this.#pairs) {
      client.destroy();
      upstream.destroy();
    }
  }

  /** Stops accepting connections and resets the open ones; open() again takes the same port. */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.reset();
    if (server) await new Promise((resolve) => server.close(resolve));
  }

  /** The open connections stay open but pass nothing more from the apiserver; new ones work. */
  silence(): void {
    for (const { client, upstream } of this.#pairs) {
      upstream.unpipe(client);
      upstream.pause();
    }
    this.#pairs.clear();
  }

  /** A kubeconfig like the tests' own that reaches the apiserver through this proxy. */
  kubeConfig(): KubeConfig {
    const proxied = new KubeConfig();
    proxied.loadFromOptions({
      clusters: kubeConfig.clusters.map((cluster) => ({ ...cluster, server: `https://127.0.0.1:${this.#port}` })),
      users: kubeConfig.users,
      contexts: kubeConfig.contexts,
      currentContext: kubeConfig.currentContext,
    });
    return proxied;
  }
}

async function startProxy(): Promise<ApiProxy> {
  const proxy = new ApiProxy(kubeConfig.getCurrentCluster()!.server);
  await proxy.open();
  cleanups.push(() => proxy.close());
  return proxy;
}

test('an informer-driven controller converges: each source ConfigMap has a mirror with its data, and no mirror outlives its source', async () => {
  const sources = configMapInformer(kubeConfig, `${role}=source`);
  const mirrors = configMapInformer(kubeConfig, `${role}=mirror`);
  const running = new Set<string>();
  const overlaps: string[] = [];

  // Level-based: compare the desired mirror (from the source, or none) with the actual one, and
  // make them equal. Which event brought the key is unknown here.
  const reconcile = async (key: string) => {
    const { name } = splitKey(key);
    const mirrorName = `reconciled-${name}`;
    const source = sources.get(key);
    const mirror = mirrors.get(`${namespace}/${mirrorName}`);
    if (!source) {
      if (mirror) await remove(mirrorName);
      return;
    }
    if (mirror && isDeepStrictEqual(mirror.data ?? {}, source.data ?? {})) return;
    await put(mirrorName, { [role]: 'mirror', 'naat.dev/mirror-of': name }, source.data ?? {});
  };
  const controller = new Controller({
    name: 'mirror',
    reconcile,
    workers: 3,
    log,
    around: async (key, next) => {
      if (running.has(key)) overlaps.push(key);
      running.add(key);
      try {
        return await next();
      } finally {
        running.delete(key);
      }
    },
  });
  controller.watch(sources);
  // A mirror that changes or goes away brings back the key of its source.
  controller.watch(mirrors, (_key, mirror) => {
    const of = mirror.metadata?.labels?.['naat.dev/mirror-of'];
    return of ? [`${namespace}/${of}`] : [];
  });
  cleanups.push(() => controller.stop());

  // Objects that exist before the controller starts arrive through the first list.
  await put('first', { [role]: 'source' }, { a: '1' });
  await put('second', { [role]: 'source' }, { b: '2' });
  // A stray mirror whose source never existed.
  await put('reconciled-ghost', { [role]: 'mirror', 'naat.dev/mirror-of': 'ghost' }, { x: 'y' });
  sources.start();
  mirrors.start();
  const run = controller.run();

  const mirrored = async (name: string, data: Record<string, string> | undefined) =>
    eventually(async () => expect((await read(`reconciled-${name}`))?.data).toEqual(data), `mirror of ${name}`);
  await mirrored('first', { a: '1' });
  await mirrored('second', { b: '2' });
  await mirrored('ghost', undefined);

  // Changes to sources: created, updated, deleted, and updated many times in a burst.
  await put('third', { [role]: 'source' }, { c: '3' });
  await put('first', { [role]: 'source' }, { a: '10', extra: 'x' });
  await remove('second');
  for (let i = 0; i < 10; i++) await put('burst', { [role]: 'source' }, { i: String(i) });
  await mirrored('third', { c: '3' });
  await mirrored('first', { a: '10', extra: 'x' });
  await mirrored('second', undefined);
  await mirrored('burst', { i: '9' });

  // Someone edits or deletes a mirror: it is put back.
  await put('reconciled-first', { [role]: 'mirror', 'naat.dev/mirror-of': 'first' }, { a: 'tampered' });
  await mirrored('first', { a: '10', extra: 'x' });
  await remove('reconciled-third');
  await mirrored('third', { c: '3' });

  // A source that loses its label is no longer a source.
  await put('burst', {}, { i: '9' });
  await mirrored('burst', undefined);

  expect(overlaps).toEqual([]);
  expect(controller.queue.len).toBe(0);
  await controller.stop();
  await run;
});

/** A started informer that lists in pages of 3 through `list`, and the continue token each page was asked with. */
function pagedInformer<T extends KubernetesObject>(
  kind: string,
  path: string,
  list: ApiListerWatcherOptions<T>['list'],
  labelSelector?: string,
) {
  const pages: Array<string | undefined> = [];
  const informer = new Informer<T>(
    apiListerWatcher(kubeConfig, {
      path,
      ...(labelSelector ? { labelSelector } : {}),
      pageSize: 3,
      list: (page, requestOptions) => {
        pages.push(page._continue);
        return list(page, requestOptions);
      },
    }),
    { kind, log },
  );
  cleanups.push(() => informer.stop());
  informer.start();
  return { informer, pages };
}

test('an informer lists a big collection in pages and then follows it', async () => {
  const api = kubeConfig.makeApiClient(CoreV1Api);
  const labelSelector = 'naat-test=paged';
  for (let i = 0; i < 7; i++) await put(`paged-${i}`, { 'naat-test': 'paged' }, { i: String(i) });
  const { informer, pages } = pagedInformer<V1ConfigMap>(
    'ConfigMap',
    `/api/v1/namespaces/${namespace}/configmaps`,
    (page, requestOptions) => api.listNamespacedConfigMap({ namespace, labelSelector, ...page }, requestOptions),
    labelSelector,
  );
  expect(await informer.waitForSync()).toBe(true);
  expect(
    informer
      .list()
      .map((c) => c.metadata!.name)
      .sort(),
  ).toEqual([0, 1, 2, 3, 4, 5, 6].map((i) => `paged-${i}`));
  // Three pages: the first without a continue token, the next two with the token of the one before.
  expect(pages).toHaveLength(3);
  expect(pages[0]).toBeUndefined();
  expect(pages[1]).toEqual(expect.any(String));
  expect(pages[2]).not.toBe(pages[1]);
  await put('paged-7', { 'naat-test': 'paged' }, { i: '7' });
  await eventually(
    () => expect(informer.get(`${namespace}/paged-7`)?.data).toEqual({ i: '7' }),
    'the watch after the paged list',
  );
});

test("the operator's informers list naat's kinds in pages too, as the custom objects API names the next page", async () => {
  await installCrds(process.env.KUBECONFIG!);
  const custom = kubeConfig.makeApiClient(CustomObjectsApi);
  const names = Array.from({ length: 7 }, (_, i) => `paged-${i}`);
  for (const name of names) {
    await custom.createNamespacedCustomObject({
      group,
      version,
      namespace,
      plural: 'egresspolicies',
      body: {
        apiVersion,
        kind: 'EgressPolicy',
        metadata: { name, namespace },
        spec: { gateway: 'paged', rules: [{ name: 'dns', action: 'Allow', destinations: [{ protocol: 'UDP' }] }] },
      },
    });
  }
  const { informer, pages } = pagedInformer(
    'EgressPolicy',
    `/apis/${group}/${version}/egresspolicies`,
    naatListPage<EgressPolicy & { metadata: { name: string } }>(custom, 'EgressPolicy'),
  );
  expect(await informer.waitForSync()).toBe(true);
  expect(
    informer
      .list()
      .filter((p) => p.metadata.namespace === namespace)
      .map((p) => p.metadata.name)
      .sort(),
  ).toEqual(names);
  expect(pages.length).toBeGreaterThanOrEqual(3);
  expect(pages[0]).toBeUndefined();
  expect(pages.slice(1)).toEqual(pages.slice(1).map(() => expect.any(String)));
});

test('an informer survives reset connections and an apiserver that refuses connections, and catches up', async () => {
  const proxy = await startProxy();
  const informer = configMapInformer(proxy.kubeConfig(), `${role}=watched`);
  informer.start();
  expect(await informer.waitForSync()).toBe(true);
  const cached = () => Object.fromEntries(informer.list().map((item) => [item.metadata!.name!, item.data]));

  await put('w1', { [role]: 'watched' }, { v: '1' });
  await eventually(() => expect(cached()).toEqual({ w1: { v: '1' } }), 'the first change');

  // Every connection is reset mid-watch: client-node's own informer would stop for good here.
  proxy.reset();
  await put('w2', { [role]: 'watched' }, { v: '2' });
  await eventually(() => expect(cached()).toEqual({ w1: { v: '1' }, w2: { v: '2' } }), 'the change after the reset');
  const afterReset = informer.counts.failures;
  expect(afterReset).toBeGreaterThanOrEqual(1);

  // The apiserver cannot be reached for a while; meanwhile objects are added, changed, deleted.
  await proxy.close();
  await put('w3', { [role]: 'watched' }, { v: '3' });
  await put('w1', { [role]: 'watched' }, { v: '1b' });
  await remove('w2');
  await eventually(() => expect(informer.counts.failures).toBeGreaterThanOrEqual(afterReset + 2), 'failed retries');
  expect(cached()).toEqual({ w1: { v: '1' }, w2: { v: '2' } });
  await proxy.open();
  await eventually(() => expect(cached()).toEqual({ w1: { v: '1b' }, w3: { v: '3' } }), 'the changes made while down');
  expect(informer.hasSynced()).toBe(true);

  // And it keeps following.
  await put('w4', { [role]: 'watched' }, { v: '4' });
  await eventually(
    () => expect(cached()).toEqual({ w1: { v: '1b' }, w3: { v: '3' }, w4: { v: '4' } }),
    'a later change',
  );
});

test('an informer relists after a silent period, which recovers a watch that went silent without an error', async () => {
  const proxy = await startProxy();
  const informer = configMapInformer(proxy.kubeConfig(), `${role}=quiet`, { silenceMs: 1500 });
  informer.start();
  await informer.waitForSync();
  await put('q1', { [role]: 'quiet' }, { v: '1' });
  await eventually(() => expect(informer.get(`${namespace}/q1`)?.data).toEqual({ v: '1' }), 'the first change');

  // Nothing changes: after the silence the informer relists on its own.
  const lists = informer.counts.lists;
  await eventually(() => expect(informer.counts.lists).toBeGreaterThan(lists), 'a relist after the silence', 5000);

  // A change proves a watch is open (on a connection the proxy has now)...
  await put('q1', { [role]: 'quiet' }, { v: '1b' });
  await eventually(() => expect(informer.get(`${namespace}/q1`)?.data).toEqual({ v: '1b' }), 'a watched change');
  // ...then that watch goes silent without an error (its connection half-open). The next change
  // is seen through a relist, long before client-node's 30 s inactivity timeout would end it.
  proxy.silence();
  const silenced = { at: Date.now(), lists: informer.counts.lists };
  await put('q2', { [role]: 'quiet' }, { v: '2' });
  // The watch says nothing of it...
  await sleep(500);
  expect(informer.get(`${namespace}/q2`)).toBeUndefined();
  // ...and the relist after the silence brings it.
  await eventually(() => expect(informer.get(`${namespace}/q2`)?.data).toEqual({ v: '2' }), 'the change', 10_000);
  expect(Date.now() - silenced.at).toBeLessThan(10_000);
  expect(informer.counts.lists).toBeGreaterThan(silenced.lists);
  expect(informer.counts.failures).toBe(0);
});

describe('leader election on a Lease', () => {
  const timing = { leaseDurationSeconds: 3, renewDeadlineMs: 1500, retryPeriodMs: 250 };
  let lease = 0;

  interface Candidate {
    elector: LeaderElector;
    identity: string;
    started: number[];
    stopped: number[];
  }

  /** Electors on one Lease, and a watcher that records any moment two of them lead. */
  function election() {
    const name = `runtime-${++lease}`;
    const candidates: Candidate[] = [];
    const both: string[] = [];
    const monitor = setInterval(() => {
      const leaders = candidates.filter((candidate) => candidate.elector.isLeader);
      if (leaders.length > 1) both.push(leaders.map((leader) => leader.identity).join(' and '));
    }, 5);
    cleanups.push(async () => {
      clearInterval(monitor);
      await Promise.all(candidates.map((candidate) => candidate.elector.stop()));
    });
    const candidate = (identity: string, config = kubeConfig): Candidate => {
      const started: number[] = [];
      const stopped: number[] = [];
      const elector = new LeaderElector({
        kubeConfig: config,
        namespace,
        name,
        identity,
        ...timing,
        log,
        onStartedLeading: () => void started.push(performance.now()),
        onStoppedLeading: () => void stopped.push(performance.now()),
      });
      const made = { elector, identity, started, stopped };
      candidates.push(made);
      elector.start();
      return made;
    };
    const holder = async () =>
      (await kubeConfig.makeApiClient(CoordinationV1Api).readNamespacedLease({ namespace, name })).spec?.holderIdentity;
    const leaderAmong = (...among: Candidate[]) => among.filter((c) => c.elector.isLeader).map((c) => c.identity);
    return { candidate, both, holder, leaderAmong };
  }

  test('of two candidates starting together one leads; when it stops, it releases and the other takes over at once', async () => {
    const { candidate, both, holder, leaderAmong } = election();
    const a = candidate('a');
    const b = candidate('b');
    const [first] = await eventually(() => {
      const leaders = leaderAmong(a, b);
      expect(leaders).toHaveLength(1);
      return leaders;
    }, 'a leader');
    await sleep(1000);
    expect(leaderAmong(a, b)).toEqual([first]);
    expect(await holder()).toBe(first);

    const [leader, other] = first === 'a' ? [a, b] : [b, a];
    const stoppedAt = performance.now();
    await leader.elector.stop();
    expect(leader.stopped).toHaveLength(1);
    await eventually(() => expect(leaderAmong(a, b)).toEqual([other.identity]), 'the other to take over');
    // Well before the lease would have expired: the release let it in.
    expect(other.started[0]! - stoppedAt).toBeLessThan(timing.leaseDurationSeconds * 1000 - 500);
    expect(await holder()).toBe(other.identity);
    expect(both).toEqual([]);
  });

  test('when the leader crashes without releasing, the other takes over once the lease has expired', async () => {
    const { candidate, both, holder, leaderAmong } = election();
    const a = candidate('a');
    await eventually(() => expect(leaderAmong(a)).toEqual(['a']), 'a to lead');
    const b = candidate('b');
    await sleep(1000);
    expect(leaderAmong(a, b)).toEqual(['a']);

    const crashedAt = performance.now();
    await a.elector.stop({ release: false });
    expect(await holder()).toBe('a');
    await eventually(() => expect(leaderAmong(a, b)).toEqual(['b']), 'b to take over', 10_000);
    const waited = b.started[0]! - crashedAt;
    // a led until the crash, so it had renewed less than renewDeadlineMs before; b waits a whole
    // lease duration from when it saw that renewal.
    expect(waited).toBeGreaterThanOrEqual(timing.leaseDurationSeconds * 1000 - timing.renewDeadlineMs);
    expect(waited).toBeLessThan(timing.leaseDurationSeconds * 1000 + 3 * timing.retryPeriodMs + 1000);
    expect(both).toEqual([]);
  });

  test('a leader cut off from the apiserver stops leading before anyone else starts', async () => {
    const proxy = await startProxy();
    const { candidate, both, leaderAmong } = election();
    const a = candidate('a', proxy.kubeConfig());
    await eventually(() => expect(leaderAmong(a)).toEqual(['a']), 'a to lead');
    const b = candidate('b');
    await sleep(1000);

    await proxy.close();
    await eventually(() => expect(leaderAmong(a, b)).toEqual(['b']), 'b to take over', 10_000);
    expect(a.stopped).toHaveLength(1);
    expect(a.stopped[0]!).toBeLessThan(b.started[0]!);
    expect(both).toEqual([]);

    // Back in touch, a finds the lease held and stays a follower.
    await proxy.open();
    await sleep(1000);
    expect(leaderAmong(a, b)).toEqual(['b']);
  });
});
