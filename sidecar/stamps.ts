// Strict mode, the sidecar's half: the pod's programs (through the preloaded library,
// sidecar/stamp/naat_stamp.c) ask over a Unix socket for their stamp, the DSCP value their sockets
// carry so that the gateway knows their application from a flow's first packet. One stamp per
// application identity (process name, executable, container, uid): 1,000 runs of curl share one.
// A new identity's stamp is announced to the gateway, and the program is answered only once the
// gateway has acknowledged it, so that no packet carries a stamp the gateway cannot read.
//
// Stamps are kept in the shared folder: a restarted sidecar gives the same identities the same
// numbers, which the programs already running have cached.
import { chmodSync, copyFileSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Application } from '../proto/index.ts';

export const stampSocketName = 'stamp.sock';
export const stampLibraryName = 'libnaat_stamp.so';
const stampsFileName = 'stamps.json';
/** The six DSCP bits; 0 means unstamped. */
export const maxStamp = 63;

export interface StampServerOptions {
  /** The folder shared with the pod's programs. */
  dir: string;
  /** The built library to place there for them to preload. */
  library: string;
  /** What a process is, or undefined once it is gone. */
  application: (pid: number) => Promise<Application | undefined>;
  /** Tells the gateway; resolves once it classifies the stamp. */
  announce: (stamp: number, application: Application) => Promise<void>;
  log: (message: string, fields?: Record<string, unknown>) => void;
}

/** The identity a stamp stands for: what the gateway's rules can match. */
export function identityOf(application: Application): string {
  return JSON.stringify([application.processName, application.executable, application.containerName, application.uid]);
}

export class StampServer {
  readonly #o: StampServerOptions;
  readonly #server: Server;
  /** Stamp by identity, and the application first seen with it. */
  readonly #stamps = new Map<string, { stamp: number; application: Application }>();
  /** Identities whose announcement is in flight, so that concurrent askers share it. */
  readonly #announcing = new Map<string, { stamp: number; announced: Promise<number> }>();

  constructor(options: StampServerOptions) {
    this.#o = options;
    this.#server = createServer((socket) => this.#serve(socket));
    const file = join(options.dir, stampsFileName);
    if (existsSync(file)) {
      for (const entry of JSON.parse(readFileSync(file, 'utf8')) as Array<{
        stamp: number;
        application: Application;
      }>) {
        this.#stamps.set(identityOf(entry.application), entry);
      }
    }
  }

  /** Every stamp handed out so far: a new stream to the gateway announces them all first. */
  get stamps(): Array<{ stamp: number; application: Application }> {
    return [...this.#stamps.values()];
  }

  /** Places the library, then listens; programs started after this resolves find both. */
  async listen(): Promise<void> {
    const target = join(this.#o.dir, stampLibraryName);
    copyFileSync(this.#o.library, `${target}.new`);
    chmodSync(`${target}.new`, 0o755);
    // A rename, so that a program loading the library never reads a half-written file.
    renameSync(`${target}.new`, target);
    const path = join(this.#o.dir, stampSocketName);
    rmSync(path, { force: true });
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(path, () => resolve());
    });
    // The pod's programs run as any user.
    chmodSync(path, 0o666);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }

  #serve(socket: Socket): void {
    let text = '';
    socket.setEncoding('utf8');
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (text.length > 32) return void socket.destroy();
      if (!text.includes('\n')) return;
      const pid = Number(text.trim());
      socket.removeAllListeners('data');
      this.#stampOf(pid).then(
        (stamp) => socket.end(`${stamp}\n`),
        (error: Error) => {
          this.#o.log('Could not stamp a process', { pid, error: error.message });
          socket.end('0\n');
        },
      );
    });
  }

  async #stampOf(pid: number): Promise<number> {
    if (!Number.isInteger(pid) || pid < 1) return 0;
    const application = await this.#o.application(pid);
    if (!application) return 0;
    const identity = identityOf(application);
    const known = this.#stamps.get(identity);
    if (known) return known.stamp;
    const pending = this.#announcing.get(identity);
    if (pending) return pending.announced;
    const taken = new Set([...this.#stamps.values(), ...this.#announcing.values()].map((s) => s.stamp));
    const stamp = Array.from({ length: maxStamp }, (_, i) => i + 1).find((n) => !taken.has(n));
    if (!stamp) {
      this.#o.log('Out of stamps: the pod runs more applications than six DSCP bits tell apart', {
        application: application.processName,
      });
      return 0;
    }
    const announced = this.#o.announce(stamp, application).then(
      () => {
        this.#stamps.set(identity, { stamp, application });
        this.#announcing.delete(identity);
        writeFileSync(join(this.#o.dir, stampsFileName), JSON.stringify(this.stamps));
        this.#o.log('Stamped an application', { stamp, application: application.processName });
        return stamp;
      },
      (error: unknown) => {
        this.#announcing.delete(identity);
        throw error;
      },
    );
    this.#announcing.set(identity, { stamp, announced });
    return announced;
  }
}
