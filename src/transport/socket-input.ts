// Reading a socket into one reused buffer (the `onread` option of net.connect and
// tls.connect), for the sockets this side dials. With 'data' events Node allocates
// a new Buffer of at most 64 KiB for every read (16 KiB with TLS): a 64 MiB page
// stream is a thousand of them, and their memory is freed only by full GCs of the
// receiving daemon (1-3 of them, 10-20 ms, per 64 MiB measured here). Read into one
// buffer, a read takes up to READ_BUFFER bytes at once and leaves no garbage: one
// plain TCP stream between two processes here went from 1.6-2.0 to 3.1-3.4 GB/s,
// a TLS one from 0.9 to 1.1-1.2 GB/s. Node offers this to dialled sockets only,
// which is why a migration's pages flow on a connection the destination dials
// (migrator.ts).
//
// A chunk handed to the consumer is valid only during the call (the next read
// overwrites it): consumers copy what they keep (FrameDecoder.push with
// `transient` does). Bytes that arrive while no consumer is set (between the
// handshake and the connection taking over) are kept as copies and handed over
// first, in order.

export const READ_BUFFER = 1024 * 1024;

/** The consumer of a socket's bytes; `transient`: the chunk is reused after the call. */
export type ChunkConsumer = (chunk: Buffer, transient: boolean) => void;

export class SocketInput {
  private consumer: ChunkConsumer | null = null;
  private held: Buffer[] = [];

  /** For net.connect / tls.connect. */
  readonly onread = {
    buffer: Buffer.allocUnsafe(READ_BUFFER),
    callback: (n: number, buf: Uint8Array): boolean => { this.deliver(Buffer.from(buf.buffer, buf.byteOffset, n)); return true; }, // true: keep reading
  };

  /** Hand bytes to `fn` from now on (null: keep them until the next consumer). */
  consume(fn: ChunkConsumer | null): void {
    this.consumer = fn;
    while (fn && this.held.length && this.consumer === fn) fn(this.held.shift()!, false);
  }

  private deliver(chunk: Buffer): void {
    if (this.consumer) this.consumer(chunk, true);
    else this.held.push(Buffer.from(chunk));
  }
}
