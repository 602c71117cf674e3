// A node agent's NAA relay for the end-to-end tests: listens where the sidecar dials and carries
// its streams to one gateway node. Prints "listening" once bound, and what the relay logs. With a
// TLS directory, as a node agent with --tls-dir: TLS for the sidecar, mutual TLS to the gateway.
//
// naa-relay.ts <listen host:port> <gateway node host:port> [tls dir]
import { agentChannelCredentials, naaServerCredentials, TlsDir } from '../../../dataplane/link-tls.ts';
import { NaaRelay } from '../../../dataplane/naa/relay.ts';

const [listen = '', gatewayNode = '', tlsDir] = process.argv.slice(2);
const tls = tlsDir ? new TlsDir(tlsDir) : undefined;
await tls?.ready();
const at = gatewayNode.lastIndexOf(':');
const relay = new NaaRelay({
  gateway: {
    gateway: 'naa',
    tunnel: { vni: 1, port: 4789 },
    selection: 'Pod',
    associationPort: Number(gatewayNode.slice(at + 1)),
    healthPort: 7741,
    bypass: [],
    pods: [],
    peers: [{ node: 'gateway', addresses: [gatewayNode.slice(0, at)] }],
  },
  peers: { up: () => new Set(['gateway']), onChange: () => {} },
  pinnedPeer: () => undefined,
  log: (msg, fields) => console.log(JSON.stringify({ msg, ...fields })),
  serverCredentials: naaServerCredentials(tls),
  ...(tls ? { channelCredentials: agentChannelCredentials(tls) } : {}),
});
await relay.listen(listen);
console.log('listening');
