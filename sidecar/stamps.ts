// Strict mode, the sidecar's half: it places the stamping library in the folder it shares with
// the pod's programs and answers their requests for a stamp on a socket there
// (contracts/naa/stamps.ts). The stamps are kept in the shared folder too: a restarted sidecar
// gives the same identities the same numbers, which the programs already running have cached.
import { chmodSync, copyFileSync, renameSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { stampLibraryName, stampSocketName } from '../contracts/index.ts';
import { Stamps } from '../contracts/naa/index.ts';
import type { Application } from '../proto/index.ts';

const stampsFileName = 'stamps.json';

export interface StampServerOptions {
  /** The folder shared with the pod's programs. */
  dir: string;
  /** The built library to place there for them to preload. */
  library: string;
  /**
   * What a process is, or undefined once it is gone. The sidecar shares the pod's process
   * namespace: the pid a program sends is the sidecar's own view of it.
   */
  application: (pid: number) => Promise<Application | undefined>;
  /** Tells the gateway; resolves once it classifies the stamp. */
  announce: (stamp: number, application: Application) => Promise<void>;
  log: (message: string, fields?: Record<string, unknown>) => void;
}

export class StampServer {
  readonly #o: StampServerOptions;
  readonly #stamps: Stamps;
  readonly #server: Server;

  constructor(options: StampServerOptions) {
    this.#o = options;
    this.#stamps = new Stamps({
      file: join(options.dir, stampsFileName),
      application: ({ pid }) => options.application(pid),
      announce: options.announce,
      log: options.log,
    });
    this.#server = createServer((socket) => this.#stamps.serve(socket));
  }

  /** Every stamp handed out so far: a new stream to the gateway announces them all first. */
  get stamps(): Array<{ stamp: number; application: Application }> {
    return this.#stamps.stamps;
  }

  /** Places the library, then listens; programs started after this resolves find both. */
  async listen(): Promise<void> {
    placeLibrary(this.#o.library, this.#o.dir);
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
}

/** Places the built library in the folder shared with the pod's programs, for them to preload. */
export function placeLibrary(library: string, dir: string): void {
  const target = join(dir, stampLibraryName);
  copyFileSync(library, `${target}.new`);
  chmodSync(`${target}.new`, 0o755);
  // A rename, so that a program loading the library never reads a half-written file.
  renameSync(`${target}.new`, target);
}
