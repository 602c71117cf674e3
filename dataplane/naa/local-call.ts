// An Associate stream between a driver and the server of its stream in the same process: the
// agents' drivers of their node's pods (node-driver.ts) hand their messages to the node agent's
// relay, or to the gateway agent's NAA server, without a socket between them. Over a socket each
// pod's stream was two gRPC calls in the one process (the driver's end and the server's), each
// keeping its last socket read alive in its message decoder (tens of KiB a pod, docs/naa.md); here
// it is two queues.
//
// Each end behaves as the grpc-js call it stands for, as far as the driver and the server use it:
// - the driver's end (`AssociateStream`): `write` a request, `end` (half-close), `cancel`; 'data'
//   for each response, then 'end' when the server ends the stream well or 'error' with its status;
// - the server's end (`ServerCall`): 'data' for each request (encoded as on the wire, then decoded
//   as the server's gRPC service would: the relay keeps the bytes), 'end' after the last,
//   'cancelled' when the driver cancels; `write` a response, `end`, and a status sent by emitting
//   'error' with its code and details; `pause` and `resume` reading.
// Messages go in order and on a later turn of the event loop, never within the call that sent them,
// as a socket would deliver them. A write returns false once `highWater` messages wait, and the end
// that wrote it gets 'drain' when they were taken; nothing is dropped.
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';
import type { AssociateStream } from '../../contracts/naa/index.ts';
import { AssociationServiceService, type AssociateRequest, type AssociateResponse } from '../../proto/index.ts';

/** What the relay and the server use of a grpc-js server call, which the server's end of a local call is too. */
export interface ServerCall<In> {
  on(event: 'data', listener: (message: In) => void): this;
  on(event: 'end' | 'drain' | 'cancelled' | 'close', listener: () => void): this;
  on(event: 'error', listener: (error: unknown) => void): this;
  /** Emitting 'error' with a code and details ends the stream with that status. */
  emit(event: 'error', error: ServiceError): boolean;
  write(response: AssociateResponse): boolean;
  end(): void;
  pause(): this;
  resume(): this;
}

/** Messages waiting at one end before a write returns false (a stream's default for objects). */
const highWater = 16;

type Item<T> = { message: T } | { end: true } | { status: { code: status; details: string } };

/** One direction of a call: what one end wrote, delivered in order to the other, held while paused. */
class Pipe<T> {
  readonly #deliver: (item: Item<T>) => void;
  readonly #drained: () => void;
  #queue: Array<Item<T>> = [];
  #paused = false;
  #scheduled = false;
  /** A write returned false: the writer is owed a 'drain'. */
  #owed = false;

  constructor(deliver: (item: Item<T>) => void, drained: () => void) {
    this.#deliver = deliver;
    this.#drained = drained;
  }

  /** Queues an item; false once `highWater` messages wait. */
  push(item: Item<T>): boolean {
    this.#queue.push(item);
    this.#schedule();
    if (this.#queue.length < highWater) return true;
    this.#owed = true;
    return false;
  }

  /** Drops what waits: the call is over. */
  clear(): void {
    this.#queue = [];
    this.#owed = false;
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.#schedule();
  }

  #schedule(): void {
    if (this.#scheduled || this.#paused || !this.#queue.length) return;
    this.#scheduled = true;
    setImmediate(() => this.#flush());
  }

  #flush(): void {
    this.#scheduled = false;
    while (!this.#paused && this.#queue.length) this.#deliver(this.#queue.shift()!);
    if (!this.#queue.length && this.#owed) {
      this.#owed = false;
      this.#drained();
    }
  }
}

/** The server's end. */
class ServerEnd<In> extends EventEmitter implements ServerCall<In> {
  readonly #call: LocalCall<In>;

  constructor(call: LocalCall<In>) {
    super();
    this.#call = call;
    // As grpc-js's server call does: emitting an error sends its status, after what was written.
    this.on('error', (error: Partial<ServiceError>) =>
      call.respond({ status: { code: error.code ?? status.UNKNOWN, details: error.details ?? error.message ?? '' } }),
    );
  }

  write(response: AssociateResponse): boolean {
    return this.#call.respond({ message: response });
  }

  end(): void {
    this.#call.respond({ end: true });
  }

  pause(): this {
    this.#call.requests.pause();
    return this;
  }

  resume(): this {
    this.#call.requests.resume();
    return this;
  }
}

/** The driver's end. */
class DriverEnd<In> extends EventEmitter implements AssociateStream {
  readonly #call: LocalCall<In>;

  constructor(call: LocalCall<In>) {
    super();
    this.#call = call;
  }

  write(request: AssociateRequest): boolean {
    return this.#call.request({ message: AssociationServiceService.associate.requestSerialize(request) });
  }

  end(): void {
    this.#call.request({ end: true });
  }

  cancel(): void {
    this.#call.cancel();
  }
}

/**
 * Both ends of one local call; `decode` makes of a request's bytes what the server's gRPC service
 * would give it (the relay's keeps them as they are).
 */
export class LocalCall<In> {
  readonly driver: AssociateStream;
  readonly server: ServerCall<In>;
  /** Requests on their way to the server. */
  readonly requests: Pipe<Buffer>;
  /** Responses on their way to the driver. */
  readonly #responses: Pipe<AssociateResponse>;
  readonly #server: ServerEnd<In>;
  /** Whether the server ended the stream (its status is on its way) or the driver cancelled it. */
  #over = false;

  constructor(decode: (bytes: Buffer) => In) {
    const driver = new DriverEnd(this);
    const server = new ServerEnd(this);
    this.driver = driver;
    this.server = server;
    this.#server = server;
    this.requests = new Pipe<Buffer>(
      (item) => {
        if ('message' in item) server.emit('data', decode(item.message));
        else server.emit('end');
      },
      () => driver.emit('drain'),
    );
    this.#responses = new Pipe<AssociateResponse>(
      (item) => {
        if ('message' in item) driver.emit('data', item.message);
        else if ('end' in item || item.status.code === status.OK) driver.emit('end');
        else driver.emit('error', serviceError(item.status.code, item.status.details));
      },
      () => server.emit('drain'),
    );
  }

  /** A stream that its server ends at once with `code`: there is none to take it. */
  static refused(code: status, details: string): AssociateStream {
    const call = new LocalCall((bytes) => bytes);
    call.server.emit('error', { code, details } as ServiceError);
    return call.driver;
  }

  request(item: Item<Buffer>): boolean {
    return this.#over || this.requests.push(item);
  }

  respond(item: Item<AssociateResponse>): boolean {
    if (this.#over) return true;
    if (!('message' in item)) {
      this.#over = true;
      this.requests.clear();
    }
    return this.#responses.push(item);
  }

  cancel(): void {
    if (this.#over) return;
    this.#over = true;
    this.requests.clear();
    this.#responses.clear();
    setImmediate(() => this.#server.emit('cancelled'));
  }
}

/** An error as grpc-js gives a client the status a server ended a call with. */
function serviceError(code: status, details: string): ServiceError {
  return Object.assign(new Error(`${code} ${status[code]}: ${details}`), { code, details, metadata: new Metadata() });
}
