// The protocol between a process's owner (main thread) and the worker thread that
// runs it: tagged unions. The guest memory and a small control block are shared;
// everything else crosses as messages.
import type { PreparedMeta, ValType } from './module-meta.ts';
import type { WasiState } from '../wasi/types.ts';
import type { SerializedError } from '../errors.ts';
import type { MessagePort } from 'node:worker_threads';
import type { FileOpRequest } from '../wasi/file-ops.ts';

/** Execution state beyond memory: what asyncify saved, plus the mutable globals. */
export interface ExecState {
  logicalPages: number;
  /** Bytes of the asyncify stack in use (unwound frames). */
  asyncify: Uint8Array;
  globals: { name: string; type: ValType; value: string }[];
}

export type StdioMode = 'inherit' | 'message';

/** What a worker instantiates: the module over the shared memory, with its control block. */
export interface WorkerSetup {
  module: WebAssembly.Module;
  meta: PreparedMeta;
  memory: WebAssembly.Memory;
  control: SharedArrayBuffer;
}

/** What it needs to run: the WASI state, and the captured stack of a resumed process. */
export interface WorkerBegin {
  wasi: WasiState;
  stdio: StdioMode;
  /** Absent on a fresh start; present to rewind a captured call stack. */
  exec?: ExecState;
  /** Files served by the owner (home node): the worker's end of the reply port
   *  (FileReplyMessage from src/wasi/remote-fs.ts) and the per-call timeout. */
  files?: { port: MessagePort; timeoutMs: number };
}

export type ToWorker =
  /** Instantiate now, run later (a migration's destination, while the pages arrive: the
   *  instance writes no memory). Answered by 'prepared' (or 'failed'). */
  | ({ type: 'prepare' } & WorkerSetup)
  /** Run: in the instance a 'prepare' made (prepared: true), or instantiate first. */
  | ({ type: 'start' } & WorkerBegin & (WorkerSetup | { prepared: true }))
  /** After a capture that keeps running here (periodic checkpoint); with a module, in that
   *  variant of the same program (its frames match: prepare.ts), instantiated over the same memory. */
  | { type: 'continue'; module?: WebAssembly.Module; meta?: PreparedMeta };

export type FromWorker =
  | { type: 'prepared' }
  /** hostMs: when the guest ran again, on the host's clock (another node of the host reads it too). */
  | { type: 'running'; hostMs: number }
  /** stoppedAt: when the stack was unwound (epochMs). */
  | { type: 'stopped'; exec: ExecState; wasi: WasiState; stoppedAt: number }
  | { type: 'exited'; code: number; wasi: WasiState }
  | { type: 'failed'; error: SerializedError }
  | { type: 'stdout' | 'stderr'; data: Uint8Array }
  | { type: 'want-stdin' }
  | { type: 'fault'; addr: number; len: number }
  /** A file-system call to perform; answered on the file port, then CTL_FILE is bumped. */
  | { type: 'file-op'; id: number; req: FileOpRequest };

/** The clock of timestamps that cross threads (FromWorker's `at`, `stoppedAt`): epoch ms at
 *  high resolution. performance.now() alone starts from each thread's own origin. */
export const epochMs = (): number => performance.timeOrigin + performance.now();

/** The host's monotonic clock (CLOCK_MONOTONIC) in ms: every thread of every process on one
 *  host reads it alike, so two nodes on one host can compare instants with it (a node's own
 *  epochMs depends on when its wall clock was read at start). */
export const hostMs = (): number => Number(process.hrtime.bigint()) / 1e6;

// Control block (Int32Array over a SharedArrayBuffer), apart from the guest memory.
export const CTL_WAKE = 0;          // bumped + notified on every event the worker may wait for
export const CTL_STDIN_WRITE = 1;   // total stdin bytes put into the ring
export const CTL_STDIN_READ = 2;    // total stdin bytes taken from the ring
export const CTL_STDIN_EOF = 3;     // 1 once stdin has ended (after the ring drains)
export const CTL_FAULT = 4;         // fault sequence: worker waits until the owner bumps it
export const CTL_STOP = 5;          // mirror of the stop flag, for waits
export const CTL_FILE = 6;          // bumped + notified after each file reply posted to the worker
export const CTL_THROTTLE = 7;      // auto-converge: per mille of the time the process sleeps (0: full speed)
export const CTL_HEADER_BYTES = 64;
export const STDIN_RING_BYTES = 64 * 1024;
export const CONTROL_BYTES = CTL_HEADER_BYTES + STDIN_RING_BYTES;
