// Frame layout and the incremental frame decoder.
//
// Every message on a connection (after the 10-byte handshake preamble, see
// handshake.ts) is one frame. All integers are big-endian.
//
//   offset  size  field
//   0       4     u32 length: bytes after this field (8 + header length + body length)
//   4       2     u16 code: a number from the table in codes.ts
//   6       1     u8  flags: bit 0 = urgent priority class; bits 1-7 must be 0
//   7       1     u8  reserved, must be 0
//   8       4     u32 header length H (0 = no header)
//   12      H     JSON header, UTF-8, a JSON object
//   12+H    B     binary body, B = length - 8 - H
//
// The decoder accepts arbitrary chunking and checks the 12-byte prefix (frame
// size limit, header size limit, known code, flags, reserved byte, header and
// body allowed for the code) BEFORE buffering the payload, so an oversized or
// unknown frame is refused without allocating for it. Anything malformed raises
// FerryError('bad-frame', ...), after which the decoder stays failed.

import { FerryError } from '../errors.ts';
import { codeInfo, codeName, type CodeInfo, type Priority } from './codes.ts';

export const FRAME_PREFIX = 12;
export const FLAG_URGENT = 0x01;
export const DEFAULT_MAX_FRAME = 16 * 1024 * 1024; // bytes after the length field
export const DEFAULT_MAX_HEADER = 1024 * 1024;

export type Header = Record<string, unknown>;

export interface Frame {
  code: number;
  name: string;
  priority: Priority;
  header: Header;
  body: Buffer;
  /** Set when the body went to this sink as it arrived (see FrameDecoder.sinkFor); body is then empty. */
  sunk?: BodySink;
}

/** Takes a frame's body piece by piece as it arrives, instead of the decoder buffering it.
 *  write() must not throw: a sink records its own errors. Chunks are valid only during the call. */
export interface BodySink {
  write(chunk: Uint8Array): void;
  /** Where the body's next bytes (at most `max`) would go, for the socket to read them there
   *  itself (socket-input.ts); null: hand them to write(). */
  place?(max: number): Uint8Array | null;
  /** `n` bytes were read into the view place() gave. */
  placed?(n: number): void;
}

export interface FrameLimits {
  /** Largest frame accepted (length field value), default 16 MiB. */
  maxFrame?: number;
  /** Largest JSON header accepted, default 1 MiB. */
  maxHeader?: number;
}

const EMPTY = Buffer.alloc(0);

/** Encode one frame. Throws FerryError('bad-frame') if the code does not allow what is given or it is too large. */
export function encodeFrame(info: CodeInfo, header: Header | undefined, body: Uint8Array | undefined, priority: Priority = info.priority, limits: FrameLimits = {}): Buffer {
  const b = body ?? EMPTY;
  const out = encodeFrameHead(info, header, b.length, priority, limits, b.length);
  out.set(b, out.length - b.length);
  return out;
}

/**
 * The start of a frame (length, code, flags, header) whose body of `bodyLength` bytes the
 * caller sends after it, as it is (no copy), with `room` bytes left free at the end of the
 * returned buffer. Same checks as encodeFrame.
 */
export function encodeFrameHead(info: CodeInfo, header: Header | undefined, bodyLength: number, priority: Priority = info.priority, limits: FrameLimits = {}, room = 0): Buffer {
  const maxFrame = limits.maxFrame ?? DEFAULT_MAX_FRAME;
  const maxHeader = limits.maxHeader ?? DEFAULT_MAX_HEADER;
  const hasHeader = header !== undefined && Object.keys(header).length > 0;
  if (hasHeader && !info.header) throw new FerryError('bad-frame', `${info.name} frames carry no header`);
  if (bodyLength > 0 && !info.body) throw new FerryError('bad-frame', `${info.name} frames carry no body`);
  const h = hasHeader ? Buffer.from(JSON.stringify(header), 'utf8') : EMPTY;
  if (h.length > maxHeader) throw new FerryError('bad-frame', `${info.name} header of ${h.length} bytes exceeds the ${maxHeader}-byte limit`);
  const length = 8 + h.length + bodyLength;
  if (length > maxFrame) throw new FerryError('bad-frame', `${info.name} frame of ${length} bytes exceeds the ${maxFrame}-byte limit (send large data as a stream)`);
  const out = Buffer.allocUnsafe(FRAME_PREFIX + h.length + room);
  out.writeUInt32BE(length, 0);
  out.writeUInt16BE(info.code, 4);
  out[6] = priority === 'urgent' ? FLAG_URGENT : 0;
  out[7] = 0;
  out.writeUInt32BE(h.length, 8);
  h.copy(out, FRAME_PREFIX);
  return out;
}

/**
 * Incremental decoder: push() chunks of any size, get back the frames they complete.
 * After a FerryError the decoder is failed and refuses further input.
 */
export class FrameDecoder {
  readonly maxFrame: number;
  readonly maxHeader: number;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private failed: FerryError | undefined;
  /** The memory of the chunk being pushed, when it is reused after push() (see push). */
  private transient: ArrayBufferLike | undefined;
  // prefix of the frame being assembled, once checked
  private pending: { info: CodeInfo; length: number; headerLength: number; urgent: boolean; header?: Header; sink?: BodySink; left: number } | undefined;
  /** Asked once per frame with a body, when its header has arrived: a sink to stream the body to, or undefined to buffer it. */
  sinkFor: ((info: CodeInfo, header: Header, bodyLength: number) => BodySink | undefined) | undefined;

  constructor(limits: FrameLimits = {}) {
    this.maxFrame = limits.maxFrame ?? DEFAULT_MAX_FRAME;
    this.maxHeader = limits.maxHeader ?? DEFAULT_MAX_HEADER;
  }

  /** Bytes received but not yet part of a returned frame. */
  get bufferedBytes(): number { return this.buffered; }

  /** True when a frame has been started but not completed (a truncated stream ends here). */
  get midFrame(): boolean { return this.buffered > 0 || this.pending !== undefined; }

  /** Add bytes and return every frame they complete. Throws FerryError('bad-frame') on malformed input.
   *  `transient`: the chunk's memory is reused once push() returns (socket-input.ts), so the
   *  frames returned and the bytes kept for later are copies; sinks still get views of it. */
  push(chunk: Uint8Array, transient = false): Frame[] {
    this.feed(chunk);
    const out: Frame[] = [];
    this.transient = transient ? chunk.buffer : undefined;
    try {
      for (;;) {
        const f = this.read();
        if (!f) return out;
        out.push(f);
      }
    } finally {
      const last = this.chunks.length - 1;
      if (this.transient && last >= 0 && this.chunks[last]!.buffer === this.transient) this.chunks[last] = Buffer.from(this.chunks[last]!);
      this.transient = undefined;
    }
  }

  /** Where the next bytes received should be read to, if they belong to a body whose sink
   *  takes them in place (nothing else is buffered ahead of them): at most to the body's end. */
  placement(): Uint8Array | null {
    const p = this.pending;
    if (this.failed || !p?.sink?.place || this.buffered > 0 || p.left === 0) return null;
    return p.sink.place(p.left);
  }

  /** `n` bytes were read into the view placement() gave: the frame, if they complete it. */
  pushPlaced(n: number): Frame[] {
    const p = this.pending;
    if (this.failed) throw this.failed;
    if (!p?.sink?.placed || n > p.left) throw new FerryError('internal', `${n} bytes read in place, but no body of that length awaits them`);
    p.left -= n;
    p.sink.placed(n);
    if (p.left > 0) return [];
    this.pending = undefined;
    return [{ code: p.info.code, name: p.info.name, priority: p.urgent ? 'urgent' : 'bulk', header: p.header!, body: EMPTY, sunk: p.sink }];
  }

  /** Add bytes without decoding them. */
  feed(chunk: Uint8Array): void {
    if (this.failed) throw this.failed;
    if (chunk.length > 0) {
      this.chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
      this.buffered += chunk.length;
    }
  }

  /** The next complete frame, or undefined if more bytes are needed. Throws FerryError('bad-frame') on malformed input. */
  read(): Frame | undefined {
    if (this.failed) throw this.failed;
    try {
      return this.next();
    } catch (e) {
      this.failed = e instanceof FerryError ? e : new FerryError('bad-frame', `malformed frame: ${(e as Error).message}`, { cause: e });
      this.chunks = [];
      this.buffered = 0;
      throw this.failed;
    }
  }

  /** Take exactly n bytes from the front of the buffered chunks. */
  private take(n: number): Buffer {
    if (n === 0) return EMPTY;
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length >= n) {
      out = first.buffer === this.transient ? Buffer.from(first.subarray(0, n)) : first.subarray(0, n);
      if (first.length === n) this.chunks.shift(); else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - off);
        c.copy(out, off, 0, k);
        off += k;
        if (k === c.length) this.chunks.shift(); else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }

  private peekPrefix(): Buffer {
    const first = this.chunks[0];
    if (first.length >= FRAME_PREFIX) return first.subarray(0, FRAME_PREFIX);
    const out = Buffer.allocUnsafe(FRAME_PREFIX);
    let off = 0;
    for (const c of this.chunks) {
      const k = Math.min(c.length, FRAME_PREFIX - off);
      c.copy(out, off, 0, k);
      off += k;
      if (off === FRAME_PREFIX) break;
    }
    return out;
  }

  private next(): Frame | undefined {
    if (!this.pending) {
      if (this.buffered < FRAME_PREFIX) return undefined;
      const p = this.peekPrefix();
      const length = p.readUInt32BE(0);
      const code = p.readUInt16BE(4);
      const flags = p[6];
      const reserved = p[7];
      const headerLength = p.readUInt32BE(8);
      const info = codeInfo(code);
      if (!info) throw new FerryError('bad-frame', `unknown message code ${codeName(code)}`);
      if (length < 8) throw new FerryError('bad-frame', `${info.name} frame length ${length} is shorter than its fixed fields`);
      if (length > this.maxFrame) throw new FerryError('bad-frame', `${info.name} frame of ${length} bytes exceeds the ${this.maxFrame}-byte limit`);
      if (flags & ~FLAG_URGENT) throw new FerryError('bad-frame', `${info.name} frame has unknown flags 0x${flags.toString(16)}`);
      if (reserved !== 0) throw new FerryError('bad-frame', `${info.name} frame has a non-zero reserved byte`);
      if (headerLength > length - 8) throw new FerryError('bad-frame', `${info.name} header length ${headerLength} exceeds the frame length ${length}`);
      if (headerLength > this.maxHeader) throw new FerryError('bad-frame', `${info.name} header of ${headerLength} bytes exceeds the ${this.maxHeader}-byte limit`);
      if (headerLength > 0 && !info.header) throw new FerryError('bad-frame', `${info.name} frames carry no header`);
      if (length - 8 - headerLength > 0 && !info.body) throw new FerryError('bad-frame', `${info.name} frames carry no body`);
      this.take(FRAME_PREFIX);
      this.pending = { info, length, headerLength, urgent: (flags & FLAG_URGENT) !== 0, left: length - 8 - headerLength };
    }
    const p = this.pending;
    const { info, headerLength, urgent } = p;
    if (p.header === undefined) {
      // Without a sink for it, the body is buffered whole first (as the header is then).
      if (this.buffered < headerLength + (this.sinkFor ? 0 : p.left)) return undefined;
      let header: Header = {};
      if (headerLength > 0) {
        const text = this.take(headerLength).toString('utf8');
        let parsed: unknown;
        try { parsed = JSON.parse(text); } catch (e) {
          throw new FerryError('bad-frame', `${info.name} header is not valid JSON: ${(e as Error).message}`);
        }
        if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new FerryError('bad-frame', `${info.name} header is not a JSON object`);
        header = parsed as Header;
      }
      p.header = header;
      if (p.left > 0 && this.sinkFor) p.sink = this.sinkFor(info, header, p.left);
    }
    if (p.sink) {
      while (p.left > 0 && this.buffered > 0) {
        const first = this.chunks[0]!;
        const k = Math.min(first.length, p.left);
        const piece = k === first.length ? first : first.subarray(0, k);
        if (k === first.length) this.chunks.shift(); else this.chunks[0] = first.subarray(k);
        this.buffered -= k;
        p.left -= k;
        p.sink.write(piece);
      }
      if (p.left > 0) return undefined;
      this.pending = undefined;
      return { code: info.code, name: info.name, priority: urgent ? 'urgent' : 'bulk', header: p.header, body: EMPTY, sunk: p.sink };
    }
    if (this.buffered < p.left) return undefined;
    this.pending = undefined;
    const body = p.left === 0 ? EMPTY : this.take(p.left);
    return { code: info.code, name: info.name, priority: urgent ? 'urgent' : 'bulk', header: p.header, body };
  }
}
