// A gateway agent whose failover addresses the test owns: the real Agent with the real kernel
// adapters of `dataplane/main.ts run`, started from a config file, answering /steering (streamed
// as node agents ask for it) and /status, and taking the addresses it owns from its standard
// input, one JSON array per line, which it applies with setFailoverOwned and then prints back as
// `{"owned":[...]}` (or `{"error":"..."}`); it logs on standard error. It stands in for the ownership loop, which decides
// that in a cluster, and as the loop renews its Lease, it extends the kernel's fence every third of
// a lease duration by a lease duration. SIGTERM stops it as the entry point does: its failover addresses go.
//
// failover-gateway.ts <config.json> <node> <state-dir> <listen host> <port>
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { createInterface } from 'node:readline';
import { Agent } from '../../../dataplane/agent.ts';
import { ExecConntrack } from '../../../dataplane/conntrack.ts';
import { ExecFailoverAddresses } from '../../../dataplane/failover/address.ts';
import { ExecFailoverFence } from '../../../dataplane/failover/fence.ts';
import { ExecNftables } from '../../../dataplane/nft/nftables.ts';
import { IpLinkReader } from '../../../dataplane/probe/index.ts';
import { localUplinks } from '../../../dataplane/render.ts';
import { ExecRouting } from '../../../dataplane/routing.ts';
import { gatewayTunnelOwnership } from '../../../dataplane/steering/gateway-plan.ts';
import {
  steeringReadiness,
  steeringStreamHeader,
  steeringStreamInterval,
  streamSteering,
} from '../../../dataplane/steering/gateway-readiness.ts';
import { ExecTunnelKernel } from '../../../dataplane/steering/tunnel-kernel.ts';
import { jsonLines } from '../../../common/index.ts';
import { parseGatewayConfig } from '../../../contracts/gateway/index.ts';

const [configFile = '', node = '', stateDir = '', host = '', port = ''] = process.argv.slice(2);
// Standard output answers the test; the log goes to standard error.
const log = jsonLines(
  () => 'info',
  (line) => console.error(line),
);
const config = parseGatewayConfig(JSON.parse(await readFile(configFile, 'utf8')));
const links = new IpLinkReader();
const writeSysctl = (path: string, value: string) => writeFile(`/proc/sys/${path}`, value);
const agent = new Agent({
  node,
  nft: new ExecNftables(['nft'], stateDir),
  routing: new ExecRouting(),
  conntrack: new ExecConntrack(),
  stateDir,
  interfaceAddresses: async (name) => {
    const { ipv4, ipv6 } = await links.addresses(name);
    return [ipv4, ipv6].filter((a): a is string => Boolean(a));
  },
  writeSysctl,
  tunnels: new ExecTunnelKernel(gatewayTunnelOwnership, writeSysctl),
  failover: new ExecFailoverAddresses(log),
  fence: new ExecFailoverFence(),
  log,
});
await agent.start(config);
const lease = config.failover?.leaseDurationMs ?? 600;
const extendFence = () =>
  agent
    .setFailoverFence(performance.now() + lease)
    .catch((error: Error) => log.error('Failed to extend the failover fence', { error: error.message }));
await extendFence();
setInterval(() => void extendFence(), lease / 3);

const server = createServer((req, res) => {
  if (req.url === '/status') return void res.end(`${JSON.stringify(agent.report())}\n`);
  if (req.url !== '/steering') return void res.writeHead(404).end();
  const now = () => steeringReadiness(agent.report(), localUplinks(config, node));
  const intervalMs = steeringStreamInterval(req.headers[steeringStreamHeader]);
  if (intervalMs === undefined) return void res.end(`${JSON.stringify(now())}\n`);
  streamSteering(res, intervalMs, now, (listener) => agent.onFailoverHeld(listener));
});
server.listen(Number(port), host, () => console.log(JSON.stringify({ listening: true })));

process.once('SIGTERM', () => {
  server.close();
  void agent.stop({ releaseFailover: true }).then(() => process.exit(0));
});

for await (const line of createInterface({ input: process.stdin })) {
  const owned = new Set(JSON.parse(line) as string[]);
  await agent.setFailoverOwned(owned).then(
    () => console.log(JSON.stringify({ owned: [...owned] })),
    (error: Error) => console.log(JSON.stringify({ error: error.message })),
  );
}
