// A gateway node's /steering answers as the test sets them: over mutual TLS with the node's own
// --tls-dir, as the gateway agent answers node agents, streamed when asked (one line per interval,
// the first at once). Each line read on stdin is merged into the answer (`{"addresses": [...]}`
// moves failover addresses here or away); the next line of every stream carries it. Prints
// "listening" once bound, on every address of both families.
//
// steering-answers.ts <tls-dir> <port>
import { createInterface } from 'node:readline';
import { plainAndMutualTls, TlsDir } from '../../../dataplane/link-tls.ts';
import {
  steeringStreamHeader,
  steeringStreamInterval,
  type SteeringReadiness,
} from '../../../dataplane/steering/gateway-readiness.ts';

const [dir = '', port = ''] = process.argv.slice(2);
let answer: SteeringReadiness = { ready: true, ipv4: true, ipv6: true, addresses: [] };
createInterface({ input: process.stdin }).on('line', (line) => {
  answer = { ...answer, ...(JSON.parse(line) as Partial<SteeringReadiness>) };
});

const tls = new TlsDir(dir);
await tls.ready();
const server = plainAndMutualTls(tls, (req, res, agentNode) => {
  if (!agentNode || req.url !== '/steering') {
    res.statusCode = 403;
    return void res.end();
  }
  const intervalMs = steeringStreamInterval(req.headers[steeringStreamHeader]);
  if (intervalMs === undefined) {
    res.statusCode = answer.ready ? 200 : 503;
    return void res.end(`${JSON.stringify(answer)}\n`);
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  const send = () => res.write(`${JSON.stringify(answer)}\n`);
  send();
  const timer = setInterval(send, intervalMs);
  res.on('close', () => clearInterval(timer));
});
server.listen({ host: '::', port: Number(port) }, () => console.log('listening'));
