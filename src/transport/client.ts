// connect(): open a connection to a ferry node (plain TCP, or TLS-PSK with a
// key), run the handshake, return the Connection.

import net from 'node:net';
import tls from 'node:tls';
import { FerryError } from '../errors.ts';
import { Connection } from './connection.ts';
import { clientHandshake, DEFAULT_HANDSHAKE_TIMEOUT_MS } from './handshake.ts';
import type { EndpointOptions } from './server.ts';
import { Shaper } from './shaper.ts';
import { SocketInput } from './socket-input.ts';
import { clientTlsOptions, tlsError, toKey } from './tls.ts';

export type ConnectOptions = EndpointOptions;

export async function connect(host: string, port: number, opts: ConnectOptions = {}): Promise<Connection> {
  const key = opts.key === undefined ? undefined : toKey(opts.key);
  const shaper = Shaper.from(opts.shaping);
  const where = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const timeoutMs = opts.timeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;

  const input = new SocketInput(); // reads into one reused buffer: no garbage per read
  const socket: net.Socket = await new Promise((resolve, reject) => {
    const s = key
      ? tls.connect({ host, port, ...clientTlsOptions(key), allowHalfOpen: false, onread: input.onread } as tls.ConnectionOptions)
      : net.connect({ host, port, allowHalfOpen: true, onread: input.onread });
    const ready = key ? 'secureConnect' : 'connect';
    const timer = setTimeout(() => { s.destroy(); reject(new FerryError('connect-timeout', `cannot connect to ${where}: no answer within ${timeoutMs} ms`)); }, timeoutMs);
    const fail = (e: Error) => {
      clearTimeout(timer);
      s.destroy();
      const code = (e as NodeJS.ErrnoException).code;
      if (key && !(code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENOTFOUND')) reject(tlsError(where, e));
      else reject(new FerryError('connect-failed', `cannot connect to ${where}: ${e.message}`, { cause: e }));
    };
    s.once('error', fail);
    s.once('close', () => fail(new Error('the connection closed before it was established')));
    s.once(ready, () => { clearTimeout(timer); s.removeAllListeners('error'); s.removeAllListeners('close'); resolve(s); });
  });
  socket.setNoDelay(true);
  socket.on('error', () => { /* reported through the handshake or the connection */ });
  try {
    const { peer, decoder } = await clientHandshake(socket, where, { ...opts, role: opts.role ?? 'node', timeoutMs }, input);
    return new Connection(socket, { label: `${peer.node}@${where}`, peer, decoder, shaper, requestTimeoutMs: opts.requestTimeoutMs, limits: opts.limits, input });
  } catch (e) {
    socket.destroy();
    if (e instanceof FerryError && (e.code === 'connection-failed' || e.code === 'connection-closed' || e.code === 'handshake-incomplete')) {
      // A keyed server that does not know our key cuts the TLS session right after it starts;
      // a keyed (TLS) server drops a plain client as soon as its bytes are not TLS.
      const hint = key ? 'wrong key?' : 'does it require a key? give --key-file or FERRY_KEY_FILE';
      const detail = e.code === 'handshake-incomplete' ? '' : `: ${e.message}`; // that one only says it again
      throw new FerryError(key ? 'auth-failed' : 'refused', `${where} closed the connection during the handshake (${hint})${detail}`, { cause: e });
    }
    throw e;
  }
}
