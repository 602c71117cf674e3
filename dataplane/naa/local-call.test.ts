// Both ends of a local call, as the driver and the relay use them: messages in order and never
// within the call that sent them, reading paused and resumed, back-pressure, and the ways a stream ends.
import { status, type ServiceError } from '@grpc/grpc-js';
import { AssociationServiceService, type AssociateRequest, type AssociateResponse } from '../../proto/index.ts';
import { eventually } from '../../test/eventually.ts';
import { LocalCall } from './local-call.ts';

const request = (sequence: number): AssociateRequest => ({
  sequence,
  body: { $case: 'snapshot', value: { generation: 1, associations: [], last: true } },
});
const ack = (sequence: number): AssociateResponse => ({ body: { $case: 'ack', value: { sequence } } });
const decode = (bytes: Buffer) => AssociationServiceService.associate.requestDeserialize(bytes);

function recorded(call: LocalCall<Buffer>) {
  const events: string[] = [];
  call.server.on('data', (bytes) => events.push(`server data ${decode(bytes).sequence}`));
  call.server.on('end', () => events.push('server end'));
  call.server.on('cancelled', () => events.push('server cancelled'));
  call.server.on('drain', () => events.push('server drain'));
  call.driver.on('data', (m) => events.push(`driver data ${m.body?.$case === 'ack' ? m.body.value.sequence : ''}`));
  call.driver.on('end', () => events.push('driver end'));
  call.driver.on('error', (e) =>
    events.push(`driver error ${(e as ServiceError).code} ${(e as ServiceError).details}`),
  );
  return events;
}

test('requests reach the server encoded, in order, after the call that wrote them; responses reach the driver', async () => {
  const call = new LocalCall((bytes) => bytes);
  const events = recorded(call);
  call.driver.write(request(1));
  call.driver.write(request(2));
  call.server.write(ack(2));
  expect(events).toEqual([]);
  await eventually(() => expect(events).toEqual(['server data 1', 'server data 2', 'driver data 2']));
  call.driver.end();
  await eventually(() => expect(events.slice(3)).toEqual(['server end']));
  call.server.end();
  await eventually(() => expect(events.slice(3)).toEqual(['server end', 'driver end']));
});

test('a paused server gets nothing, its end included, until it resumes', async () => {
  const call = new LocalCall((bytes) => bytes);
  const events = recorded(call);
  call.server.pause();
  call.driver.write(request(1));
  call.driver.end();
  await new Promise((resolve) => setTimeout(resolve, 20));
  expect(events).toEqual([]);
  call.server.resume();
  await eventually(() => expect(events).toEqual(['server data 1', 'server end']));
});

test('a write says to wait once 16 messages wait, and the writer gets drain once they were taken', async () => {
  const call = new LocalCall((bytes) => bytes);
  const events = recorded(call);
  const written = Array.from({ length: 16 }, (_, i) => call.server.write(ack(i + 1)));
  expect(written.indexOf(false)).toBe(15);
  await eventually(() => expect(events.at(-1)).toBe('server drain'));
  expect(events.filter((e) => e.startsWith('driver data'))).toHaveLength(16);
});

test('a status the server emits reaches the driver after what the relay wrote, and later writes go nowhere', async () => {
  const call = new LocalCall((bytes) => bytes);
  const events = recorded(call);
  call.server.write(ack(1));
  call.server.emit('error', { code: status.PERMISSION_DENIED, details: 'not from here' } as ServiceError);
  call.server.write(ack(2));
  call.driver.write(request(2));
  await eventually(() =>
    expect(events).toEqual(['driver data 1', `driver error ${status.PERMISSION_DENIED} not from here`]),
  );
  await new Promise((resolve) => setTimeout(resolve, 20));
  expect(events).toHaveLength(2);
});

test('a driver that cancels is gone at once for the server: what waited is dropped', async () => {
  const call = new LocalCall((bytes) => bytes);
  const events = recorded(call);
  call.driver.write(request(1));
  call.driver.cancel();
  await eventually(() => expect(events).toEqual(['server cancelled']));
});

test('a refused call ends with its status', async () => {
  const stream = LocalCall.refused(status.UNAVAILABLE, 'no relay');
  const error = await new Promise<ServiceError>((resolve) => stream.on('error', (e) => resolve(e as ServiceError)));
  expect(error).toMatchObject({ code: status.UNAVAILABLE, details: 'no relay', message: '14 UNAVAILABLE: no relay' });
});
