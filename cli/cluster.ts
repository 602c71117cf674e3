// The CLI's view of a cluster, through the apiserver alone with the user's kubeconfig: naat's
// objects and each gateway's ConfigMap and agent pods by GET and LIST, and an agent's own HTTP
// endpoints through the apiserver's port-forward to its pod. The agents run in the host network,
// so the kubelet dials the agent's loopback listener (--local-listen, dataplane.localPort) on the
// node: no host port is opened to the user and none is reached from the user's machine.
import { CoreV1Api, CustomObjectsApi, PortForward, type KubeConfig, type V1Pod } from '@kubernetes/client-node';
import { request } from 'node:http';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { statusCode } from '../common/kube/index.ts';
import {
  anyGatewayLabels,
  gatewayLabel,
  parseGatewayConfig,
  readGatewayConfig,
  type GatewayConfig,
} from '../contracts/gateway/index.ts';
import { definitionOf, group, version, type EgressGateway, type Uplink } from '../crds/index.ts';
import type { ExplainedPod } from './explain.ts';
import type { AgentPod } from './status.ts';

/** A gateway agent's pod, with the loopback port it serves everything on, if it has one. */
export interface AgentTarget extends AgentPod {
  localPort?: number;
}

/** Every gateway's ConfigMaps (index and slices) and agent pods. */
const agentSelector = Object.entries(anyGatewayLabels)
  .map(([key, value]) => `${key}=${value}`)
  .join(',');
/** How long an agent has to answer through the port-forward. */
const agentTimeoutMs = 15_000;

/** The port of an agent container's `--local-listen 127.0.0.1:PORT`, if it has one. */
export function localPortOf(args: readonly string[]): number | undefined {
  const at = args.indexOf('--local-listen');
  const port = at >= 0 ? /:(\d+)$/.exec(args[at + 1] ?? '')?.[1] : undefined;
  return port === undefined ? undefined : Number(port);
}

/**
 * The port-forward's error stream: the kubelet writes there why it could not dial the port. Its
 * first frame holds only the port number, which client-node strips, leaving an empty write.
 */
export function errorStream(onError: (text: string) => void): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      if (chunk.length > 0) onError(chunk.toString('utf8'));
      done();
    },
  });
}

export class NaatCluster {
  readonly #kubeConfig: KubeConfig;
  readonly #core: CoreV1Api;
  readonly #custom: CustomObjectsApi;
  /** The release namespace: where the operator runs the agents and writes their ConfigMaps. */
  readonly namespace: string;

  constructor(kubeConfig: KubeConfig, namespace: string) {
    this.#kubeConfig = kubeConfig;
    this.#core = kubeConfig.makeApiClient(CoreV1Api);
    this.#custom = kubeConfig.makeApiClient(CustomObjectsApi);
    this.namespace = namespace;
  }

  async gateways(): Promise<EgressGateway[]> {
    return this.#list('EgressGateway');
  }

  async uplinks(): Promise<Uplink[]> {
    return this.#list('Uplink');
  }

  async #list<T>(kind: 'EgressGateway' | 'Uplink'): Promise<T[]> {
    const list = await this.#custom.listClusterCustomObject({ group, version, plural: definitionOf[kind].plural });
    return (list as { items: T[] }).items;
  }

  /**
   * Each gateway's compiled config, by gateway, assembled from its index and slices (one list of
   * the gateways' ConfigMaps holds both); a config that does not parse or assemble is left out.
   */
  async configs(): Promise<Map<string, GatewayConfig>> {
    const list = await this.#core.listNamespacedConfigMap({ namespace: this.namespace, labelSelector: agentSelector });
    const data = new Map(list.items.map((configMap) => [configMap.metadata?.name ?? '', configMap.data ?? {}]));
    const gateways = new Set(list.items.map((configMap) => configMap.metadata?.labels?.[gatewayLabel]));
    const configs = new Map<string, GatewayConfig>();
    for (const gateway of gateways) {
      if (!gateway) continue;
      try {
        const config = await readGatewayConfig(gateway, (name) => Promise.resolve(data.get(name)));
        if (config) configs.set(gateway, parseGatewayConfig(config));
      } catch {
        // The agents keep their last good config; so does the CLI's explanation, by leaving it out.
      }
    }
    return configs;
  }

  /** The gateway agents' pods that are scheduled, on their nodes. */
  async agents(): Promise<AgentTarget[]> {
    const list = await this.#core.listNamespacedPod({ namespace: this.namespace, labelSelector: agentSelector });
    return list.items.flatMap((pod) => {
      const target = agentTarget(pod);
      return target ? [target] : [];
    });
  }

  async pod(namespace: string, name: string): Promise<ExplainedPod> {
    const pod = await this.#core.readNamespacedPod({ namespace, name }).catch((error: unknown) => {
      throw statusCode(error) === 404 ? new Error(`pod ${namespace}/${name} not found`) : error;
    });
    const addresses = (pod.status?.podIPs ?? []).map((ip) => ip.ip).filter((ip) => ip);
    if (!addresses.length) throw new Error(`pod ${namespace}/${name} has no address yet`);
    return { namespace, name, addresses };
  }

  /**
   * GETs `path` from the agent's loopback listener through a port-forward to its pod and parses
   * the JSON it answers; throws naming the agent when it cannot be reached or answers otherwise.
   */
  async fromAgent<T>(agent: AgentTarget, path: string): Promise<T> {
    const where = `the agent of gateway ${agent.gateway} on node ${agent.node}`;
    if (agent.localPort === undefined) {
      throw new Error(`${where} has no loopback listener (--local-listen): its operator predates the CLI`);
    }
    const { status, text } = await this.#forwardedGet(agent.pod, agent.localPort, path).catch((error: Error) => {
      throw new Error(`${where} could not be reached through pods/portforward: ${error.message}`);
    });
    if (status !== 200) throw new Error(`${where} answered ${status}: ${text.trim()}`);
    return JSON.parse(text) as T;
  }

  /**
   * One HTTP GET through a port-forward: a listener on this machine's loopback, closed again after
   * the request, hands its one connection to the apiserver's port-forward stream to the pod.
   */
  async #forwardedGet(pod: string, port: number, path: string): Promise<{ status: number; text: string }> {
    const forward = new PortForward(this.#kubeConfig);
    let failure: string | undefined;
    const sockets = new Set<Socket>();
    const server = createServer((socket) => {
      sockets.add(socket);
      const errors = errorStream((text) => {
        failure = (failure ?? '') + text;
        socket.destroy();
      });
      forward.portForward(this.namespace, pod, [port], socket, errors, socket).then(
        (ws) => socket.on('close', () => (typeof ws === 'function' ? ws()?.close() : ws.close())),
        (error: Error) => {
          failure = error.message;
          socket.destroy();
        },
      );
    });
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
    const { port: local } = server.address() as AddressInfo;
    try {
      return await new Promise((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port: local,
            path,
            agent: false,
            headers: { connection: 'close' },
            timeout: agentTimeoutMs,
          },
          (res) => {
            let text = '';
            res.setEncoding('utf8').on('data', (chunk: string) => (text += chunk));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
            res.on('error', reject);
          },
        );
        req.on('timeout', () => req.destroy(new Error(`no answer in ${agentTimeoutMs / 1000} s`)));
        req.on('error', (error) => reject(new Error(failure?.trim() || error.message)));
        req.end();
      });
    } finally {
      for (const socket of sockets) socket.destroy();
      server.close();
    }
  }
}

function agentTarget(pod: V1Pod): AgentTarget | undefined {
  const gateway = pod.metadata?.labels?.[gatewayLabel];
  const node = pod.spec?.nodeName;
  if (!gateway || !node || !pod.metadata?.name) return undefined;
  const container = pod.spec?.containers.find((c) => c.name === 'dataplane') ?? pod.spec?.containers[0];
  const localPort = localPortOf(container?.args ?? []);
  return {
    gateway,
    node,
    pod: pod.metadata.name,
    ready: pod.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') ?? false,
    ...(localPort !== undefined ? { localPort } : {}),
  };
}
