// The local lab (`npm run lab`): the whole of naat on this machine, as root (see lab.ts and
// docs/lab.md); `usage` below lists its commands. `up` sets up the machine first (test/setup/).
//
// NAAT_LAB_DIR (/tmp/naat-lab), NAAT_LAB_PREFIX (naat-lab-) and NAAT_LAB_AGENT_PORT (7741) say
// where its files, network namespaces and the agents' APIs on the host's loopback are (gateway-1's
// at that port, gateway-2's at the next, the worker's node agent's at the one after).
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { parseCommandLine, usageError } from '../../common/index.ts';
import { outageRules } from '../e2e/topology.ts';
import { setUpMachine } from '../setup/setup.ts';
import { labSettings, removeLab, startLab, stateFile, viewSources, type Lab, type LabState } from './lab.ts';
import { gatewayNodes, namespaceOfNode, setGatewayLink } from './nodes.ts';
import { FlowMemory, readView, renderView } from './view.ts';

const usage = `usage: npm run lab [-- COMMAND]
  up [--headless]   sets up the machine (test/setup/), starts the lab and shows the live view (the default);
                    --headless prints only progress; Ctrl-C, SIGINT or SIGTERM stop it
  down              stops a lab left running and removes all it made
  fail ispN         the ISP drops everything (its uplink's health check fails)
  restore ispN      the ISP forwards again
  fail gateway-N    the gateway node's underlay link goes down: the worker's node agent
                    stops reaching it and steers new flows to the other
  restore gateway-N its underlay link comes up again
  --help            this text`;

const { positionals, values } = parseCommandLine(usage, {
  allowPositionals: true,
  options: { headless: { type: 'boolean', default: process.env.NAAT_LAB_HEADLESS === '1' } },
});
const settings = labSettings();

async function up(): Promise<void> {
  const started = performance.now();
  try {
    await setUpMachine();
  } catch (error) {
    console.error((error as Error).message);
    process.exit(1);
  }
  console.log(`Starting the naat lab in ${settings.dir}`);
  const interrupted = new AbortController();
  const interrupt = () => interrupted.abort();
  process.once('SIGINT', interrupt);
  process.once('SIGTERM', interrupt);
  let lab: Lab;
  try {
    lab = await startLab(settings, { progress: (line) => console.log(`  ${line}`), signal: interrupted.signal });
  } catch (error) {
    console.error(`\nThe lab did not start; everything it made is removed.\n${(error as Error).message}`);
    process.exit(1);
  }
  process.off('SIGINT', interrupt);
  process.off('SIGTERM', interrupt);

  const summary = `
The lab is up (${((performance.now() - started) / 1000).toFixed(1)}s). In another terminal:

  export KUBECONFIG=${lab.state.kubeconfig}
  kubectl get uplinks,egressgateways,egresspolicies -A
  ip netns exec ${settings.prefix}pod1 curl -s telnet://203.0.113.10:9000 </dev/null   # who the server sees
  ip netns exec ${settings.prefix}pod3 curl -s telnet://203.0.113.10:9000 </dev/null   # from a pod on worker-1
  curl -s ${lab.state.agentUrl}/status                                    # gateway-1's agent API
  curl -s --cacert ${lab.state.flowAccess.ca} -H "Authorization: Bearer $(cat ${lab.state.flowAccess.token})" ${lab.state.flowAgents['gateway-1']}/flows
  curl -s ${lab.state.nodeAgentUrl}/status                                    # worker-1's node agent
  npm run lab -- fail isp1                                                  # and: restore isp1
  npm run lab -- fail gateway-1                                             # and: restore gateway-1

Traces and flow records: ${lab.traces}; logs: ${settings.dir}/logs. docs/lab.md has more to try.
Ctrl-C stops the lab and removes all it made.`;
  const memory = new FlowMemory(lab.pods);
  const sources = viewSources(lab.state, lab.podNodes);
  const redraw = async () => {
    const screen = await readView(sources, memory).then(renderView, (error: Error) => `(${error.message})`);
    process.stdout.write(`\x1b[H\x1b[2J${screen}\n${summary}\n`);
  };
  const view = values.headless ? undefined : setInterval(() => void redraw(), 1000);
  const stop = async () => {
    clearInterval(view);
    console.log('\nStopping the naat lab');
    await lab.stop();
    console.log('The naat lab is down');
    process.exit(0);
  };
  process.once('SIGINT', () => void stop());
  process.once('SIGTERM', () => void stop());
  if (values.headless) console.log(summary);
  else await redraw();
}

async function state(): Promise<LabState> {
  const text = await readFile(stateFile(settings.dir), 'utf8').catch(() => {
    throw new Error(`No lab is running (no ${stateFile(settings.dir)}); start one with: npm run lab`);
  });
  return JSON.parse(text) as LabState;
}

/** `fail gateway-N`: the node's underlay link goes down; `restore gateway-N` brings it up. */
async function gatewayOutage(command: 'fail' | 'restore', node: string): Promise<void> {
  const { prefix, namespaces } = await state();
  const ns = namespaceOfNode(prefix, node)!;
  if (!namespaces.includes(ns)) throw new Error(`${ns} is not a namespace of the running lab`);
  const up = command === 'restore';
  await setGatewayLink(ns, up);
  console.log(
    up
      ? `${node} is back on the underlay; the worker steers to it again once it answers /steering`
      : `${node} is off the underlay; the worker's new flows go to the other gateway node within about a second`,
  );
}

/** `fail ispN`: the ISP drops everything it is sent; `restore ispN` undoes it. Gateway nodes: see gatewayOutage. */
async function outage(command: 'fail' | 'restore', isp: string | undefined): Promise<void> {
  if (!isp) usageError(usage, `${command} needs the ISP or gateway node to name, such as isp1 or gateway-1`);
  if (gatewayNodes.some((g) => g.name === isp)) return gatewayOutage(command, isp);
  const { prefix, namespaces } = await state();
  const ns = `${prefix}${isp}`;
  if (!/^isp\d+$/.test(isp) || !namespaces.includes(ns)) {
    throw new Error(
      `Name an ISP or a gateway node of the lab: ${namespaces
        .filter((n) => n.includes('isp'))
        .map((n) => n.slice(prefix.length))
        .concat(gatewayNodes.map((g) => g.name))}`,
    );
  }
  const nft = (args: string[], input?: string) =>
    new Promise<void>((resolve, reject) => {
      const child = execFile('ip', ['netns', 'exec', ns, 'nft', ...args], (error, _, stderr) =>
        error ? reject(new Error(stderr.trim() || error.message)) : resolve(),
      );
      child.stdin!.end(input ?? '');
    });
  // Declaring the table first makes both commands idempotent.
  if (command === 'fail') await nft(['-f', '-'], `table inet outage {}\ndelete table inet outage\n${outageRules}`);
  else await nft(['-f', '-'], 'table inet outage {}\ndelete table inet outage\n');
  console.log(
    command === 'fail'
      ? `${isp} drops everything now; its uplink goes DOWN in the view within about a second`
      : `${isp} forwards again; its uplink comes back after two good probe rounds`,
  );
}

const [command = 'up', argument] = positionals;
const takes: Record<string, number> = { up: 0, down: 0, fail: 1, restore: 1 };
if (takes[command] === undefined) usageError(usage, `Unknown lab command "${command}"`);
if (positionals.length > 1 + takes[command]!) usageError(usage, `Too many arguments: ${positionals.join(' ')}`);
try {
  if (command === 'up') await up();
  else if (command === 'down') {
    await removeLab(settings);
    console.log('The naat lab is down');
  } else await outage(command as 'fail' | 'restore', argument);
} catch (error) {
  console.error((error as Error).message);
  process.exit(1);
}
