// A Connection: one handshaken socket (TCP or TLS) carrying frames both ways.
//
// Sending: two priority classes. send() puts a frame on the urgent or the bulk
// queue; the writer always drains the urgent queue first, one frame at a time,
// and respects socket backpressure ('drain'). Bulk data goes as streams, split
// into small STREAM_DATA frames (64 KiB; smaller on a slow shaped link), so an
// urgent frame (a page fault's PAGE_REQUEST / PAGE_DATA) waits for at most one
// bulk frame instead of the whole transfer. With a Shaper the writer paces the
// bytes it hands to the socket (urgent frames jump the queue but are paced too).
//
// Requests: request() tags the header with a numeric `id` and resolves with the
// frame whose header has `re` equal to it (a RESPONSE, PAGE_DATA, PONG, ...), or
// rejects with the peer's ERROR, a timeout, or the connection closing (the error
// names the peer). handle(code, fn) answers requests; on(code, fn) observes
// one-way messages. A request with no handler is answered with an ERROR.
//
// A malformed frame from the peer is answered with an ERROR frame naming the
// problem, then the connection closes. Incoming data is not flow-controlled per
// stream: consumers of incoming streams should read them promptly.

import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { FerryError } from '../errors.ts';
import { CODES, type CodeName, type Priority, resolveCode } from './codes.ts';
import { type BodySink, encodeFrame, encodeFrameHead, type Frame, FrameDecoder, type FrameLimits, type Header } from './frame.ts';
import type { HelloInfo } from './handshake.ts';
import { DelayLine, Shaper } from './shaper.ts';
import type { SocketInput } from './socket-input.ts';

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000;
export const DEFAULT_CHUNK_SIZE = 64 * 1024;
const MAX_IN_FLIGHT = 16 * 1024 * 1024; // bytes a shaped link may hold in its delay line (latency-only shaping is otherwise unbounded)
const STREAM_WINDOW_FRAMES = 8; // STREAM_DATA frames a stream may have queued but not yet written
const WRITE_AHEAD = 2 * 1024 * 1024; // bytes an unshaped writer leaves in the socket's buffer before it waits for 'drain'
const GATHER_MIN = 64 * 1024; // a body given as parts smaller than this is copied into the frame
const TLS_SLICE = 256 * 1024; // largest write() a TLS connection makes of a frame's parts (writeEach)

export interface Message extends Frame {
  /** header.id when the sender expects a reply. */
  id?: number;
  /** header.re when this answers a request. */
  re?: number;
}

export interface SendOptions { priority?: Priority }
export interface RequestOptions extends SendOptions { timeoutMs?: number }

export interface Reply {
  /** Defaults to RESPONSE. */
  code?: CodeName | number;
  header?: Header;
  body?: Uint8Array;
  priority?: Priority;
}

export type RequestHandler = (msg: Message, conn: Connection) => Reply | void | Promise<Reply | void>;
export type MessageHandler = (msg: Message, conn: Connection) => void;

export interface ConnectionOptions {
  /** Human-readable name of the peer for errors: "node-b@127.0.0.1:4000". */
  label: string;
  peer: HelloInfo;
  /** The handshake's decoder (it may already hold bytes that followed the handshake frame). */
  decoder?: FrameDecoder;
  shaper?: Shaper;
  requestTimeoutMs?: number;
  limits?: FrameLimits;
  /** The socket is read into a reused buffer (socket-input.ts), not through 'data' events. */
  input?: SocketInput;
}

/** A frame to write: `bytes`, then `parts` if any (a body sent as it is, without copying). */
interface OutFrame { bytes: Buffer; parts?: readonly Uint8Array[]; length: number; resolve: () => void; reject: (e: Error) => void }
interface Pending { resolve: (m: Message) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }

const noop = (): void => {};

export class Connection {
  readonly label: string;
  readonly peer: HelloInfo;
  readonly shaper: Shaper | undefined;
  readonly stats = { bytesSent: 0, bytesReceived: 0, framesSent: 0, framesReceived: 0 };
  /** Resolves (never rejects) when the connection has closed, with the reason if it failed. */
  readonly closed: Promise<FerryError | undefined>;

  private readonly socket: Duplex;
  private readonly decoder: FrameDecoder;
  private readonly limits: FrameLimits;
  private readonly requestTimeoutMs: number;
  private readonly urgent: OutFrame[] = [];
  private readonly bulk: OutFrame[] = [];
  private readonly delay: DelayLine | undefined;
  private pumping = false;
  private idle: (() => void)[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private nextStream = 1;
  private readonly handlers = new Map<number, { fn: RequestHandler | MessageHandler; replies: boolean }>();
  private readonly observers = new Set<MessageHandler>();
  private readonly sinks = new Map<number, (header: Header, bodyLength: number) => BodySink | undefined>();
  private readonly closeHandlers = new Set<(err: FerryError | undefined) => void>();
  private streamHandler: ((s: IncomingStream, conn: Connection) => void) | undefined;
  private readonly incoming = new Map<number, IncomingStream>();
  private closeError: FerryError | undefined;
  private ending = false;
  private isClosed = false;
  private resolveClosed!: (e: FerryError | undefined) => void;
  /** A TLS socket: large parts go in writes of their own (writeEach). */
  private readonly encrypts: boolean;

  constructor(socket: Duplex, opts: ConnectionOptions) {
    this.socket = socket;
    this.encrypts = socket instanceof TLSSocket;
    this.label = opts.label;
    this.peer = opts.peer;
    this.shaper = opts.shaper;
    this.limits = opts.limits ?? {};
    this.decoder = opts.decoder ?? new FrameDecoder(this.limits);
    this.requestTimeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
    this.closed = new Promise((r) => (this.resolveClosed = r));
    if (this.shaper && (Number.isFinite(this.shaper.rate) || this.shaper.latency > 0)) {
      this.delay = new DelayLine((parts) => {
        if (this.socket.destroyed) return;
        if (parts.length === 1) { this.socket.write(parts[0]!); return; }
        this.socket.cork();
        for (const p of parts) this.socket.write(p);
        this.socket.uncork();
      });
    }
    const input = opts.input;
    if (!input) socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('error', this.onError);
    socket.on('close', this.onSocketClose);
    // Bytes that came with the handshake are decoded once the caller has had a chance to register handlers.
    setImmediate(() => {
      if (this.isClosed) return;
      if (this.decoder.bufferedBytes > 0) this.onData(Buffer.alloc(0));
      if (!this.isClosed) { input?.consume(this.onData, { place: () => (this.isClosed ? null : this.decoder.placement()), placed: this.onPlaced }); socket.resume(); }
    });
  }

  get isOpen(): boolean { return !this.isClosed && !this.ending; }

  /** Chunk size for bulk streams: 64 KiB, smaller on a slow shaped link so urgent frames wait less. */
  get chunkSize(): number { return this.shaper ? this.shaper.chunkSize : DEFAULT_CHUNK_SIZE; }

  // ---- sending ----

  /** Queue one frame; resolves when it has been handed to the socket (or the link shaper).
   *  A body given as a list of parts is sent as it is, not copied: its bytes must not
   *  change until the promise resolves (on a shaped link: until the connection is drained). */
  send(code: CodeName | number, header?: Header, body?: Uint8Array | readonly Uint8Array[], opts: SendOptions = {}): Promise<void> {
    if (this.isClosed || this.ending) return Promise.reject(this.closedError(`cannot send ${typeof code === 'string' ? code : resolveCode(code).name}`));
    let bytes: Buffer;
    let parts: readonly Uint8Array[] | undefined;
    try {
      const info = resolveCode(code);
      const prio = opts.priority ?? info.priority;
      if (body === undefined || body instanceof Uint8Array) bytes = encodeFrame(info, header, body, prio, this.limits);
      else {
        let n = 0;
        for (const p of body) n += p.length;
        if (n < GATHER_MIN) {
          bytes = encodeFrameHead(info, header, n, prio, this.limits, n);
          let o = bytes.length - n;
          for (const p of body) { bytes.set(p, o); o += p.length; }
        } else {
          bytes = encodeFrameHead(info, header, n, prio, this.limits);
          parts = body;
        }
      }
      const length = bytes.length + (parts ? parts.reduce((a, p) => a + p.length, 0) : 0);
      return new Promise<void>((resolve, reject) => {
        (prio === 'urgent' ? this.urgent : this.bulk).push({ bytes, parts, length, resolve, reject });
        void this.pump();
      });
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Send a request (header gets a fresh `id`) and wait for the frame answering it. */
  request(code: CodeName | number, header: Header = {}, body?: Uint8Array, opts: RequestOptions = {}): Promise<Message> {
    const id = this.nextId++;
    const info = (() => { try { return resolveCode(code); } catch (e) { return e as Error; } })();
    if (info instanceof Error) return Promise.reject(info);
    const timeoutMs = opts.timeoutMs ?? this.requestTimeoutMs;
    return new Promise<Message>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FerryError('request-timeout', `${this.label} did not answer ${info.name} #${id} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.send(info.code, { ...header, id }, body, opts).catch((e) => {
        const p = this.pending.get(id);
        if (!p) return;
        clearTimeout(p.timer);
        this.pending.delete(id);
        reject(e);
      });
    });
  }

  /** Answer a request: the reply's header gets `re` = the request's id. */
  reply(to: Message, reply: Reply = {}): Promise<void> {
    if (to.id === undefined) return Promise.reject(new FerryError('bad-argument', `${to.name} from ${this.label} is not a request (no id)`));
    return this.send(reply.code ?? 'RESPONSE', { ...reply.header, re: to.id }, reply.body, { priority: reply.priority });
  }

  /** Answer a request with an ERROR frame carrying the error's code and message. */
  replyError(to: Message, err: unknown): Promise<void> {
    const code = err instanceof FerryError ? err.code : ((err as { code?: unknown })?.code && typeof (err as { code?: unknown }).code === 'string' ? (err as { code: string }).code : 'internal');
    const message = err instanceof Error ? err.message : String(err);
    return this.send('ERROR', { code, message, ...(to.id !== undefined ? { re: to.id } : {}) });
  }

  /** Round-trip time of a PING, in ms. */
  async ping(opts: RequestOptions = {}): Promise<number> {
    const t0 = performance.now();
    await this.request('PING', {}, undefined, opts);
    return performance.now() - t0;
  }

  /** Open an outgoing stream; its first frame carries `meta`. */
  openStream(meta: Header = {}, opts: SendOptions & { chunkSize?: number } = {}): OutgoingStream {
    return new OutgoingStream(this, this.nextStream++, meta, opts.priority ?? 'bulk', opts.chunkSize ?? this.chunkSize);
  }

  /** Send bytes as a stream (split into STREAM_DATA frames, then STREAM_END). Resolves with the stream id when all is handed to the socket. */
  async sendStream(data: Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>, meta: Header = {}, opts: SendOptions & { chunkSize?: number } = {}): Promise<number> {
    const s = this.openStream(meta, opts);
    try {
      if (data instanceof Uint8Array) await s.write(data);
      else for await (const chunk of data) await s.write(chunk);
      await s.end();
    } catch (e) {
      s.abort(e);
      throw e;
    }
    return s.id;
  }

  // ---- receiving ----

  /** Answer requests of this code: the handler's result is sent back (RESPONSE by default); a throw becomes an ERROR reply. */
  handle(code: CodeName | number, fn: RequestHandler): this {
    this.handlers.set(resolveCode(code).code, { fn, replies: true });
    return this;
  }

  /** Receive one-way messages of this code. */
  on(code: CodeName | number, fn: MessageHandler): this {
    this.handlers.set(resolveCode(code).code, { fn, replies: false });
    return this;
  }

  /** Stream the bodies of incoming frames of this code to a sink as they arrive, instead of
   *  buffering each whole: `fn` gets the frame's header and body length and returns a sink
   *  (or undefined: buffer this one). The message then reaches its handler with an empty
   *  body and `sunk` set to the sink. */
  sinkBodies(code: CodeName | number, fn: (header: Header, bodyLength: number) => BodySink | undefined): this {
    this.sinks.set(resolveCode(code).code, fn);
    this.decoder.sinkFor ??= (info, header, n) => this.sinks.get(info.code)?.(header, n);
    return this;
  }

  /** Observe every incoming message that is not a reply to one of our requests. Returns an unsubscribe function. */
  onMessage(fn: MessageHandler): () => void {
    this.observers.add(fn);
    return () => this.observers.delete(fn);
  }

  /** Receive incoming streams (STREAM_DATA / STREAM_END frames are then consumed by the streams). */
  onStream(fn: (s: IncomingStream, conn: Connection) => void): this {
    this.streamHandler = fn;
    return this;
  }

  onClose(fn: (err: FerryError | undefined) => void): () => void {
    this.closeHandlers.add(fn);
    return () => this.closeHandlers.delete(fn);
  }

  // ---- closing ----

  /** Flush what is queued, then close. Resolves when the socket has closed. */
  async close(): Promise<void> {
    if (!this.isClosed && !this.ending) {
      this.ending = true;
      await this.flushed();
      this.socket.end();
      const t = setTimeout(() => this.socket.destroy(), 5000);
      t.unref();
    }
    await this.closed;
  }

  /** Close at once; queued frames are dropped, pending requests rejected. */
  destroy(err?: FerryError): void {
    this.finish(err);
    this.socket.destroy();
  }

  private flushed(): Promise<void> {
    const wait = !this.pumping && this.urgent.length === 0 && this.bulk.length === 0 ? Promise.resolve() : new Promise<void>((r) => this.idle.push(r));
    return wait.then(() => this.delay?.drained());
  }

  private closedError(what: string): FerryError {
    return new FerryError('connection-closed', `${what}: the connection to ${this.label} is closed${this.closeError ? ` (${this.closeError.message})` : ''}`, this.closeError ? { cause: this.closeError } : undefined);
  }

  private finish(err: FerryError | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closeError = err;
    this.delay?.clear();
    const e = this.closedError('request failed');
    for (const [, p] of this.pending) { clearTimeout(p.timer); p.reject(e); }
    this.pending.clear();
    for (const q of [this.urgent, this.bulk]) for (const f of q.splice(0)) f.reject(this.closedError('frame not sent'));
    for (const s of this.incoming.values()) s._fail(this.closedError(`stream ${s.id} cut short`));
    this.incoming.clear();
    for (const r of this.idle.splice(0)) r();
    this.resolveClosed(err);
    for (const fn of this.closeHandlers) { try { fn(err); } catch { /* a close handler must not break closing */ } }
  }

  // ---- writer ----

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    let backlogged = false; // true once this run of the writer has written something: the queue is being worked off
    try {
      for (;;) {
        if (this.isClosed) break;
        const item = this.urgent.shift() ?? this.bulk.shift();
        if (!item) break;
        if (this.delay && this.shaper) {
          const q = this.shaper.quantum;
          // Slices of at most a quantum; a small frame (or the head of one sent as parts) rides with what follows.
          let pending: Uint8Array[] = [], pendingBytes = 0;
          const segments = item.parts ? [item.bytes, ...item.parts] : [item.bytes];
          for (let s = 0; s < segments.length && !this.isClosed; s++) {
            const seg = segments[s]!;
            for (let off = 0; off < seg.length && !this.isClosed;) {
              const take = Math.min(q - pendingBytes, seg.length - off);
              pending.push(seg.subarray(off, off + take));
              pendingBytes += take;
              off += take;
              if (pendingBytes < q && !(s === segments.length - 1 && off >= seg.length)) continue;
              // Waiting on the peer (backpressure) is real idleness, not lateness to forgive.
              if (this.socket.writableNeedDrain) { await this.drain(); backlogged = false; }
              if (this.delay.pendingBytes > MAX_IN_FLIGHT) { await this.delay.waitBelow(MAX_IN_FLIGHT / 2); backlogged = false; }
              const at = await this.shaper.reserve(pendingBytes, backlogged);
              backlogged = true;
              if (this.isClosed) break;
              this.delay.push(at, pending);
              pending = []; pendingBytes = 0;
              // Let timers run (the delay line's release among them) between slices: booked ahead
              // within the window, this loop would otherwise go on in microtasks alone.
              if (s < segments.length - 1 || off < seg.length) await new Promise<void>((r) => setImmediate(r));
            }
          }
        } else if (this.encrypts) {
          await this.writeEach(item);
        } else {
          if (item.parts) {
            this.socket.cork();
            this.socket.write(item.bytes);
            for (const p of item.parts) this.socket.write(p);
            this.socket.uncork();
          } else this.socket.write(item.bytes);
          // Keep a little written ahead, so the socket never waits for this loop's next turn.
          if (this.socket.writableLength > WRITE_AHEAD) await this.drain();
        }
        if (this.isClosed) { item.reject(this.closedError('frame not sent')); break; }
        this.stats.bytesSent += item.length;
        this.stats.framesSent++;
        item.resolve();
        // After the last slice, the sender (who awaits each frame, as the migration engine does)
        // queues its next one within this turn: the writer goes on with it in the same run, so
        // the link stays backlogged and a stall of the event loop does not leave it idle.
        if (this.delay && this.shaper) await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.pumping = false;
      if (this.urgent.length === 0 && this.bulk.length === 0) for (const r of this.idle.splice(0)) r();
      else if (!this.isClosed) void this.pump();
    }
  }

  /** TLS: the frame's bytes and parts, from where they lie, in writes of at most TLS_SLICE
   *  bytes each (small ones gathered into one). A TLS socket encrypts what a
   *  write() hands it at once, into a buffer of as many bytes. Handed several buffers at once
   *  (cork, or writes queued behind one in flight), Node first copies them into a new buffer
   *  too; and here the first touch of new memory costs ~11 us per 4 KiB page (a VM that
   *  hands freed pages back to its host). Written corked, the first 1 MiB page batch of a
   *  connection took 5-8 ms to leave instead of ~1 (bench/write-pattern.ts: a 4 MiB burst
   *  9.6-14 ms corked, 2.7-3.7 ms in 256 KiB slices). So no write is issued while two are pending:
   *  the one queued behind the one in flight is always alone. */
  private async writeEach(item: OutFrame): Promise<void> {
    let small: Uint8Array[] = [], smallBytes = 0;
    const gathered = async () => { if (small.length) await this.writeAlone(small.length === 1 ? small[0]! : Buffer.concat(small, smallBytes)); small = []; smallBytes = 0; };
    for (const p of item.parts ? [item.bytes, ...item.parts] : [item.bytes]) {
      if (p.length >= GATHER_MIN) { await gathered(); for (let o = 0; o < p.length; o += TLS_SLICE) await this.writeAlone(p.subarray(o, o + TLS_SLICE)); continue; }
      small.push(p); smallBytes += p.length;
      if (smallBytes >= GATHER_MIN) await gathered();
    }
    await gathered();
  }

  /** Write callbacks of writeEach's last two writes (awaiting one already called back costs a microtask). */
  private pendingWrites: Promise<void>[] = [];

  private async writeAlone(b: Uint8Array): Promise<void> {
    if (this.pendingWrites.length === 2) await Promise.race([this.pendingWrites.shift(), this.closed]);
    if (this.isClosed) return;
    this.pendingWrites.push(new Promise<void>((r) => this.socket.write(b, () => r())));
  }

  private drain(): Promise<void> {
    return new Promise((resolve) => {
      const done = () => { this.socket.off('drain', done); this.socket.off('close', done); resolve(); };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  // ---- reader ----

  private onData = (chunk: Buffer, transient = false): void => {
    if (this.isClosed) return;
    this.stats.bytesReceived += chunk.length;
    this.decode(() => this.decoder.push(chunk, transient));
  };

  /** Bytes read straight into a body sink's memory (socket-input.ts). */
  private onPlaced = (n: number): void => {
    if (this.isClosed) return;
    this.stats.bytesReceived += n;
    this.decode(() => this.decoder.pushPlaced(n));
  };

  private decode(frames: () => Frame[]): void {
    let got: Frame[];
    try {
      got = frames();
    } catch (e) {
      this.protocolError(e instanceof FerryError ? e : new FerryError('bad-frame', String(e)));
      return;
    }
    for (const f of got) {
      if (this.isClosed) return;
      this.dispatch(f);
    }
  }

  private onEnd = (): void => {
    if (this.decoder.midFrame) {
      this.protocolError(new FerryError('bad-frame', `${this.label} ended the connection in the middle of a frame (${this.decoder.bufferedBytes} bytes of it received)`));
      return;
    }
    void this.close();
  };

  private onError = (e: Error): void => {
    this.finish(new FerryError('connection-failed', `connection to ${this.label} failed: ${e.message}`, { cause: e }));
  };

  private onSocketClose = (): void => {
    this.finish(this.closeError);
  };

  /** The peer sent something malformed: answer with an ERROR naming it, then close. */
  private protocolError(err: FerryError): void {
    if (this.isClosed) return;
    const frame = encodeFrame(resolveCode('ERROR'), { code: err.code, message: err.message.slice(0, 4096) }, undefined);
    this.finish(new FerryError(err.code, `${this.label} sent a malformed frame: ${err.message}`, { cause: err }));
    this.socket.end(frame);
    const t = setTimeout(() => this.socket.destroy(), 2000);
    t.unref();
    this.socket.resume();
  }

  private dispatch(f: Frame): void {
    this.stats.framesReceived++;
    const msg: Message = f;
    if (typeof f.header.id === 'number') msg.id = f.header.id;
    if (typeof f.header.re === 'number') msg.re = f.header.re;
    if (msg.re !== undefined) {
      const p = this.pending.get(msg.re);
      if (p) {
        this.pending.delete(msg.re);
        clearTimeout(p.timer);
        if (f.code === CODES.ERROR.code) {
          const code = typeof f.header.code === 'string' ? f.header.code : 'remote-error';
          p.reject(new FerryError(code, `${this.label}: ${typeof f.header.message === 'string' ? f.header.message : 'request failed'}`));
        } else p.resolve(msg);
        return;
      }
      if (f.code !== CODES.ERROR.code) return; // a late reply to a request that timed out
    }
    for (const fn of this.observers) { try { fn(msg, this); } catch { /* observers must not break the connection */ } }
    switch (f.code) {
      case CODES.ERROR.code:
        if (msg.re === undefined) {
          // The peer reports a connection-level problem and will close.
          const code = typeof f.header.code === 'string' ? f.header.code : 'remote-error';
          this.closeError = new FerryError(code, `${this.label} reported: ${typeof f.header.message === 'string' ? f.header.message : 'an error'}`);
        }
        return;
      case CODES.PING.code:
        if (msg.id !== undefined) this.send('PONG', { re: msg.id }).catch(noop);
        return;
      case CODES.STREAM_DATA.code:
      case CODES.STREAM_END.code:
        if (this.streamHandler) { this.streamFrame(msg); return; }
        break;
    }
    const h = this.handlers.get(f.code);
    if (!h) {
      if (msg.id !== undefined) this.replyError(msg, new FerryError('unsupported', `no handler for ${f.name} on this end`)).catch(noop);
      return;
    }
    if (!h.replies) {
      try { (h.fn as MessageHandler)(msg, this); } catch { /* a one-way handler's failure has no one to tell */ }
      return;
    }
    let result: Reply | void | Promise<Reply | void>;
    try { result = (h.fn as RequestHandler)(msg, this); } catch (e) { result = Promise.reject(e); }
    Promise.resolve(result).then(
      (r) => { if (msg.id !== undefined && !this.isClosed) return this.reply(msg, r ?? {}); },
      (e) => { if (msg.id !== undefined && !this.isClosed) return this.replyError(msg, e); },
    ).catch(noop);
  }

  private streamFrame(msg: Message): void {
    const id = msg.header.stream;
    if (typeof id !== 'number' || !Number.isSafeInteger(id)) {
      this.protocolError(new FerryError('bad-frame', `${msg.name} without a numeric stream id`));
      return;
    }
    let s = this.incoming.get(id);
    if (!s) {
      const meta = msg.header.meta;
      s = new IncomingStream(id, meta !== null && typeof meta === 'object' && !Array.isArray(meta) ? (meta as Header) : {});
      this.incoming.set(id, s);
      try { this.streamHandler!(s, this); } catch { /* handler errors do not break the connection */ }
    }
    if (msg.code === CODES.STREAM_DATA.code) {
      s._push(msg.body);
    } else {
      this.incoming.delete(id);
      if (typeof msg.header.error === 'string') s._fail(new FerryError('stream-aborted', `${this.label} aborted stream ${id}: ${msg.header.error}`));
      else s._end();
    }
  }
}

/** The sending side of a stream. write() waits when too much of it is queued (flow control towards the writer). */
export class OutgoingStream {
  bytesSent = 0;
  private first = true;
  private inflight: Promise<void>[] = [];
  private done = false;

  constructor(private readonly conn: Connection, readonly id: number, private readonly meta: Header, private readonly priority: Priority, private readonly chunkSize: number) {}

  private header(): Header {
    if (!this.first) return { stream: this.id };
    this.first = false;
    return Object.keys(this.meta).length ? { stream: this.id, meta: this.meta } : { stream: this.id };
  }

  async write(data: Uint8Array): Promise<void> {
    if (this.done) throw new FerryError('bad-argument', `stream ${this.id} has ended`);
    for (let off = 0; off < data.length; off += this.chunkSize) {
      const piece = data.subarray(off, Math.min(data.length, off + this.chunkSize));
      const p = this.conn.send('STREAM_DATA', this.header(), piece, { priority: this.priority });
      p.catch(noop);
      this.inflight.push(p);
      this.bytesSent += piece.length;
      if (this.inflight.length >= STREAM_WINDOW_FRAMES) await this.inflight.shift();
    }
  }

  async end(): Promise<void> {
    if (this.done) return;
    this.done = true;
    const p = this.conn.send('STREAM_END', this.header(), undefined, { priority: this.priority });
    await Promise.all([...this.inflight.splice(0), p]);
  }

  /** Tell the receiver the stream failed. */
  abort(err: unknown): void {
    if (this.done) return;
    this.done = true;
    this.conn.send('STREAM_END', { ...this.header(), error: err instanceof Error ? err.message : String(err) }, undefined, { priority: this.priority }).catch(noop);
  }
}

/** The receiving side of a stream: an async iterable of chunks. */
export class IncomingStream implements AsyncIterable<Buffer> {
  bytesReceived = 0;
  private chunks: Buffer[] = [];
  private ended = false;
  private error: Error | undefined;
  private wakers: (() => void)[] = [];
  private listeners: ((chunk: Buffer) => void)[] = [];

  constructor(readonly id: number, readonly meta: Header) {}

  /** @internal */ _push(b: Buffer): void {
    this.bytesReceived += b.length;
    if (this.listeners.length) { for (const l of this.listeners) l(b); return; }
    this.chunks.push(b);
    this.kick();
  }
  /** @internal */ _end(): void { this.ended = true; this.kick(); }
  /** @internal */ _fail(e: Error): void { if (!this.ended) { this.error = e; this.ended = true; this.kick(); } }

  private kick(): void { for (const w of this.wakers.splice(0)) w(); }
  private wait(): Promise<void> { return new Promise((r) => this.wakers.push(r)); }

  /** Consume chunks as they arrive instead of iterating (chunks already buffered are delivered first). */
  onData(fn: (chunk: Buffer) => void): void {
    for (const c of this.chunks.splice(0)) fn(c);
    this.listeners.push(fn);
  }

  /** Resolves when the stream has ended; rejects if it was aborted or the connection closed. */
  async done(): Promise<void> {
    while (!this.ended) await this.wait();
    if (this.error) throw this.error;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Buffer> {
    for (;;) {
      if (this.chunks.length) { yield this.chunks.shift()!; continue; }
      if (this.error) throw this.error;
      if (this.ended) return;
      await this.wait();
    }
  }

  /** All of the stream's bytes. */
  async collect(): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const c of this) parts.push(c);
    return Buffer.concat(parts);
  }
}
