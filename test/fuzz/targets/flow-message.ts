// A line of a /failover/flows stream as a gateway node reads it from a peer (any bytes), then
// taken into a replica and written into the `conntrack -R` file of an injection. Invariants:
// reading throws nothing but an Error; what is read is written back as one line that reads back
// the same; the replica takes it without throwing; and its injection is one line of exactly the
// words of one `conntrack -I`, so that no field can add an argument or a command to the file.
import {
  encodeMessage,
  FlowReplica,
  injectionCommands,
  parseMessage,
  type FlowMessage,
} from '../../../dataplane/failover/flow-replica.ts';

const words = { tcp: 21, udp: 19 };

export function fuzz(data: Buffer): void {
  let message: FlowMessage;
  try {
    message = parseMessage(data.toString('utf8'));
  } catch (error) {
    if (error instanceof Error) return;
    throw new Error(`threw something other than an Error: ${String(error)}`);
  }
  const line = encodeMessage(message);
  if (!line.endsWith('\n') || line.indexOf('\n') !== line.length - 1) throw new Error(`not one line: ${line}`);
  if (JSON.stringify(parseMessage(line.slice(0, -1))) !== JSON.stringify(message)) {
    throw new Error(`does not read back: ${line}`);
  }
  const replica = new FlowReplica(4);
  replica.apply('peer', message, 0);
  if (message.op !== 'flow') return;
  const command = injectionCommands(replica.flows(message.flow.address, 0));
  const lines = command.split('\n');
  const count = message.flow.timeoutSeconds > 0 ? 1 : 0;
  if (lines.length !== count + 1) throw new Error(`${lines.length - 1} lines for one flow: ${command}`);
  if (count && lines[0]!.split(' ').length !== words[message.flow.protocol]) {
    throw new Error(`an injection of other words than -I's: ${lines[0]}`);
  }
}
