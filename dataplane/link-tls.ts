// TLS of the links between naat's own components: sidecar -> agent (NAA), node agent -> gateway
// agent (the NAA relay, /steering). Each agent holds a directory (--tls-dir) with its node's key
// pair and the CA bundle that issued every agent's: `ca.crt`, `tls.crt` (CN = node name, SANs the
// node's name and InternalIPs, serverAuth and clientAuth) and `tls.key`. The files are replaced
// atomically and at any time (rotation); the directory is read again every `reloadMs`, and a
// version takes effect only when it is whole: a certificate whose key is not the one beside it
// (caught between two writes of a rotation) or an unreadable CA leaves the previous version in
// force. A new version serves new connections; established ones keep the keys they were made with,
// so a rotation drops no stream.
//
// gRPC takes the versions through its certificate providers (a server drops connections while it
// has none); HTTPS servers and clients take them per connection.
import { ServerCredentials, experimental, type ChannelCredentials } from '@grpc/grpc-js';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { tlsFiles } from '../contracts/index.ts';

/** One whole version of a TLS directory. */
export interface TlsMaterial {
  /** The CA bundle (PEM): what a peer's certificate must chain to. */
  ca: string;
  /** This node's certificate (PEM) and its key. */
  cert: string;
  key: string;
  /** The certificate's CN: the node it names. */
  node: string;
  /** When the certificate expires. */
  notAfter: Date;
}

/** The OID of extKeyUsage clientAuth: an agent's certificate proves its node as a client with it. */
const clientAuthUsage = '1.3.6.1.5.5.7.3.2';

/**
 * Checks one version of the directory's files; throws an Error that says what is wrong (a file
 * missing, a certificate whose key is not this one, a CA that does not parse).
 */
export function parseTlsMaterial(files: { ca: string; cert: string; key: string }): TlsMaterial {
  const certificate = (() => {
    try {
      return new X509Certificate(files.cert);
    } catch (error) {
      throw new Error(`${tlsFiles.cert} is not a PEM certificate: ${(error as Error).message}`, { cause: error });
    }
  })();
  try {
    new X509Certificate(files.ca);
  } catch (error) {
    throw new Error(`${tlsFiles.ca} is not a PEM certificate bundle: ${(error as Error).message}`, { cause: error });
  }
  let matches: boolean;
  try {
    matches = certificate.checkPrivateKey(createPrivateKey(files.key));
  } catch (error) {
    throw new Error(`${tlsFiles.key} is not a PEM private key: ${(error as Error).message}`, { cause: error });
  }
  if (!matches) throw new Error(`${tlsFiles.cert} is not the certificate of ${tlsFiles.key} (mid-rotation?)`);
  const node = /(?:^|\n)CN=([^\n]*)/.exec(certificate.subject)?.[1];
  if (!node) throw new Error(`${tlsFiles.cert} names no node: its subject has no CN (${certificate.subject})`);
  return { ...files, node, notAfter: new Date(certificate.validTo) };
}

/** The directory's three files as they are now; throws an Error that names one it cannot read. */
function readTlsFiles(dir: string): { ca: string; cert: string; key: string } {
  const read = (name: string) => {
    try {
      return readFileSync(join(dir, name), 'utf8');
    } catch (error) {
      const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      throw new Error(`cannot read ${name} in ${dir}: ${reason}`, { cause: error });
    }
  };
  return { ca: read(tlsFiles.ca), cert: read(tlsFiles.cert), key: read(tlsFiles.key) };
}

export async function readTlsDir(dir: string): Promise<TlsMaterial> {
  return parseTlsMaterial(readTlsFiles(dir));
}

export interface TlsDirOptions {
  /** How often the files are read again. 1 s. */
  reloadMs?: number;
  log?: (level: 'info' | 'error', message: string, fields: Record<string, unknown>) => void;
}

type CaListener = (update: experimental.CaCertificateUpdate | null) => void;
type IdentityListener = (update: experimental.IdentityCertificateUpdate | null) => void;

/**
 * A TLS directory followed as it changes: `current()` is its last whole version. It is also a gRPC
 * certificate provider of that version (the CA bundle and this node's pair).
 */
export class TlsDir implements experimental.CertificateProvider {
  readonly dir: string;
  #current: TlsMaterial | undefined;
  #reported: string | undefined;
  readonly #timer: NodeJS.Timeout;
  readonly #log: NonNullable<TlsDirOptions['log']>;
  readonly #caListeners = new Set<CaListener>();
  readonly #identityListeners = new Set<IdentityListener>();
  readonly #changeListeners = new Set<(material: TlsMaterial) => void>();
  #first: Promise<void>;
  #loaded!: () => void;

  constructor(dir: string, options: TlsDirOptions = {}) {
    this.dir = dir;
    this.#log = options.log ?? (() => {});
    this.#first = new Promise((resolve) => (this.#loaded = resolve));
    void this.reload();
    this.#timer = setInterval(() => void this.reload(), options.reloadMs ?? 1_000);
    this.#timer.unref();
  }

  /** The last whole version, or undefined while there has been none. */
  current(): TlsMaterial | undefined {
    return this.#current;
  }

  /** Resolves once a whole version was read. */
  ready(): Promise<void> {
    return this.#first;
  }

  /** Calls `listener` with every new version. */
  onChange(listener: (material: TlsMaterial) => void): void {
    this.#changeListeners.add(listener);
  }

  /**
   * Reads the directory now; a version that is not whole is reported (once) and left out. The
   * files are read synchronously (three small files of a Secret volume, in memory) and parsed only
   * when one changed: reading them through the thread pool and parsing the certificates and key
   * every second was close to a third of an idle node agent's main-thread samples in a profile.
   */
  async reload(): Promise<void> {
    const before = this.#current;
    let next: TlsMaterial;
    try {
      const files = readTlsFiles(this.dir);
      if (before && before.ca === files.ca && before.cert === files.cert && before.key === files.key) {
        this.#reported = undefined;
        return;
      }
      next = parseTlsMaterial(files);
    } catch (error) {
      const message = (error as Error).message;
      if (message !== this.#reported) {
        this.#log('error', before ? 'Kept the previous TLS key pair' : 'Waiting for a TLS key pair', {
          dir: this.dir,
          error: message,
        });
      }
      this.#reported = message;
      return;
    }
    this.#reported = undefined;
    this.#current = next;
    this.#log('info', before ? 'Loaded a renewed TLS key pair' : 'Loaded the TLS key pair', {
      dir: this.dir,
      node: next.node,
      notAfter: next.notAfter.toISOString(),
    });
    for (const listener of this.#caListeners) listener(caUpdate(next));
    for (const listener of this.#identityListeners) listener(identityUpdate(next));
    for (const listener of this.#changeListeners) listener(next);
    this.#loaded();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  addCaCertificateListener(listener: CaListener): void {
    this.#caListeners.add(listener);
    if (this.#current) process.nextTick(listener, caUpdate(this.#current));
  }

  removeCaCertificateListener(listener: CaListener): void {
    this.#caListeners.delete(listener);
  }

  addIdentityCertificateListener(listener: IdentityListener): void {
    this.#identityListeners.add(listener);
    if (this.#current) process.nextTick(listener, identityUpdate(this.#current));
  }

  removeIdentityCertificateListener(listener: IdentityListener): void {
    this.#identityListeners.delete(listener);
  }
}

const caUpdate = (m: TlsMaterial) => ({ caCertificate: Buffer.from(m.ca) });
const identityUpdate = (m: TlsMaterial) => ({ certificate: Buffer.from(m.cert), privateKey: Buffer.from(m.key) });

/**
 * An NAA server's credentials: this node's certificate, and a client certificate asked of every
 * peer but not required. Sidecars have none (their token proves their pod); a node agent's relay
 * presents its node's, which the server checks per stream (`agentNode`). One port serves both,
 * so the handshake cannot insist; a certificate that does not verify counts as none.
 */
export function naaServerCredentials(tls: TlsDir | undefined): ServerCredentials {
  if (!tls) return ServerCredentials.createInsecure();
  return experimental.createCertificateProviderServerCredentials(tls, tls, false);
}

/**
 * A relay's credentials to gateway nodes: it verifies the gateway node's certificate against the
 * CA (an IP SAN of the address it dials) and presents its own node's.
 */
export function agentChannelCredentials(tls: TlsDir): ChannelCredentials {
  return experimental.createCertificateProviderChannelCredentials(tls, tls);
}

/**
 * The node whose agent is on the other end of a stream: the CN of a client certificate that
 * verified against the CA and may be used by a client (clientAuth); undefined for a sidecar, a
 * plaintext stream or any certificate that did not verify.
 */
export function agentNode(auth: { sslPeerCertificate?: PeerCertificate } | null | undefined): string | undefined {
  return agentCertificateNode(auth?.sslPeerCertificate);
}

export function agentCertificateNode(certificate: PeerCertificate | undefined): string | undefined {
  if (!certificate?.raw) return undefined;
  const usages = (certificate as PeerCertificate & { ext_key_usage?: string[] }).ext_key_usage;
  if (usages && !usages.includes(clientAuthUsage)) return undefined;
  const cn = certificate.subject?.CN;
  return typeof cn === 'string' && cn ? cn : undefined;
}

/** What an HTTPS server or client of an agent link takes from the current version. */
export function secureContextOptions(material: TlsMaterial): { ca: string; cert: string; key: string } {
  return { ca: material.ca, cert: material.cert, key: material.key };
}

/**
 * An HTTP server on one port for plain requests and for mutual TLS: `handle` gets the node whose
 * agent certificate the request came with (verified against `tls`'s CA, clientAuth), or undefined
 * for a plain request. A TLS client without a certificate from the CA fails its handshake. The
 * agent's health port so keeps answering the kubelet's plain probes while /steering is answered
 * to agents alone.
 */
export function plainAndMutualTls(
  tls: TlsDir,
  handle: (req: IncomingMessage, res: ServerResponse, agentNode: string | undefined) => void,
): NetServer {
  const plain = createHttpServer((req, res) => handle(req, res, undefined));
  const current = tls.current();
  const secure = createHttpsServer(
    {
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      ...(current && secureContextOptions(current)),
    },
    (req, res) => handle(req, res, agentCertificateNode((req.socket as TLSSocket).getPeerCertificate())),
  );
  tls.onChange((material) => secure.setSecureContext({ ...secureContextOptions(material), minVersion: 'TLSv1.2' }));
  const server = plainOrTls(plain, secure);
  server.on('close', () => {
    plain.close();
    secure.close();
  });
  return server;
}

/**
 * One port for a plain server and a TLS one: each connection goes to the one its first byte names
 * (22, a TLS handshake record, or anything else).
 */
function plainOrTls(plain: NetServer, secure: NetServer): NetServer {
  return createNetServer((socket: Socket) => {
    const silent = () => socket.destroy();
    socket.once('error', silent);
    // A connection that never says anything is not kept.
    socket.setTimeout(10_000, silent);
    socket.once('data', (first: Buffer) => {
      socket.setTimeout(0);
      socket.removeListener('timeout', silent);
      socket.removeListener('error', silent);
      socket.pause();
      socket.unshift(first);
      if (first[0] === tlsHandshakeRecord) return void secure.emit('connection', socket);
      // The TLS socket reads what is buffered itself; the HTTP parser reads it once it flows again.
      plain.emit('connection', socket);
      socket.resume();
    });
  });
}

const tlsHandshakeRecord = 0x16;
