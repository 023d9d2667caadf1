// The worker thread that runs one process: instantiates the prepared module over the
// shared memory, runs or rewinds it, and unwinds it at a safe point when asked.
import { parentPort, workerData } from 'node:worker_threads';
import { writeSync } from 'node:fs';
import {
  ABSENT_MAP, ASYNCIFY_DATA, ASYNCIFY_STACK, ASYNCIFY_STACK_END, DIRTY_MAP, EXPORT_LOGICAL_PAGES,
  EXPORT_INIT_DATA, EXPORT_START_FN, FERRY_MODULE, IMPORT_FAULT, IMPORT_MEMORY, IMPORT_SAFEPOINT, LOGICAL_PAGES_WORD, STOP_FLAG, TRACK_SHIFT,
} from './layout.ts';
import {
  CTL_FAULT, CTL_FILE, CTL_HEADER_BYTES, CTL_STDIN_EOF, CTL_STDIN_READ, CTL_STDIN_WRITE, CTL_STOP, CTL_THROTTLE, CTL_WAKE,
  STDIN_RING_BYTES, epochMs, hostMs, type ExecState, type FromWorker, type StdioMode, type ToWorker, type WorkerBegin, type WorkerSetup,
} from './protocol.ts';
import { WASI_MODULE, type PreparedMeta } from './module-meta.ts';
import { SUSPEND, SUSPENDABLE_IMPORTS, WasiExit, type GuestMemory, type WasiIo, type WaitResult } from '../wasi/types.ts';
import { WasiHost, initialWasiState, nodeFs } from '../wasi/host.ts';
import { RemoteFs, atomicsFileCall } from '../wasi/remote-fs.ts';
import { serializeError } from '../errors.ts';
import { globalValueToString, parseGlobalValue } from '../image/globals.ts';
import { lowerThisThread } from './guest-priority.ts';
import type { WorkerData } from './worker-code.ts';

if (!parentPort) throw new Error('src/vm/worker.ts must run in a worker thread');
const port = parentPort;
const post = (m: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer ?? []);

type Mode = 'normal' | 'unwinding' | 'rewinding';
const RUN_SLICE_MS = 10;

let session: Session | null = null;

/** A warm worker compiles the host's code now, not while a migrating process waits for it:
 *  the first WasiHost of an isolate cost ~1.5 ms of lazy compilation in the down time. */
function warmUp(): void {
  const buf = new ArrayBuffer(1 << 16), bytes = new Uint8Array(buf), view = new DataView(buf);
  const host = new WasiHost(initialWasiState({ args: ['warm-up'], env: [], preopens: [] }),
    { bytes: () => bytes, view: () => view, markDirty: () => {}, ensurePresent: () => {} },
    { write: () => {}, takeStdin: () => null, wait: (): WaitResult => 'timeout' });
  host.imports();
}
warmUp();
lowerThisThread((workerData as WorkerData | undefined)?.nice ?? 0);

port.on('message', (msg: ToWorker) => {
  try {
    if (msg.type === 'prepare') {
      session = new Session(msg);
      post({ type: 'prepared' });
    } else if (msg.type === 'start') {
      if ('prepared' in msg) {
        if (!session) throw new Error('start in a prepared instance, but none was prepared (its preparation failed)');
      } else session = new Session(msg);
      session.begin(msg);
      session.run(msg.exec);
    } else if (msg.type === 'continue') {
      if (msg.module) session!.switchModule(msg.module, msg.meta!);
      session!.run(session!.lastExec ?? undefined, true);
    }
  } catch (e) {
    post({ type: 'failed', error: serializeError(e) });
  }
});

class Session {
  readonly mem: Uint8Array;
  readonly ctl: Int32Array;
  readonly ctlBytes: Uint8Array;
  readonly i32: Int32Array;
  instance!: WebAssembly.Instance;
  readonly wasi: WasiHost;
  private readonly memory: WebAssembly.Memory;
  private stdio: StdioMode = 'message';
  exports!: Record<string, any>;
  /** The running variant's meta (a switch of variant replaces it). */
  meta: PreparedMeta;
  /** Host writes mark dirty pages (every variant but 'plain'). */
  private tracking = false;
  /** WASI imports as the plain variant gets them, and with re-marking after each call. */
  private readonly plainImports: Record<string, unknown>;
  private readonly trackedImports: Record<string, unknown>;
  mode: Mode = 'normal';
  lastExec: ExecState | null = null;

  /** Instantiates: everything but the process's own state (begin() brings that). */
  constructor(msg: WorkerSetup) {
    this.meta = msg.meta;
    this.memory = msg.memory;
    this.mem = new Uint8Array(msg.memory.buffer);
    this.i32 = new Int32Array(msg.memory.buffer);
    this.ctl = new Int32Array(msg.control);
    this.ctlBytes = new Uint8Array(msg.control);
    const view = new DataView(msg.memory.buffer); // shared memory never detaches: one view serves
    const memory: GuestMemory = {
      bytes: () => this.mem,
      view: () => view,
      markDirty: (addr, len) => this.markDirty(addr >>> 0, len >>> 0),
      // Plain: every page is local (it runs only then), like its own accesses the host's skip the check.
      ensurePresent: (addr, len) => { if (this.tracking) this.ensurePresent(addr >>> 0, len >>> 0); },
    };
    // The host's imports exist before the state they serve (begin() loads it into the host).
    this.wasi = new WasiHost(initialWasiState({ args: [], env: [], preopens: [] }), memory, this.io());
    const raw = this.wasi.imports();
    // The host marks pages before it writes them; mark them again once the call returns, so
    // a pre-copy round that cleared a mark in between still sees the write (see prepare.ts).
    // The plain variant tracks nothing: its imports go straight to the host.
    const remarking: Record<string, unknown> = {};
    for (const [name, impl] of Object.entries(raw)) {
      remarking[name] = (...args: unknown[]) => {
        try { return impl(...(args as never[])); } finally { if (this.marked.length) this.remark(); }
      };
    }
    const suspending = (imports: Record<string, unknown>) => {
      const out = { ...imports };
      for (const name of SUSPENDABLE_IMPORTS) {
        const impl = imports[name] as ((...a: any[]) => any) | undefined;
        if (impl) out[name] = (...args: unknown[]) => this.suspendable(impl, args) as number;
      }
      return out;
    };
    this.plainImports = suspending(raw);
    this.trackedImports = suspending(remarking);
    this.instantiate(msg.module, msg.meta);
  }

  /** The process's own state: its WASI state (and where its files are served), and on a
   *  fresh start its initial memory size. */
  begin(msg: WorkerBegin): void {
    this.stdio = msg.stdio;
    // Files served by the owner (home node's file policy): every call blocks on it.
    const files = msg.files;
    const fs = files ? new RemoteFs(atomicsFileCall({
      signal: this.ctl, index: CTL_FILE, port: files.port, timeoutMs: files.timeoutMs,
      // A write's data is a fresh copy (RemoteFs slices it): move it, do not copy it again.
      send: (id, req) => post({ type: 'file-op', id, req }, req.op === 'write' ? [req.data.buffer as ArrayBuffer] : undefined),
    })) : nodeFs;
    this.wasi.load(msg.wasi, fs);
    if (!msg.exec) this.i32[LOGICAL_PAGES_WORD >>> 2] = this.meta.initialPages;
  }

  /** An instance of the module over the shared memory. It writes no memory (its data
   *  segments are passive: prepare.ts); a fresh start copies them in (run). */
  private instantiate(module: WebAssembly.Module, meta: PreparedMeta): void {
    this.meta = meta;
    this.tracking = meta.variant !== 'plain';
    this.instance = new WebAssembly.Instance(module, {
      [WASI_MODULE]: this.tracking ? this.trackedImports : this.plainImports,
      [FERRY_MODULE]: {
        [IMPORT_MEMORY]: this.memory,
        [IMPORT_SAFEPOINT]: () => this.safepoint(),
        [IMPORT_FAULT]: (addr: number, len: number) => this.ensurePresent(addr >>> 0, len >>> 0),
      },
    } as WebAssembly.Imports);
    this.exports = this.instance.exports as Record<string, any>;
  }

  /** While stopped (unwound, frames on the asyncify stack): carry on in another variant of
   *  the same module. Its frames are the same (prepare.ts), so the next run rewinds them;
   *  the fresh instance gets the captured globals. */
  switchModule(module: WebAssembly.Module, meta: PreparedMeta): void {
    const exec = this.lastExec;
    if (!exec || this.mode !== 'normal') throw new Error('a variant switch needs a stopped process');
    this.instantiate(module, meta);
    this.restoreExec(exec);
  }

  /** Run from the beginning, or rewind the captured stack and carry on. */
  run(exec?: ExecState, sameInstance = false): void {
    if (exec) {
      if (!sameInstance) this.restoreExec(exec);
      const len = exec.asyncify.length;
      if (sameInstance) {
        // The unwound frames are still in place: the asyncify stack is a stack, never reset it.
      } else this.mem.set(exec.asyncify, ASYNCIFY_STACK);
      this.setAsyncifyData(ASYNCIFY_STACK + len);
      Atomics.store(this.i32, STOP_FLAG >>> 2, 1); // the poll must fire again to reach the safe point
      this.mode = 'rewinding';
      this.exports.asyncify_start_rewind(ASYNCIFY_DATA);
    } else {
      this.exports[EXPORT_INIT_DATA]();
      if (this.meta.hasStartFunction) this.exports[EXPORT_START_FN]();
    }
    post({ type: 'running', hostMs: hostMs() });
    let exitCode = 0;
    try {
      this.exports._start();
    } catch (e) {
      if (e instanceof WasiExit) exitCode = e.code;
      else throw e;
    }
    if (this.mode === 'unwinding') {
      const stoppedAt = epochMs();
      this.exports.asyncify_stop_unwind();
      this.mode = 'normal';
      const exec = this.captureExec();
      this.lastExec = exec;
      post({ type: 'stopped', exec, wasi: this.wasi.snapshot(), stoppedAt });
      return;
    }
    post({ type: 'exited', code: exitCode, wasi: this.wasi.snapshot() });
  }

  private setAsyncifyData(current: number): void {
    this.i32[ASYNCIFY_DATA >>> 2] = current | 0;
    this.i32[(ASYNCIFY_DATA >>> 2) + 1] = ASYNCIFY_STACK_END | 0;
  }

  private startUnwind(): void {
    this.setAsyncifyData(ASYNCIFY_STACK);
    this.mode = 'unwinding';
    this.exports.asyncify_start_unwind(ASYNCIFY_DATA);
  }

  /** Called by the poll at loop headers and function entries when the stop flag is set. */
  private safepoint(): void {
    if (this.mode === 'rewinding') {
      this.exports.asyncify_stop_rewind();
      this.mode = 'normal';
      this.clearStop();
      return;
    }
    if (Atomics.load(this.ctl, CTL_STOP)) this.startUnwind();
    else if (Atomics.load(this.ctl, CTL_THROTTLE)) this.throttle();
    else this.clearStop(); // a stale flag (stop withdrawn): carry on
  }

  private clearStop(): void {
    if (!Atomics.load(this.ctl, CTL_STOP) && !Atomics.load(this.ctl, CTL_THROTTLE)) Atomics.store(this.i32, STOP_FLAG >>> 2, 0);
  }

  /** Auto-converge: run RUN_SLICE_MS, then sleep so that the sleeping share is CTL_THROTTLE per mille.
   *  The stop flag stays set meanwhile, so every poll comes here; a stop request ends the sleep. */
  private runSince = performance.now();
  private throttle(): void {
    const now = performance.now();
    if (now - this.runSince < RUN_SLICE_MS) return;
    const share = Math.min(990, Atomics.load(this.ctl, CTL_THROTTLE)) / 1000;
    const sleepMs = (RUN_SLICE_MS * share) / (1 - share);
    const wake = Atomics.load(this.ctl, CTL_WAKE);
    if (!Atomics.load(this.ctl, CTL_STOP)) Atomics.wait(this.ctl, CTL_WAKE, wake, sleepMs);
    this.runSince = performance.now();
    if (Atomics.load(this.ctl, CTL_STOP)) this.startUnwind();
  }

  /** A blocking WASI import: re-entered during rewind, may ask to unwind. */
  private suspendable(impl: (...a: any[]) => any, args: unknown[]): number {
    if (this.mode === 'rewinding') {
      this.exports.asyncify_stop_rewind();
      this.mode = 'normal';
      this.clearStop();
    }
    const r = impl(...args);
    if (r === SUSPEND) { this.startUnwind(); return 0; }
    return r;
  }

  private captureExec(): ExecState {
    const current = this.i32[ASYNCIFY_DATA >>> 2] >>> 0;
    const asyncify = this.mem.slice(ASYNCIFY_STACK, current);
    const globals = this.meta.globals.map((g) => ({ name: g.name, type: g.type, value: globalValueToString(g.type, (this.exports[g.export] as WebAssembly.Global).value) }));
    const logicalPages = (this.exports[EXPORT_LOGICAL_PAGES] as WebAssembly.Global).value as number;
    return { logicalPages, asyncify, globals };
  }

  private restoreExec(exec: ExecState): void {
    const byName = new Map(exec.globals.map((g) => [g.name, g]));
    for (const g of this.meta.globals) {
      const saved = byName.get(g.name);
      if (!saved) throw new Error(`image has no value for global ${g.name}`);
      (this.exports[g.export] as WebAssembly.Global).value = parseGlobalValue(saved);
    }
    (this.exports[EXPORT_LOGICAL_PAGES] as WebAssembly.Global).value = exec.logicalPages;
    Atomics.store(this.i32, LOGICAL_PAGES_WORD >>> 2, exec.logicalPages);
  }

  /** Ranges marked during the current host call (marked again when it returns). */
  private marked: number[] = [];

  private markDirty(addr: number, len: number): void {
    if (len === 0 || !this.tracking) return; // plain: nothing is absent, nobody reads the marks
    this.ensurePresent(addr, len); // a partial write needs the rest of the page (post-copy)
    const first = addr >>> TRACK_SHIFT, last = (addr + len - 1) >>> TRACK_SHIFT;
    // A loop: fill() on a 4 GiB shared array costs ~50 ns a call, this ~3 ns a page.
    for (let p = first; p <= last; p++) this.mem[DIRTY_MAP + p] = 1;
    this.marked.push(first, last);
  }

  private remark(): void {
    const m = this.marked;
    for (let k = 0; k < m.length; k += 2) for (let p = m[k]!; p <= m[k + 1]!; p++) this.mem[DIRTY_MAP + p] = 1;
    this.marked = [];
  }

  private ensurePresent(addr: number, len: number): void {
    if (len === 0) return;
    const first = addr >>> TRACK_SHIFT, last = (addr + len - 1) >>> TRACK_SHIFT;
    for (let p = first; p <= last; p++) {
      if (Atomics.load(this.mem, ABSENT_MAP + p) === 0) continue;
      // Ask the owner for the range, then wait until it bumps the fault word.
      const seq = Atomics.load(this.ctl, CTL_FAULT);
      post({ type: 'fault', addr, len });
      while (Atomics.load(this.ctl, CTL_FAULT) === seq) Atomics.wait(this.ctl, CTL_FAULT, seq, 1000);
      return;
    }
  }

  private io(): WasiIo {
    let askedStdin = false;
    return {
      write: (fd, data) => {
        if (this.stdio === 'message') post({ type: fd === 1 ? 'stdout' : 'stderr', data: data.slice() });
        else writeAllSync(fd, data);
      },
      takeStdin: (max) => {
        const w = Atomics.load(this.ctl, CTL_STDIN_WRITE), r = Atomics.load(this.ctl, CTL_STDIN_READ);
        const avail = (w - r) | 0;
        if (avail <= 0) {
          if (Atomics.load(this.ctl, CTL_STDIN_EOF)) return new Uint8Array(0);
          if (!askedStdin) { askedStdin = true; post({ type: 'want-stdin' }); }
          return null;
        }
        const n = Math.min(avail, max);
        const out = new Uint8Array(n);
        for (let i = 0; i < n; i++) out[i] = this.ctlBytes[CTL_HEADER_BYTES + ((r + i) >>> 0) % STDIN_RING_BYTES];
        Atomics.store(this.ctl, CTL_STDIN_READ, (r + n) | 0);
        post({ type: 'want-stdin' }); // room in the ring again
        return out;
      },
      wait: (deadline, wantStdin): WaitResult => {
        for (;;) {
          const seen = Atomics.load(this.ctl, CTL_WAKE);
          if (Atomics.load(this.ctl, CTL_STOP)) return 'stop';
          if (wantStdin) {
            const avail = (Atomics.load(this.ctl, CTL_STDIN_WRITE) - Atomics.load(this.ctl, CTL_STDIN_READ)) | 0;
            if (avail > 0 || Atomics.load(this.ctl, CTL_STDIN_EOF)) return 'ready';
            if (!askedStdin) { askedStdin = true; post({ type: 'want-stdin' }); }
          }
          let timeout = Infinity;
          if (deadline !== null) {
            timeout = deadline - performance.now();
            if (timeout <= 0) return 'timeout';
          }
          Atomics.wait(this.ctl, CTL_WAKE, seen, timeout);
        }
      },
    };
  }
}

/** fs.writeSync on a non-blocking pipe can write part or throw EAGAIN: finish the job. */
function writeAllSync(fd: number, data: Uint8Array): void {
  let off = 0;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while (off < data.length) {
    try {
      off += writeSync(fd, data, off, data.length - off);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(nap, 0, 0, 1);
    }
  }
}
