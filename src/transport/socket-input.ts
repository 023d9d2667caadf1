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

//
// Reads in place: Node asks for the buffer of each read just before it (onread.buffer
// as a function). When the consumer knows where the next bytes belong (the page bytes
// of a MIG_PAGES body: their place in the guest's memory, frame.ts placement()), the
// read goes there and nothing is copied in user space; otherwise into the reused
// buffer. A placed read never runs past the body it belongs to.

export const READ_BUFFER = 1024 * 1024;
/** A read after a placed one: a frame's prefix, its header and a page batch's head fit. */
const AFTER_PLACED = 16 * 1024;

/** The consumer of a socket's bytes; `transient`: the chunk is reused after the call. */
export type ChunkConsumer = (chunk: Buffer, transient: boolean) => void;

/** A consumer that can take bytes in place: where the next read should go (null: anywhere),
 *  and the count of bytes read there. */
export interface Placement { place(): Uint8Array | null; placed(n: number): void }

export class SocketInput {
  private consumer: ChunkConsumer | null = null;
  private placement: Placement | null = null;
  private held: Buffer[] = [];
  private readonly scratch = Buffer.allocUnsafe(READ_BUFFER);
  /** The view the read under way goes to, if placed. */
  private target: Uint8Array | null = null;
  private lastPlaced = false;

  /** For net.connect / tls.connect. */
  readonly onread = {
    buffer: (): Uint8Array => {
      this.target = this.consumer ? (this.placement?.place() ?? null) : null;
      // Right after a placed read the stream is likely at the next body's frame and head:
      // read those alone, so the body's bytes are placed too (not swallowed by a big read).
      return this.target ?? (this.lastPlaced ? this.scratch.subarray(0, AFTER_PLACED) : this.scratch);
    },
    callback: (n: number, buf: Uint8Array): boolean => {
      const t = this.target;
      this.target = null;
      this.lastPlaced = t !== null;
      if (t && buf.buffer === t.buffer && buf.byteOffset === t.byteOffset) this.placement!.placed(n);
      else this.deliver(Buffer.from(buf.buffer, buf.byteOffset, n));
      return true; // keep reading
    },
  };

  /** Hand bytes to `fn` from now on (null: keep them until the next consumer); `placement`:
   *  it takes bytes in place too. */
  consume(fn: ChunkConsumer | null, placement?: Placement): void {
    this.consumer = fn;
    this.placement = fn ? (placement ?? null) : null;
    while (fn && this.held.length && this.consumer === fn) fn(this.held.shift()!, false);
  }

  private deliver(chunk: Buffer): void {
    if (this.consumer) this.consumer(chunk, true);
    else this.held.push(Buffer.from(chunk));
  }
}
