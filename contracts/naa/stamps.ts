// Strict mode, the driver's half, shared by both drivers (the sidecar, and the node agent for a
// node-driven pod): the pod's programs, through the preloaded library (sidecar/stamp/naat_stamp.c),
// ask over a Unix socket for their stamp, the DSCP value their sockets carry so that the gateway
// knows their application from a flow's first packet. One stamp per application identity (process
// name, executable, container, uid): 1,000 runs of curl share one. A new identity's stamp is
// announced to the gateway, and the program is answered only once the gateway has acknowledged
// it, so that no packet carries a stamp the gateway cannot read.
//
// Stamps are kept in a file: a restarted driver gives the same identities the same numbers, which
// the programs already running have cached.
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import type { Application } from '../../proto/index.ts';

/** The six DSCP bits; 0 means unstamped. */
export const maxStamp = 63;

/**
 * What a program asks with: its pid and, from libraries that send it, its pid namespace
 * (`pid:[inode]`, as /proc/self/ns/pid links to it), both as the program sees them.
 */
export interface StampRequest {
  pid: number;
  pidNamespace?: string;
}

/** `<pid>` or `<pid> <pid namespace>`; undefined for anything else. */
export function parseStampRequest(line: string): StampRequest | undefined {
  const match = /^(\d{1,10})(?: (pid:\[\d{1,20}\]))?$/.exec(line.trim());
  if (!match) return undefined;
  const pid = Number(match[1]);
  if (pid < 1) return undefined;
  return match[2] ? { pid, pidNamespace: match[2] } : { pid };
}

export interface StampsOptions {
  /** Where the stamps handed out are kept across restarts. */
  file: string;
  /** What the asking process is, or undefined when it cannot be told (gone, or not the pod's). */
  application: (request: StampRequest) => Promise<Application | undefined>;
  /** Tells the gateway; resolves once it classifies the stamp. */
  announce: (stamp: number, application: Application) => Promise<void>;
  log: (message: string, fields?: Record<string, unknown>) => void;
}

/** The identity a stamp stands for: what the gateway's rules can match. */
export function identityOf(application: Application): string {
  return JSON.stringify([application.processName, application.executable, application.containerName, application.uid]);
}

/** A pod's stamps, and the answers to its programs' requests on whatever socket they come in. */
export class Stamps {
  readonly #o: StampsOptions;
  /** Stamp by identity, and the application first seen with it. */
  readonly #stamps = new Map<string, { stamp: number; application: Application }>();
  /** Identities whose announcement is in flight, so that concurrent askers share it. */
  readonly #announcing = new Map<string, { stamp: number; announced: Promise<number> }>();

  constructor(options: StampsOptions) {
    this.#o = options;
    if (existsSync(options.file)) {
      for (const entry of JSON.parse(readFileSync(options.file, 'utf8')) as Array<{
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

  /** Answers one request: reads a line, writes the stamp (0 when there is none) and closes. */
  serve(socket: Socket): void {
    let text = '';
    socket.setEncoding('utf8');
    socket.on('error', () => socket.destroy());
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (text.length > 64) return void socket.destroy();
      if (!text.includes('\n')) return;
      socket.removeAllListeners('data');
      const request = parseStampRequest(text);
      (request ? this.#stampOf(request) : Promise.resolve(0)).then(
        (stamp) => socket.end(`${stamp}\n`),
        (error: Error) => {
          this.#o.log('Could not stamp a process', { ...request, error: error.message });
          socket.end('0\n');
        },
      );
    });
  }

  async #stampOf(request: StampRequest): Promise<number> {
    const application = await this.#o.application(request);
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
        // A rename, so that a restart never reads a half-written file.
        writeFileSync(`${this.#o.file}.new`, JSON.stringify(this.stamps));
        renameSync(`${this.#o.file}.new`, this.#o.file);
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
