// A node agent's NAA relay for the end-to-end tests: listens where the sidecar dials and carries
// its streams to one gateway node. Prints "listening" once bound, and what the relay logs.
//
// naa-relay.ts <listen host:port> <gateway node host:port>
import { NaaRelay } from '../../../dataplane/naa/relay.ts';

const [listen = '', gatewayNode = ''] = process.argv.slice(2);
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
});
await relay.listen(listen);
console.log('listening');
