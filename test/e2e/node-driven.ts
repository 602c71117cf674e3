// A pod that the node agent drives (association.driver Node), as the end-to-end test and the
// benchmark make one on this machine: the Pod in the real apiserver, annotated as the webhook
// annotates it and reporting the node's address as the kubelet would, and its containers' cgroups
// as the kubelet names them (cgroupfs driver, cgroup v1, BestEffort:
// /kubepods/besteffort/pod<uid>/<container id>), which is how the node agent tells the pod's
// processes from the host's /proc.
import { mkdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { driverAnnotation } from '../../contracts/index.ts';
import { kubectl } from '../cluster/cluster.ts';
import { until } from './topology.ts';

const kubepods = '/sys/fs/cgroup/pids/kubepods';

/** The cgroup folder of a BestEffort pod, in the pids hierarchy. */
export const podCgroup = (podUid: string): string => join(kubepods, 'besteffort', `pod${podUid}`);

/**
 * Annotates the Pod as node-driven and makes it report `hostIp` as its node's address (the
 * gateways take its node agent's streams from there alone), and `podIp` as its own when given.
 */
export async function markNodeDriven(
  kubeconfig: string,
  namespace: string,
  name: string,
  hostIp: string,
  podIp?: string,
): Promise<void> {
  const k = (args: string[]) => kubectl(kubeconfig, args);
  await k(['annotate', 'pod', name, '-n', namespace, `${driverAnnotation}=Node`]);
  const status = {
    hostIP: hostIp,
    hostIPs: [{ ip: hostIp }],
    ...(podIp ? { podIP: podIp, podIPs: [{ ip: podIp }] } : {}),
  };
  await k([
    'patch',
    'pod',
    name,
    '-n',
    namespace,
    '--subresource=status',
    '--type=merge',
    '-p',
    JSON.stringify({ status }),
  ]);
}

/** A container's cgroup: made by the constructor, removed by remove() once its processes are gone. */
export class ContainerCgroup {
  readonly podUid: string;
  readonly containerId: string;
  readonly path: string;

  constructor(podUid: string, containerId: string) {
    this.podUid = podUid;
    this.containerId = containerId;
    this.path = join(podCgroup(podUid), containerId);
    mkdirSync(this.path, { recursive: true });
  }

  /** Moves a process into the container; its children are born there. */
  place(pid: number): void {
    writeFileSync(join(this.path, 'cgroup.procs'), String(pid));
  }

  /**
   * Kills what still runs in the container (a run that failed halfway leaves its programs there),
   * then removes the container's and the pod's folders, and the kubepods folders above unless
   * another pod is in them.
   */
  async remove(): Promise<void> {
    await until('the container to empty', async () => {
      const pids = (await readFile(join(this.path, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean);
      for (const pid of pids) process.kill(Number(pid), 'SIGKILL');
      return pids.length === 0 ? true : undefined;
    });
    rmdirSync(this.path);
    rmdirSync(podCgroup(this.podUid));
    for (const path of [join(kubepods, 'besteffort'), kubepods]) {
      try {
        rmdirSync(path);
      } catch {
        break;
      }
    }
  }
}
