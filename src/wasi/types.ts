// The contract between the WASI host (src/wasi) and the runtime that runs it (src/vm).
// The host's whole state is plain data (WasiState) so it can be captured into a
// process image and rebuilt in a fresh worker, on another node.

/** Returned by a host function that must block but was asked to stop: the runtime
 *  unwinds the guest (asyncify) and, on resume, calls the same import again with the
 *  same arguments; the host must then carry on where it left off (state holds it). */
export const SUSPEND: unique symbol = Symbol.for('ferry.wasi.suspend');
export type Suspend = typeof SUSPEND;

/** WASI imports that may return SUSPEND (the runtime tells asyncify they can unwind). */
export const SUSPENDABLE_IMPORTS = ['fd_read', 'poll_oneoff'] as const;

/** Guest linear memory as the host sees it. Addresses are unsigned 32-bit. */
export interface GuestMemory {
  /** A view of the whole memory (may be re-created after growth; never cache it across calls). */
  bytes(): Uint8Array;
  view(): DataView;
  /** The host is about to write [addr, addr+len): marks those pages dirty. */
  markDirty(addr: number, len: number): void;
  /** The host is about to read [addr, addr+len): faults in pages that are not local yet. */
  ensurePresent(addr: number, len: number): void;
}

/** What the host waits for when a call would block. */
export type WaitResult = 'ready' | 'timeout' | 'stop';

/** Stdio and blocking, provided by the runtime (worker thread). All synchronous. */
export interface WasiIo {
  /** Write to the process's stdout (1) or stderr (2); ordered, never lost. */
  write(fd: 1 | 2, data: Uint8Array): void;
  /** Take up to max bytes of stdin already available without blocking:
   *  a non-empty array, an empty array at end of input, or null if none is available yet. */
  takeStdin(max: number): Uint8Array | null;
  /** Block until stdin has data (if wantStdin), the host monotonic time reaches
   *  deadlineHostMs (performance.now() scale; null = no deadline), or a stop is requested. */
  wait(deadlineHostMs: number | null, wantStdin: boolean): WaitResult;
  /** Optional, for poll_oneoff on stdin: bytes of stdin available now without blocking
   *  (> 0), 0 if none yet, -1 at end of input. Consumes nothing. Without it, stdin is
   *  always reported readable (a following fd_read still blocks and suspends properly). */
  stdinAvailable?(): number;
}

/** One open descriptor, as plain data. Host OS handles are not state: they are
 *  reopened lazily from hostPath after a resume. */
export interface FdEntry {
  kind: 'stdin' | 'stdout' | 'stderr' | 'file' | 'directory';
  /** Absolute path on the host (files and directories). */
  hostPath?: string;
  /** Path as the guest named it (for diagnostics and `ferry inspect`). */
  guestPath?: string;
  /** For preopened directories: the name the guest sees (fd_prestat_dir_name). */
  preopen?: string;
  /** Current file offset in bytes (files). */
  offset: number;
  /** WASI fdflags (append, nonblock, ...). */
  fdflags: number;
  /** Open mode for reopening: whether it was opened for reading and/or writing. */
  read: boolean;
  write: boolean;
  rightsBase: string;        // bigint as decimal string (plain data, JSON-safe)
  rightsInheriting: string;
}

export interface WasiState {
  version: 1;
  args: string[];
  env: string[];              // "KEY=VALUE"
  preopens: { host: string; guest: string }[];
  fds: Record<number, FdEntry>;
  /** Guest monotonic clock (ns, decimal string) at capture; the clock continues from here on resume. */
  monotonicNs: string;
  /** A blocking poll_oneoff that was interrupted: its deadline on the guest monotonic clock (ns string). */
  pendingDeadlineNs: string | null;
  /** Added by the host: the guest monotonic time (ns string) at which that interrupted
   *  poll_oneoff started, so every relative clock subscription keeps its own deadline on
   *  resume. Null when no poll is pending; absent in states made before it existed. */
  pendingPollStartNs?: string | null;
  /** Stdin bytes read from the source but not yet consumed by the guest (base64). */
  stdinBuffered: string;
  stdinEof: boolean;
  /** Bytes taken from the process's stdin source so far, across every run and resume:
   *  whoever restores it can feed input from this offset on. */
  stdinTakenBytes?: number;
  /** Set once proc_exit ran. */
  exitCode: number | null;
}

/** Thrown (and caught by the runtime) when the guest calls proc_exit. */
export class WasiExit extends Error {
  constructor(readonly code: number) { super(`proc_exit(${code})`); this.name = 'WasiExit'; }
}
