// The NAA server's shell over loopback gRPC, with an authenticator the test answers by hand.
import { credentials, Server as Grpc, status, type ServiceError } from '@grpc/grpc-js';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AssociateStream } from '../../contracts/naa/index.ts';
import { AssociationServiceClient, type AssociateResponse, type PodRef } from '../../proto/index.ts';
import { AuthenticationError, type PodIdentity, type StreamPeer } from './auth.ts';
import { listen, NaaServer } from './server.ts';

const pod = { namespace: 'shop', name: 'web-1', uid: 'uid-1' };

test('a stream that goes away while its token is checked neither takes the pod’s session nor ends the live one', async () => {
  const answers: Array<() => void> = [];
  const server = new NaaServer({
    authenticator: {
      authenticate: (_token: string, claimed: PodRef) =>
        new Promise<PodIdentity>((resolve) => answers.push(() => resolve({ pod: claimed, addresses: ['10.0.0.5'] }))),
      authenticateNodeDriven: async () => {
        throw new Error('unused');
      },
    },
    sink: { apply: async () => {} },
  });
  const port = await server.listen('127.0.0.1:0');
  const client = new AssociationServiceClient(`127.0.0.1:${port}`, credentials.createInsecure());
  const open = () => {
    const call = client.associate();
    const received: AssociateResponse[] = [];
    const errors: ServiceError[] = [];
    call.on('data', (m: AssociateResponse) => received.push(m));
    call.on('error', (e: ServiceError) => errors.push(e));
    call.write({
      sequence: 1,
      body: {
        $case: 'hello',
        value: { protocolVersion: 1, pod, token: 't', driverVersion: 'test', mode: 1, nodeDriven: false },
      },
    });
    return { call, received, errors };
  };
  const until = async (done: () => boolean) => {
    for (let i = 0; i < 200 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
  };
  try {
    const live = open();
    await until(() => answers.length === 1);
    answers[0]!();
    await until(() => live.received.length > 0);
    expect(server.sessions).toBe(1);

    const gone = open();
    await until(() => answers.length === 2);
    gone.call.cancel();
    await new Promise((resolve) => setTimeout(resolve, 50));
    answers[1]!();
    await new Promise((resolve) => setTimeout(resolve, 50));

    expect(live.errors).toEqual([]);
    expect(server.sessions).toBe(1);
    live.call.end();
    await until(() => server.sessions === 0);
    expect(server.sessions).toBe(0);
  } finally {
    client.close();
    await server.close();
  }
});

test('listens on every address of both families at :PORT, and on the one address it is given otherwise', async () => {
  const reached = async (host: string, port: number) =>
    new Promise<boolean>((resolve) => {
      const socket = connect({ host, port }, () => {
        socket.end();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
  const both = new Grpc();
  const one = new Grpc();
  try {
    const port = await listen(both, ':0');
    expect({ v4: await reached('127.0.0.1', port), v6: await reached('::1', port) }).toEqual({ v4: true, v6: true });
    const v4Only = await listen(one, '127.0.0.1:0');
    expect({ v4: await reached('127.0.0.1', v4Only), v6: await reached('::1', v4Only) }).toEqual({
      v4: true,
      v6: false,
    });
  } finally {
    both.forceShutdown();
    one.forceShutdown();
  }
});

test('listens on a Unix socket given as unix:PATH', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'naat-naa-unix-'));
  const server = new Grpc();
  try {
    await listen(server, `unix:${join(dir, 'naa.sock')}`);
    const reached = await new Promise<boolean>((resolve) => {
      const socket = connect({ path: join(dir, 'naa.sock') }, () => {
        socket.end();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    expect(reached).toBe(true);
  } finally {
    server.forceShutdown();
    await rm(dir, { recursive: true, force: true });
  }
});

test('a node-driven hello is judged knowing whether the agent opened its stream in its process or it came from the network', async () => {
  const peers: StreamPeer[] = [];
  const server = new NaaServer({
    authenticator: {
      authenticate: async () => {
        throw new Error('unused');
      },
      authenticateNodeDriven: async (claimed: PodRef, peer: StreamPeer) => {
        peers.push(peer);
        if (!peer.local) throw new AuthenticationError('denied', 'not from the agent itself');
        return { pod: claimed, addresses: ['10.0.0.5'] };
      },
    },
    sink: { apply: async () => {} },
  });
  /** Says a node-driven hello on `target`; resolves with the first answer or how the stream ended. */
  const hello = async (target: string | (() => AssociateStream)) => {
    const client =
      typeof target === 'string' ? new AssociationServiceClient(target, credentials.createInsecure()) : undefined;
    const call: AssociateStream = client ? client.associate() : (target as () => AssociateStream)();
    try {
      return await new Promise<string>((resolve) => {
        call.on('data', (m: AssociateResponse) => resolve(m.body?.$case ?? 'empty'));
        call.on('error', (error) => {
          const { code, details } = error as ServiceError;
          resolve(`${status[code]}: ${details}`);
        });
        call.write({
          sequence: 1,
          body: {
            $case: 'hello',
            value: { protocolVersion: 1, pod, token: '', driverVersion: 'test', mode: 1, nodeDriven: true },
          },
        });
      });
    } finally {
      call.cancel();
      client?.close();
    }
  };
  try {
    const port = await server.listen('127.0.0.1:0');
    expect(await hello(() => server.openLocal())).toBe('helloAck');
    expect(await hello(`127.0.0.1:${port}`)).toBe('PERMISSION_DENIED: not from the agent itself');
    expect(peers).toEqual([{ local: true }, { address: '127.0.0.1', agentNode: undefined }]);
  } finally {
    await server.close();
  }
});
