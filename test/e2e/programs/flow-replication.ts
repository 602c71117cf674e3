// A gateway node's flow replication on its own, as the agent runs it (dataplane/failover): the
// flows of the addresses it owns from its conntrack events and listings, served at
// /failover/flows on its health port (plain and mutual TLS on one port, as the agent's), and the
// replica of its peers' flows followed over mutual TLS.
//
// Usage: node flow-replication.ts '<JSON options>' (see Options). Prints "ready" once it listens;
// then on each line of stdin: "state" prints {"connected": [nodes], "replica": {address: count},
// "owned": {address: count}, "refused": n}; "inject <address>" loads the replica of the address
// and prints the InjectResult, and from then on owns it.
import { createInterface } from 'node:readline';
import { defaultMarks, markField, type TunnelEndpoint } from '../../../contracts/gateway/index.ts';
import { ExecConntrack } from '../../../dataplane/conntrack.ts';
import { FlowFollower } from '../../../dataplane/failover/flow-follower.ts';
import { FlowSource, flowsPath } from '../../../dataplane/failover/flow-source.ts';
import { plainAndMutualTls, TlsDir } from '../../../dataplane/link-tls.ts';

interface Options {
  node: string;
  tlsDir: string;
  /** Where the health port listens. */
  listen: { host: string; port: number };
  /** The gateway's other nodes, as in config.failover.nodes. */
  peers: TunnelEndpoint[];
  addresses: string[];
  owned: string[];
  refreshMs?: number;
}

const options = JSON.parse(process.argv[2]!) as Options;
const log = (level: string, message: string, fields: Record<string, unknown>) =>
  console.error(JSON.stringify({ level, message, ...fields }));
const uplinks = markField(defaultMarks.uplinks);
const conntrack = new ExecConntrack();
const tls = new TlsDir(options.tlsDir, { log });
await tls.ready();

const source = new FlowSource({
  list: (address) => conntrack.list(uplinks, address),
  refreshMs: options.refreshMs,
  log,
});
let owned = options.owned;
source.setOwned(owned);
source.setPeers(options.peers.map((p) => p.node));
conntrack.watch(
  uplinks,
  (events) => source.onEvents(events),
  (error) => log('error', error.message, {}),
);
source.start();

const follower = new FlowFollower({
  peers: options.peers,
  port: options.listen.port,
  addresses: options.addresses,
  tls: () => tls.current(),
  log,
});
follower.start();

const server = plainAndMutualTls(tls, (req, res, agentNode) => {
  if (new URL(req.url ?? '/', 'http://agent').pathname === flowsPath) return source.handle(req, res, agentNode);
  res.statusCode = 404;
  res.end('not found\n');
});
await new Promise<void>((resolve) => server.listen(options.listen, resolve));
console.log('ready');

for await (const line of createInterface({ input: process.stdin })) {
  const [command, address] = line.trim().split(' ');
  if (command === 'state') {
    console.log(
      JSON.stringify({
        connected: follower.connected(),
        replica: Object.fromEntries(follower.replica.counts()),
        owned: Object.fromEntries(source.counts()),
        refused: follower.refused,
      }),
    );
  } else if (command === 'inject' && address) {
    const result = await follower.inject(address);
    owned = [...owned, address];
    source.setOwned(owned);
    console.log(JSON.stringify(result));
  }
}
