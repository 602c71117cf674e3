// The local lab (`npm run lab`): a real control plane with kwok gateway nodes and naat's CRDs,
// running in the foreground until Ctrl-C. `npm run lab -- down` stops a lab left running
// elsewhere and removes everything it made.
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { killLeftovers, startCluster } from '../cluster/cluster.ts';
import { installCrds } from '../cluster/crds.ts';

const labDir = process.env.NAAT_LAB_DIR ?? '/tmp/naat-lab';
const pidFile = join(labDir, 'lab.pid');
const nodes = [
  { name: 'gateway-1', labels: { 'naat.dev/gateway': 'true' } },
  { name: 'worker-1' },
  { name: 'worker-2' },
];

async function up(): Promise<void> {
  if (existsSync(pidFile)) {
    throw new Error(`A lab is already running (${pidFile}); stop it with: npm run lab -- down`);
  }
  const started = performance.now();
  const say = (line: string) => console.log(`  ${line}`);
  console.log('Starting the naat lab');
  const cluster = await startCluster({ workloads: true, nodes, dir: labDir, progress: say });
  await writeFile(pidFile, String(process.pid));
  const stop = async () => {
    console.log('\nStopping the naat lab');
    await cluster.stop();
    await rm(labDir, { recursive: true, force: true });
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);

  await installCrds(cluster.kubeconfig);
  say('Installed the CRDs from crds/');

  console.log(`
The lab is up (${((performance.now() - started) / 1000).toFixed(1)}s). In another terminal:

  export KUBECONFIG=${cluster.kubeconfig}
  kubectl get nodes
  kubectl get naat

Press Ctrl-C to stop it, or run: npm run lab -- down`);
}

async function down(): Promise<void> {
  if (existsSync(pidFile)) {
    const pid = Number(await readFile(pidFile, 'utf8'));
    try {
      process.kill(pid, 'SIGTERM');
      while (isAlive(pid)) await new Promise((resolve) => setTimeout(resolve, 100));
    } catch {
      // The lab's process is gone already; what it left is removed below.
    }
  }
  await killLeftovers(labDir);
  await rm(labDir, { recursive: true, force: true });
  console.log('The naat lab is down');
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

const command = process.argv[2] ?? 'up';
if (command === 'up') await up();
else if (command === 'down') await down();
else {
  console.error(`Unknown lab command "${command}"; use "up" (the default) or "down"`);
  process.exit(2);
}
