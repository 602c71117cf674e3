// The gateway's handling of what a driver (a pod's sidecar, or the node agent relaying it) sends
// on an NAA stream: each message decoded as the gRPC server decodes it, then taken through the
// stream's state machine (stream.ts), with the server's answers (the token proved, a change
// applied or refused by the kernel) and the passing of time in between, in an order the input
// chooses. Invariants: decoding throws nothing but an Error; the machine never throws; a stream
// is refused only with the statuses of its rules (INTERNAL only for a failure the server reported,
// which is what an unexpected exception in the machine would also become); nothing is changed
// before the pod is proved; every association, dissociation and stamp is for the proved pod and
// its own addresses, with valid ports and time; and the pod never holds more than its limit.
//
// The input is a sequence of records, each starting with one byte `op`:
// - op % 4 = 0: a message, its length in the next two bytes (big-endian), then its bytes;
// - op % 4 = 1: the server answers the oldest effect that waits for one: the token proves the
//   pod (strict mode when op & 0x10), or the change or stamp is applied; op & 0x20: it fails
//   instead (the token proves nothing, the kernel refused the change);
// - op % 4 = 2: (op >> 2) * 16 ms pass;
// - op % 4 = 3: (op >> 2) % 3 is 0: the time for the hello is up; 1: the driver ends the stream; 2: it is gone.
// At the end of the input every waiting effect is answered, and the driver ends the stream.
import { status } from '@grpc/grpc-js';
import { AuthenticationError, type PodIdentity } from '../../../dataplane/naa/auth.ts';
import {
  openStream,
  stepStream,
  type StreamEffect,
  type StreamInput,
  type StreamRules,
  type StreamState,
} from '../../../dataplane/naa/stream.ts';
import { AssociationTable, type AssociationEntry, type PodFlow } from '../../../dataplane/naa/table.ts';
import { AssociationServiceService, type AssociateRequest, type PodRef } from '../../../proto/index.ts';

const addresses = ['10.244.1.2', 'fd00:244:1::2'];
/** Small limits, so that the fuzzer reaches them. */
const rules: StreamRules = {
  limits: { maxMessageBytes: 1 << 16, maxAssociations: 4, maxMessagesPerSecond: 20 },
  trace: (carried) => carried,
};
/** What the machine may close a stream with besides INTERNAL. */
const refusals = new Set([
  status.INVALID_ARGUMENT,
  status.PERMISSION_DENIED,
  status.UNAUTHENTICATED,
  status.RESOURCE_EXHAUSTED,
  status.DEADLINE_EXCEEDED,
  status.UNAVAILABLE,
]);
const kernelFailure = 'the kernel refused the change';

class Violation extends Error {}

export function fuzz(data: Buffer): void {
  const table = new AssociationTable();
  const now = new Date('2026-12-04T12:00:00Z');
  let clockMs = 0;
  let state = openStream(rules, clockMs);
  let identity: PodIdentity | undefined;
  /** What waits for the server's answer, oldest first: a token to check, or a change or stamp to apply. */
  const waiting: Array<{ token: PodRef } | { upserted: AssociationEntry[] }> = [];
  let failed = false;

  const take = (input: StreamInput) => {
    const before: StreamState = state;
    const step = stepStream(rules, state, input, { table, now, clockMs });
    state = step.state;
    for (const effect of step.effects) {
      check(effect, before, identity, failed);
      if (effect.type === 'authenticate') waiting.push({ token: effect.pod });
      if (effect.type === 'stamp') waiting.push({ upserted: [] });
      if (effect.type === 'change') waiting.push({ upserted: table.change(effect.change).upsert });
    }
    if (identity && table.countFor(identity.pod) > rules.limits.maxAssociations) {
      throw new Violation(`pod holds ${table.countFor(identity.pod)} associations`);
    }
  };
  const answer = (fail: boolean, strict: boolean) => {
    const next = waiting.shift();
    if (!next) return;
    if ('token' in next) {
      if (fail) return take({ type: 'authenticationFailed', error: new AuthenticationError('unauthenticated', 'no') });
      identity = { pod: next.token, addresses };
      return take({ type: 'authenticated', identity, sessionId: 'session', strict });
    }
    failed ||= fail;
    if (fail) return take({ type: 'failed', error: new Error(kernelFailure) });
    const { upserted } = next;
    take({ type: 'applied', upserted, decisions: upserted.map(() => ({ allowed: true })), at: now });
  };

  for (let at = 0; at < data.length;) {
    const op = data[at++]!;
    switch (op % 4) {
      case 0: {
        const length = ((data[at] ?? 0) << 8) | (data[at + 1] ?? 0);
        const bytes = data.subarray(at + 2, at + 2 + length);
        at += 2 + length;
        let message: AssociateRequest;
        try {
          message = AssociationServiceService.associate.requestDeserialize(bytes);
        } catch (error) {
          // Such a message never reaches the machine: gRPC ends the call. The rest of the input
          // still goes to this stream, which only explores more.
          if (error instanceof Error) continue;
          throw error;
        }
        take({ type: 'message', message });
        break;
      }
      case 1:
        answer((op & 0x20) !== 0, (op & 0x10) !== 0);
        break;
      case 2:
        clockMs += (op >> 2) * 16;
        break;
      default:
        take({ type: (['helloTimeout', 'end', 'gone'] as const)[(op >> 2) % 3]! });
    }
  }
  while (waiting.length) answer(false, false);
  take({ type: 'end' });
}

function check(effect: StreamEffect, before: StreamState, identity: PodIdentity | undefined, failed: boolean): void {
  if (before.phase === 'closed' && effect.type !== 'release' && effect.type !== 'end') {
    throw new Violation(`a closed stream made ${effect.type}`);
  }
  switch (effect.type) {
    case 'refuse':
      if (effect.code === status.INTERNAL ? !failed || effect.details !== kernelFailure : !refusals.has(effect.code)) {
        throw new Violation(`refused with ${status[effect.code]}: ${effect.details}`);
      }
      return;
    case 'change': {
      const { change } = effect;
      const pod = change.op === 'replacePod' ? change.pod : change.op === 'upsert' ? change.entry.pod : change.flow.pod;
      const flows: PodFlow[] =
        change.op === 'replacePod' ? change.entries : change.op === 'upsert' ? [change.entry] : [change.flow];
      if (!identity || pod !== identity.pod) throw new Violation('a change for a pod the stream did not prove');
      for (const flow of flows) ownFlow(flow, identity);
      return;
    }
    case 'stamp':
      if (!identity || effect.addresses !== identity.addresses)
        throw new Violation('a stamp for addresses not the pod’s');
      if (!Number.isInteger(effect.stamp) || effect.stamp < 1 || effect.stamp > 63)
        throw new Violation('a stamp out of range');
      return;
    case 'accept':
    case 'sendPolicy':
      if (effect.identity !== identity) throw new Violation(`${effect.type} for a pod the stream did not prove`);
      return;
  }
}

/** A flow of the proved pod: its own source address, ports a packet can carry, and when it was seen. */
function ownFlow(flow: PodFlow & Partial<AssociationEntry>, identity: PodIdentity): void {
  if (flow.pod !== identity.pod || !identity.addresses.includes(flow.sourceAddress)) {
    throw new Violation(`flow from ${flow.sourceAddress} is not the pod's`);
  }
  const port = (p: number) => Number.isInteger(p) && p >= 0 && p <= 65535;
  if (!port(flow.sourcePort) || flow.sourcePort === 0 || !port(flow.destinationPort)) {
    throw new Violation(`flow ports ${flow.sourcePort} ${flow.destinationPort}`);
  }
  if (flow.transport !== 'tcp' && flow.transport !== 'udp') throw new Violation(`transport ${flow.transport}`);
  if (flow.observedAt && Number.isNaN(flow.observedAt.getTime())) throw new Violation('observed at an invalid time');
}
