// A running process as its owner sees it: the guest memory (shared, owned here), a
// worker thread that runs it, and the calls to freeze, capture, continue and kill it.
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { EventEmitter } from 'node:events';
import {
  ABSENT_MAP, DIRTY_MAP, LOGICAL_PAGES_WORD, PHYSICAL_PAGES, STOP_FLAG, TRACK_PAGE, TRACK_SHIFT, WASM_PAGE,
} from './layout.ts';
import {
  CONTROL_BYTES, CTL_FAULT, CTL_FILE, CTL_HEADER_BYTES, CTL_STDIN_EOF, CTL_STDIN_READ, CTL_STDIN_WRITE,
  CTL_STOP, CTL_THROTTLE, CTL_WAKE, STDIN_RING_BYTES, epochMs, type ExecState, type FromWorker, type StdioMode, type ToWorker,
} from './protocol.ts';
import type { LoadedModule } from './cache.ts';
import { workerOptions, workerUrl } from './worker-code.ts';
import type { WasiState } from '../wasi/types.ts';
import { deserializeError, FerryError } from '../errors.ts';
import { DEFAULT_FILE_TIMEOUT_MS, errorReply, type FileOpReply, type FileOpRequest, type FileReplyMessage } from '../wasi/remote-fs.ts';
import { reclaimSoon } from './reclaim.ts';


/** What a freeze yields: memory stays in `memory` (read it before resuming). */
export interface Captured {
  exec: ExecState;
  wasi: WasiState;
  memory: Uint8Array;
  logicalBytes: number;
  /** Stop latency: from the request until the process stood still (its stack unwound). */
  stopMs: number;
  /** From the request until the capture reached the owner (adds thread hand-off). */
  captureMs: number;
}

export type ProcessState = 'starting' | 'running' | 'stopping' | 'frozen' | 'exited' | 'failed' | 'killed';

export interface ProcessOptions {
  stdio?: StdioMode;
  /** Where stdin comes from when the program reads it (default: process.stdin). */
  stdin?: NodeJS.ReadableStream | null;
  /** Serve a page fault: make [addr, addr+len) present (clear its absent bits). */
  onFault?: (addr: number, len: number) => Promise<void>;
  /** Files served elsewhere (the home node): the worker's WASI host sends every file-system
   *  call here instead of using the local disk. A rejection becomes EIO in the guest. */
  fileOps?: (req: FileOpRequest) => Promise<FileOpReply>;
  /** How long the worker waits for one file reply before failing the call with EIO
   *  (default 60 s): a dead peer ends as an error, not a hang. */
  fileTimeoutMs?: number;
  /** A worker that instantiated the module over this memory ahead of time (resume only). */
  prepared?: PreparedWorker;
}

/** Stdin read ahead into a vacate's image, at most (readStdinAhead). */
export const STDIN_AHEAD_MAX = 16 << 20;

export function newGuestMemory(): WebAssembly.Memory {
  return new WebAssembly.Memory({ initial: PHYSICAL_PAGES, maximum: PHYSICAL_PAGES, shared: true });
}

/** Loading the worker's code takes a few hundred ms: keep one worker warm, so a
 *  resume (or a hop) does not pay for it while the process runs nowhere. */
class WarmWorkers {
  private spare: Worker | null = null;
  private loaded: Promise<void> = Promise.resolve();
  take(): Worker {
    const w = this.spare ?? new Worker(workerUrl(), workerOptions());
    this.spare = null;
    w.ref();
    return w;
  }
  /** Start one in the background, ready for the next take(); resolves once it has loaded. */
  prewarm(): Promise<void> {
    if (this.spare) return this.loaded;
    const w = new Worker(workerUrl(), workerOptions());
    this.spare = w;
    w.unref();
    w.on('error', () => { if (this.spare === w) this.spare = null; });
    this.loaded = new Promise<void>((res) => {
      const done = () => { w.off('message', onMsg); res(); };
      const onMsg = (m: { type?: string }) => { if (m?.type === 'loaded') done(); };
      w.on('message', onMsg);
      w.once('exit', done);
    });
    return this.loaded;
  }
}
export const warmWorkers = new WarmWorkers();

/**
 * A worker that instantiated a module over a guest memory ahead of time: a migration's
 * destination makes one while the pages arrive (instantiation writes no memory), so the
 * resume at the commit sends the worker the state alone. The first WasmProcess resumed
 * with it (ProcessOptions.prepared) takes it over; discard() ends it otherwise.
 */
export class PreparedWorker {
  readonly control = new SharedArrayBuffer(CONTROL_BYTES);
  private worker: Worker | null;
  private failed = false;
  /** The worker has instantiated the module. */
  ready = false;
  /** Resolves once the worker has instantiated the module or failed to (never rejects). */
  readonly settled: Promise<void>;
  private settle!: () => void;
  private readonly onMessage = (m: FromWorker) => {
    if (m.type === 'failed') { this.failed = true; this.settle(); }
    if (m.type === 'prepared') { this.ready = true; this.settle(); }
  };

  constructor(readonly loaded: LoadedModule, readonly memory: WebAssembly.Memory) {
    this.settled = new Promise((r) => (this.settle = r));
    this.worker = warmWorkers.take();
    this.worker.unref(); // until a process runs in it
    this.worker.on('message', this.onMessage);
    this.worker.on('error', () => { this.failed = true; this.settle(); });
    this.worker.once('exit', () => this.settle());
    const msg: ToWorker = { type: 'prepare', module: loaded.module, meta: loaded.meta, memory, control: this.control };
    this.worker.postMessage(msg);
  }

  /** The worker, for a process of this module over this memory (null: it does not match, or
   *  its preparation failed; it is ended then). Only once. */
  claim(loaded: LoadedModule, memory: WebAssembly.Memory): Worker | null {
    const w = this.worker;
    if (!w) return null;
    this.worker = null;
    this.settle();
    w.off('message', this.onMessage);
    if (this.failed || loaded !== this.loaded || memory !== this.memory) { void w.terminate(); return null; }
    w.ref();
    return w;
  }

  /** Not needed after all (the migration failed): end the worker. */
  discard(): void {
    const w = this.worker;
    this.worker = null;
    this.settle();
    if (w) void w.terminate().then(() => reclaimSoon()); // the pages that had arrived
  }
}

/** What a process in a state it does not leave has done ("it has been killed"). */
const HAS_ENDED: Partial<Record<ProcessState, string>> = { exited: 'exited', failed: 'failed', killed: 'been killed' };

export class WasmProcess extends EventEmitter {
  state: ProcessState = 'starting';
  /** When the guest last ran again (hostMs, protocol.ts), null before. */
  runningAt: number | null = null;
  readonly bytes: Uint8Array;
  private readonly ctl: Int32Array;
  private readonly control: SharedArrayBuffer;
  private readonly memI32: Int32Array;
  private worker: Worker;
  private stdinPending: Buffer[] = [];
  private stdinStarted = false;
  private stdinWanted = false;
  /** Total bytes taken from the stdin source, carried in the WASI state. */
  private stdinTaken: number;
  private stdinEnded = false;
  /** The owner's end of the file reply port (only with opts.fileOps). */
  private readonly filePort: MessagePort | null = null;
  private pendingStop: { t0: number; resolve: (c: Captured) => void; reject: (e: Error) => void } | null = null;
  /** Resolves with the exit code when the program ends; rejects if it fails. */
  readonly exited: Promise<number>;
  /** It runs in the worker prepared for it (ProcessOptions.prepared), not a fresh one. */
  readonly inPreparedWorker: boolean;
  private settle!: { resolve: (code: number) => void; reject: (e: Error) => void };
  lastWasi: WasiState;

  /** The module it runs (a variant switch replaces it). */
  get loaded(): LoadedModule { return this.running; }

  private constructor(
    private running: LoadedModule,
    readonly memory: WebAssembly.Memory,
    wasi: WasiState,
    exec: ExecState | undefined,
    private readonly opts: ProcessOptions,
  ) {
    super();
    this.bytes = new Uint8Array(memory.buffer);
    this.memI32 = new Int32Array(memory.buffer);
    this.lastWasi = wasi;
    this.exited = new Promise((resolve, reject) => { this.settle = { resolve, reject }; });
    this.exited.catch(() => {}); // observed through events too; never an unhandled rejection
    // Unconsumed stdin travels with the process.
    if (wasi.stdinBuffered) this.stdinPending.push(Buffer.from(wasi.stdinBuffered, 'base64'));
    this.stdinEnded = wasi.stdinEof;
    this.stdinTaken = wasi.stdinTakenBytes ?? 0;
    const prepared = opts.prepared?.claim(running, memory) ?? null;
    this.inPreparedWorker = !!prepared;
    this.control = prepared ? opts.prepared!.control : new SharedArrayBuffer(CONTROL_BYTES);
    this.ctl = new Int32Array(this.control);
    this.worker = prepared ?? warmWorkers.take();
    this.worker.on('message', (m: FromWorker) => this.onMessage(m));
    this.worker.on('error', (e) => this.fail(e));
    this.worker.on('exit', (code) => { if (this.state === 'running' || this.state === 'starting' || this.state === 'stopping') this.fail(new FerryError('runtime', `worker thread exited unexpectedly (code ${code})`)); });
    const begin = { wasi, stdio: opts.stdio ?? 'inherit', exec } as const;
    const start: ToWorker = prepared ? { type: 'start', prepared: true, ...begin }
      : { type: 'start', module: running.module, meta: running.meta, memory, control: this.control, ...begin };
    if (opts.fileOps) {
      const ch = new MessageChannel();
      this.filePort = ch.port1;
      this.filePort.unref(); // the worker keeps the process alive, not its file port
      start.files = { port: ch.port2, timeoutMs: opts.fileTimeoutMs ?? DEFAULT_FILE_TIMEOUT_MS };
      this.worker.postMessage(start, [ch.port2]);
    } else this.worker.postMessage(start);
    if (this.stdinPending.length || this.stdinEnded) this.pumpStdin();
  }

  /** Start a program from the beginning. */
  static start(loaded: LoadedModule, wasi: WasiState, opts: ProcessOptions = {}): WasmProcess {
    return new WasmProcess(loaded, newGuestMemory(), wasi, undefined, opts);
  }

  /** Resume a captured process. `memory` already holds its pages (see restoreMemory). */
  static resume(loaded: LoadedModule, memory: WebAssembly.Memory, exec: ExecState, wasi: WasiState, opts: ProcessOptions = {}): WasmProcess {
    return new WasmProcess(loaded, memory, wasi, exec, opts);
  }

  /** Freeze at the next safe point (or inside a blocking call) and capture. */
  freeze(): Promise<Captured> {
    if (this.state !== 'running' && this.state !== 'starting')
      return Promise.reject(new FerryError('runtime', HAS_ENDED[this.state] ? `it has ${HAS_ENDED[this.state]}` : `cannot freeze a process that is ${this.state}`));
    this.state = 'stopping';
    return new Promise((resolve, reject) => {
      this.pendingStop = { t0: epochMs(), resolve, reject };
      Atomics.store(this.ctl, CTL_STOP, 1);
      Atomics.store(this.memI32, STOP_FLAG >>> 2, 1);
      this.wake();
    });
  }

  /** After a freeze: carry on in the same worker (a checkpoint that keeps running); with
   *  `variant`, another variant of the same program (prepare.ts: their frames match),
   *  instantiated in that worker over the same memory. From a variant without dirty marks
   *  ('plain') to one with them, every page of the address space counts as dirty. */
  continue(variant?: LoadedModule): void {
    if (this.state !== 'frozen') throw new FerryError('runtime', `cannot continue a process that is ${this.state}`);
    const msg: ToWorker = { type: 'continue' };
    if (variant && variant !== this.running) {
      if (variant.meta.originalHash !== this.running.meta.originalHash)
        throw new FerryError('runtime', `cannot continue a process of module ${this.running.meta.originalHash.slice(0, 12)}... in module ${variant.meta.originalHash.slice(0, 12)}...`);
      if (this.running.meta.variant === 'plain' && variant.meta.variant !== 'plain')
        this.bytes.fill(1, DIRTY_MAP, DIRTY_MAP + Math.ceil(this.logicalBytes / TRACK_PAGE));
      msg.module = variant.module;
      msg.meta = variant.meta;
      this.running = variant;
    }
    Atomics.store(this.ctl, CTL_STOP, 0);
    this.state = 'running';
    this.worker.postMessage(msg);
    if (this.stdinWanted) this.pumpStdin();
  }

  /** Carry on in another variant of its program (e.g. 'tracked' before pre-copy): freeze at
   *  the next safe point, continue in `variant`. Resolves false if the process ended first. */
  async switchVariant(variant: LoadedModule): Promise<boolean> {
    if (variant === this.running) return true;
    try {
      await this.freeze();
    } catch (e) {
      if (this.state === 'exited' || this.state === 'failed' || this.state === 'killed') return false;
      throw e;
    }
    this.continue(variant);
    return true;
  }

  /** Its memory size as the program sees it (memory.size), in bytes. */
  get logicalBytes(): number {
    return (Atomics.load(this.memI32, LOGICAL_PAGES_WORD >>> 2) >>> 0) * WASM_PAGE;
  }

  /** End the worker. A frozen process that moved elsewhere is released this way. */
  async kill(): Promise<void> {
    if (this.state === 'exited' || this.state === 'failed' || this.state === 'killed') return;
    this.state = 'killed';
    this.stopStdin();
    this.filePort?.close();
    await this.endWorker();
    this.settle.reject(new FerryError('runtime', 'process killed'));
  }

  /** End the worker; then its memory can go back to the system (reclaim.ts). */
  private async endWorker(): Promise<void> {
    const bytes = this.logicalBytes;
    await this.worker.terminate();
    reclaimSoon(bytes);
  }

  /** Auto-converge: make the process sleep this share of its time (0 = full speed, at most 0.99). */
  throttle(share: number): void {
    const permille = Math.max(0, Math.min(990, Math.round(share * 1000)));
    Atomics.store(this.ctl, CTL_THROTTLE, permille);
    if (permille > 0) Atomics.store(this.memI32, STOP_FLAG >>> 2, 1); // polls call in, and sleep there
    this.wake();
  }

  /** Mark pages absent (post-copy, demand paging): the first access faults. */
  markAbsent(firstPage: number, count: number): void {
    this.bytes.fill(1, ABSENT_MAP + firstPage, ABSENT_MAP + firstPage + count);
  }

  private wake(): void {
    Atomics.add(this.ctl, CTL_WAKE, 1);
    Atomics.notify(this.ctl, CTL_WAKE);
  }

  private onMessage(m: FromWorker): void {
    switch (m.type) {
      case 'prepared':
        break; // a prepared worker's answer, arriving after a process took it over
      case 'running':
        if (this.state === 'starting') this.state = 'running';
        this.runningAt = m.hostMs;
        this.emit('running');
        break;
      case 'stopped': {
        this.state = 'frozen';
        this.lastWasi = m.wasi;
        this.stopStdin(); // input arriving from now on stays in the stream for whoever runs next
        const stop = this.pendingStop!;
        this.pendingStop = null;
        // Stdin the process has not consumed yet goes with it.
        m.wasi.stdinBuffered = Buffer.concat([this.ringContents(), ...this.stdinPending]).toString('base64');
        m.wasi.stdinEof = this.stdinEnded;
        m.wasi.stdinTakenBytes = this.stdinTaken;
        stop.resolve({ exec: m.exec, wasi: m.wasi, memory: this.bytes, logicalBytes: m.exec.logicalPages * WASM_PAGE,
          stopMs: Math.max(0, m.stoppedAt - stop.t0), captureMs: epochMs() - stop.t0 });
        break;
      }
      case 'exited':
        this.state = 'exited';
        this.lastWasi = m.wasi;
        this.stopStdin();
        this.filePort?.close();
        void this.endWorker();
        this.pendingStop?.reject(new FerryError('runtime', 'the process exited before it could be frozen'));
        this.pendingStop = null;
        this.emit('exit', m.code);
        this.settle.resolve(m.code);
        break;
      case 'failed':
        this.fail(deserializeError(m.error));
        break;
      case 'stdout': case 'stderr':
        this.emit(m.type, m.data);
        break;
      case 'want-stdin':
        this.stdinWanted = true;
        this.pumpStdin();
        break;
      case 'fault':
        void this.serveFault(m.addr, m.len);
        break;
      case 'file-op':
        void this.serveFileOp(m.id, m.req);
        break;
    }
  }

  private async serveFault(addr: number, len: number): Promise<void> {
    try {
      if (!this.opts.onFault) throw new FerryError('runtime', `page fault at 0x${addr.toString(16)} with no page source`);
      await this.opts.onFault(addr, len);
      const first = addr >>> TRACK_SHIFT, last = (addr + len - 1) >>> TRACK_SHIFT;
      this.bytes.fill(0, ABSENT_MAP + first, ABSENT_MAP + last + 1);
    } catch (e) {
      this.fail(e as Error);
      return;
    }
    Atomics.add(this.ctl, CTL_FAULT, 1);
    Atomics.notify(this.ctl, CTL_FAULT);
  }

  /** Answers one file call. Replies may complete out of order; the worker waits for one
   *  call at a time and matches by id. */
  private async serveFileOp(id: number, req: FileOpRequest): Promise<void> {
    let reply: FileOpReply;
    try {
      if (!this.opts.fileOps) throw new FerryError('runtime', 'file request with no file service');
      reply = await this.opts.fileOps(req);
    } catch (e) {
      reply = errorReply(e);
    }
    this.filePort?.postMessage({ id, reply } satisfies FileReplyMessage);
    Atomics.add(this.ctl, CTL_FILE, 1); // after the post: the worker drains the port on waking
    Atomics.notify(this.ctl, CTL_FILE);
  }

  private fail(e: Error): void {
    if (this.state === 'exited' || this.state === 'failed' || this.state === 'killed') return;
    this.state = 'failed';
    this.stopStdin();
    this.filePort?.close();
    void this.endWorker();
    this.pendingStop?.reject(e);
    this.pendingStop = null;
    this.emit('failed', e);
    this.settle.reject(e);
  }

  // --- stdin: bytes flow from the owner into a ring in the control block ---

  private ringContents(): Buffer {
    const w = Atomics.load(this.ctl, CTL_STDIN_WRITE), r = Atomics.load(this.ctl, CTL_STDIN_READ);
    const n = (w - r) | 0;
    const out = Buffer.alloc(Math.max(0, n));
    const ring = new Uint8Array(this.control, CTL_HEADER_BYTES, STDIN_RING_BYTES);
    for (let i = 0; i < n; i++) out[i] = ring[((r + i) >>> 0) % STDIN_RING_BYTES];
    return out;
  }

  /** Where stdin comes from: the option, else this OS process's own. */
  private get stdinSource(): NodeJS.ReadableStream | null {
    return this.opts.stdin === undefined ? process.stdin : this.opts.stdin;
  }

  private readonly onStdinData = (chunk: Buffer) => { this.stdinTaken += chunk.length; this.stdinPending.push(chunk); this.pumpStdin(); };
  private readonly onStdinEnd = () => { this.stdinEnded = true; this.pumpStdin(); };

  private pumpStdin(): void {
    const src = this.stdinSource;
    if (!this.stdinStarted && src && !this.stdinEnded) {
      this.stdinStarted = true;
      src.on('data', this.onStdinData);
      src.on('end', this.onStdinEnd);
    }
    if (!src && !this.stdinEnded && this.stdinPending.length === 0) this.stdinEnded = true;
    const ring = new Uint8Array(this.control, CTL_HEADER_BYTES, STDIN_RING_BYTES);
    let w = Atomics.load(this.ctl, CTL_STDIN_WRITE);
    const r = Atomics.load(this.ctl, CTL_STDIN_READ);
    while (this.stdinPending.length) {
      const room = STDIN_RING_BYTES - ((w - r) | 0);
      if (room <= 0) break;
      const chunk = this.stdinPending[0];
      const n = Math.min(room, chunk.length);
      for (let i = 0; i < n; i++) ring[((w + i) >>> 0) % STDIN_RING_BYTES] = chunk[i];
      w = (w + n) | 0;
      if (n === chunk.length) this.stdinPending.shift(); else this.stdinPending[0] = chunk.subarray(n);
    }
    Atomics.store(this.ctl, CTL_STDIN_WRITE, w);
    if (this.stdinEnded && this.stdinPending.length === 0) Atomics.store(this.ctl, CTL_STDIN_EOF, 1);
    if (src && this.stdinStarted) {
      // Back-pressure: stop reading while the ring is full.
      const readable = src as NodeJS.ReadableStream;
      if (this.stdinPending.length) readable.pause(); else readable.resume();
    }
    this.wake();
  }

  /** Frozen, about to end in this OS process (a vacate): read what its stdin source already
   *  holds, until the source ends or nothing more comes for `quietMs` (at most `maxBytes`), into
   *  the capture. Input the program was given but had not asked for yet would otherwise be
   *  lost with this OS process (a pipe's unread bytes); a terminal gives nothing in `quietMs`.
   *  `giveBack` hands what was read to this process instead (a vacate whose image could not be
   *  written continues it here). */
  async readStdinAhead(cap: Captured, quietMs = 50, maxBytes = STDIN_AHEAD_MAX): Promise<{ bytes: number; giveBack: () => void }> {
    if (this.state !== 'frozen') throw new FerryError('runtime', `stdin is read ahead only while frozen, not ${this.state}`);
    const src = this.stdinSource;
    if (!src || cap.wasi.stdinEof) return { bytes: 0, giveBack: () => {} };
    const got: Buffer[] = [];
    let n = 0;
    const ended = await new Promise<boolean>((resolve) => {
      let quiet = setTimeout(() => done(false), quietMs);
      const onData = (c: Buffer) => {
        got.push(c); n += c.length;
        clearTimeout(quiet);
        if (n >= maxBytes) done(false); else quiet = setTimeout(() => done(false), quietMs);
      };
      const onEnd = () => done(true);
      const done = (end: boolean) => { clearTimeout(quiet); src.off('data', onData); src.off('end', onEnd); src.pause(); resolve(end); };
      src.on('data', onData);
      src.on('end', onEnd);
      src.resume();
    });
    const before = Buffer.from(cap.wasi.stdinBuffered, 'base64');
    cap.wasi.stdinBuffered = Buffer.concat([before, ...got]).toString('base64');
    cap.wasi.stdinEof = ended;
    cap.wasi.stdinTakenBytes = (cap.wasi.stdinTakenBytes ?? 0) + n;
    // Behind what the capture already held (the ring and the pending chunks, still here).
    const giveBack = () => { this.stdinTaken += n; this.stdinPending.push(...got); if (ended) this.stdinEnded = true; };
    return { bytes: n, giveBack };
  }

  private stopStdin(): void {
    const src = this.stdinSource;
    if (src && this.stdinStarted) {
      src.off('data', this.onStdinData);
      src.off('end', this.onStdinEnd);
      (src as NodeJS.ReadableStream).pause();
      this.stdinStarted = false;
    }
  }
}
