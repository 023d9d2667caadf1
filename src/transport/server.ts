// listen(): accept connections (plain TCP, or TLS-PSK with a key), run the
// handshake on each and hand the resulting Connections to onConnection. A client
// that fails TLS or the handshake is refused (with an ERROR frame when it got as
// far as speaking ferry) and the server keeps serving.

import net from 'node:net';
import tls from 'node:tls';
import { FerryError } from '../errors.ts';
import { Connection } from './connection.ts';
import type { FrameLimits } from './frame.ts';
import { DEFAULT_HANDSHAKE_TIMEOUT_MS, type HandshakeOptions, serverHandshake } from './handshake.ts';
import { Shaper, type ShapingOptions } from './shaper.ts';
import { type KeyInput, serverTlsOptions, tlsError, toKey } from './tls.ts';

export interface EndpointOptions extends HandshakeOptions {
  /** Pre-shared key (bytes or hex): TLS-PSK when set, plain TCP when not. */
  key?: KeyInput;
  /** Pace outgoing bytes. A Shaper instance may be shared by all of a node's connections. */
  shaping?: Shaper | ShapingOptions;
  requestTimeoutMs?: number;
  limits?: FrameLimits;
}

export interface ListenOptions extends EndpointOptions {
  /** Called with each connection once its handshake has succeeded: register handlers here. */
  onConnection?: (conn: Connection) => void;
  /** Called when a client is refused (TLS failure, bad handshake). For logs; the server keeps serving. */
  onRefused?: (err: FerryError, remote: string) => void;
}

export class FerryServer {
  readonly connections = new Set<Connection>();
  /** One shaper for the node's outgoing link, shared by all accepted connections. */
  readonly shaper: Shaper | undefined;
  refused = 0;

  constructor(private readonly server: net.Server, readonly host: string, readonly port: number, shaper: Shaper | undefined) {
    this.shaper = shaper;
  }

  get address(): string { return `${this.host.includes(':') ? `[${this.host}]` : this.host}:${this.port}`; }

  /** Stop accepting, close every connection (flushing queued frames), resolve when done. */
  async close(): Promise<void> {
    const closing = new Promise<void>((r) => this.server.close(() => r()));
    await Promise.all([...this.connections].map((c) => Promise.race([c.close(), new Promise<void>((r) => setTimeout(r, 2000).unref())]).then(() => c.destroy())));
    await closing;
  }
}

function remoteOf(socket: net.Socket): string {
  const a = socket.remoteAddress ?? '?';
  return `${a.includes(':') ? `[${a}]` : a}:${socket.remotePort ?? '?'}`;
}

export async function listen(host: string, port: number, opts: ListenOptions = {}): Promise<FerryServer> {
  const key = opts.key === undefined ? undefined : toKey(opts.key);
  const shaper = Shaper.from(opts.shaping);
  const handshakeTimeoutMs = opts.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
  let ferry: FerryServer | undefined;

  const refused = (err: FerryError, remote: string) => {
    if (ferry) ferry.refused++;
    try { opts.onRefused?.(err, remote); } catch { /* logging must not break the server */ }
  };

  const accept = (socket: net.Socket) => {
    const remote = remoteOf(socket);
    socket.setNoDelay(true);
    socket.on('error', () => { /* reported through the handshake or the connection */ });
    serverHandshake(socket, `client ${remote}`, { ...opts, timeoutMs: handshakeTimeoutMs }).then(
      ({ peer, decoder }) => {
        if (socket.destroyed) return;
        const conn = new Connection(socket, { label: `${peer.node}@${remote}`, peer, decoder, shaper, requestTimeoutMs: opts.requestTimeoutMs, limits: opts.limits });
        ferry?.connections.add(conn);
        conn.onClose(() => ferry?.connections.delete(conn));
        try { opts.onConnection?.(conn); } catch (e) {
          conn.destroy(new FerryError('internal', `onConnection failed for ${conn.label}: ${(e as Error).message}`, { cause: e }));
        }
      },
      (err: FerryError) => refused(err, remote),
    );
  };

  let server: net.Server;
  if (key) {
    // No half-open TLS: a client that stops sending mid-handshake is dropped at once.
    server = tls.createServer({ ...serverTlsOptions(key, handshakeTimeoutMs), allowHalfOpen: false }, accept);
    server.on('tlsClientError', (e: Error, s: tls.TLSSocket) => {
      refused(tlsError(`client ${remoteOf(s)}`, e), remoteOf(s));
      s.destroy();
    });
  } else {
    server = net.createServer({ allowHalfOpen: true }, accept);
  }
  server.on('error', () => { /* listen errors are reported by the promise below; later ones are per-socket */ });

  await new Promise<void>((resolve, reject) => {
    const onError = (e: Error) => reject(new FerryError('listen-failed', `cannot listen on ${host}:${port}: ${e.message}`, { cause: e }));
    server.once('error', onError);
    server.listen(port, host, () => { server.off('error', onError); resolve(); });
  });
  const addr = server.address() as net.AddressInfo;
  ferry = new FerryServer(server, host, addr.port, shaper);
  return ferry;
}
