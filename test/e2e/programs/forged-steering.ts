// A forged gateway node for the links' security tests: answers /steering with "ready" on every
// line, over TLS with a certificate for `host` that it signs itself (no key of naat's CA), as
// someone who took over a gateway node's address would. Prints "listening" once bound.
//
// forged-steering.ts <host> <port>
import { createServer } from 'node:https';
import { lifetime, makeCa, makeServing } from '../../../operator/certificates.ts';

const [host = '', port = ''] = process.argv.slice(2);
const validity = lifetime(new Date(), 86_400_000);
const ca = makeCa('forged', validity);
const pair = makeServing(ca, [host], validity, { clientAuth: true });
const server = createServer({ ...pair }, (_req, res) => {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  const send = () => res.write(`${JSON.stringify({ ready: true })}\n`);
  send();
  const timer = setInterval(send, 100);
  res.on('close', () => clearInterval(timer));
});
server.on('tlsClientError', (error) => console.log(JSON.stringify({ msg: 'TLS client error', error: error.message })));
server.listen(Number(port), host, () => console.log('listening'));
