// The contract between the migration engine and an algorithm (strategy).
// A strategy decides which pages move when; it never touches sockets (the
// engine's channel does) nor the state machine (the engine owns it).
//
// Per-phase hooks, called by the engine in this order (QEMU's SaveVMHandlers,
// reduced to what address-space transfer needs):
//
//   hook          when                                       may send pages as
//   setup         the destination is ready; process runs      -
//   pending       before each round: bytes still to move      -
//                 while running (0: freeze now)
//   iterate       one round while the process runs            preparation
//   complete      the process is frozen (down time)           downtime
//   postProcess   the process runs on the destination         postProcessing
//   cleanup       always, last (success, failure, cancel)     -
//
// Whether to run another round is decided by small named predicates
// (convergence.ts) over pending(), the link and the round count.
import type { Captured } from '../vm/process.ts';
import type { MetricsRecorder, Phase } from './metrics.ts';

/** What a strategy may use on the source side. */
export interface SourceContext {
  readonly pageSize: number;
  /** The process's guest memory (shared with its worker; read while frozen for a consistent copy). */
  readonly memory: Uint8Array;
  readonly metrics: MetricsRecorder;
  /** Set when the migration is cancelled or failed: stop sending. */
  readonly signal: AbortSignal;
  /** The phase sendPages() counts into. */
  readonly phase: Phase;
  /** Send these pages' current bytes to the destination. All-zero pages the destination
   *  has never received are elided (counted as zero pages); the destination's memory is zero there. */
  sendPages(indices: Iterable<number>, opts?: SendOptions): Promise<void>;
  /** Post-processing is over on the source side: wait for the destination to hold every page. */
  finish(): Promise<void>;
  /** After `err` broke the link during post-processing: reach the destination again (bounded)
   *  and mark the pages it still lacks unsent, so a sendPages with skipSent resends them; returns
   *  those pages. Rethrows `err` if it was not the link's fault, throws if the destination stays unreachable. */
  recover(err: unknown): Promise<number[]>;
  /** The process's dirty pages (pre-copy), in migration pages. */
  readonly dirty: DirtyView;
  /** The file server of an algorithm that flushes pages to one (flushing, freeze-free). */
  readonly fileServer?: FileServerView;
}

/** A file server as strategies see it (src/node/file-server.ts keeps the store). */
export interface FileServerView {
  /** Its node name. */
  readonly node: string;
  /** The source node's name (this node). */
  readonly source: string;
  /** Store these pages' current bytes there (all-zero pages are skipped: the store reads as
   *  zero where nothing was stored). Stops early once `signal` is aborted. */
  flush(pages: Iterable<number>, signal?: AbortSignal): Promise<void>;
  /** Every page is stored: the file server serves the running node's faults from now on. */
  seal(): Promise<void>;
  /** Freeze-free: tell the destination to fault to the file server from now on. False when
   *  the process no longer depends on the source (it ended, has every page, or moved on). */
  handOver(): Promise<boolean>;
  /** Resolves (with why) once the running node no longer needs the source's pages. */
  readonly sourceReleased: Promise<string>;
  /** Drop the store (best effort). */
  drop(reason: string): void;
}

/** Dirty-page bookkeeping of the running process, as strategies see it (src/memory/dirty.ts). */
export interface DirtyView {
  /** Migration pages of the address space as the source sees it while the process runs. */
  addressSpacePages(): number;
  /** Whether the map holds the process's writes (false: it ran in the plain variant, untracked). */
  tracked(): boolean;
  clear(pages: number): void;
  count(pages: number): number;
  take(pages: number): number[];
  /** Whether this page was written since its mark was last cleared (the mark stays). */
  marked(page: number): boolean;
}

export interface SendOptions {
  round?: number;
  /** Send all-zero pages as zero markers even if never sent (the destination marked them absent). */
  zeroMarkers?: boolean;
  /** Skip pages already sent (or served to a fault). */
  skipSent?: boolean;
}

/** A fault's answer: pages whose bytes go now, pages whose stored copy is current ("not
 *  modified": no bytes), pages already on their way in the background push. */
export interface FaultPlan { send: number[]; notModified: number[]; inFlight: number[] }

export interface Strategy {
  /** Its name on the command line (`--algorithm`). */
  readonly algorithm: string;
  /** The process resumes before it has all its pages: the destination runs the faulting
   *  variant and fetches absent pages from the source, which serves them until done. */
  readonly faulting?: boolean;
  /** No push after the commit: the source serves pages for the life of the process (demand
   *  paging). The migration completes once the process runs on the destination; its total
   *  time stays open while the dependency remains. */
  readonly residual?: boolean;
  /** The algorithm needs a file server (a node with the file-server role): 'only', it serves
   *  every fault and the source none (flushing); 'after-source', the source serves faults
   *  until it has flushed every page there, then the file server does (freeze-free). */
  readonly fileServer?: 'only' | 'after-source';
  /** Which variant of the algorithm (`--variant`), if it has several. */
  readonly variant?: string;
  /** Pages sent before the commit go to the destination's temporary page store, not the
   *  process's memory; after the commit every page is absent until the source says whether
   *  the stored copy is current (assisted post-copy). */
  readonly temporaryStore?: boolean;
  /** Stop the rounds once one no longer shrinks what is pending (convergence.ts, stalled):
   *  queued pre-copy gauges its working set so. */
  readonly gaugesWorkingSet?: boolean;
  /** How to answer a fault on these pages (default: send them all). */
  planFault?(pages: number[]): FaultPlan;
  setup?(ctx: SourceContext): Promise<void>;
  /** Bytes still to send before the process may be frozen. */
  pending?(ctx: SourceContext): number;
  iterate?(ctx: SourceContext): Promise<void>;
  /** Down time: send what the destination needs before the process can run there. */
  complete(ctx: SourceContext, frozen: Captured): Promise<void>;
  /** The pages complete() would send (frozen): those the destination lacks or holds an old
   *  copy of. A strategy that has it can switch to post-copy (--postcopy-after-rounds). */
  remaining?(ctx: SourceContext, frozen: Captured): number[];
  /** After the destination runs the process; resolves when no dependency on the source
   *  remains, with the nodes the process still depends on (none if void: the record closes). */
  postProcess?(ctx: SourceContext): Promise<void | string[]>;
  cleanup?(ctx: SourceContext): void;
}

export function* pageRange(from: number, to: number): IterableIterator<number> {
  for (let i = from; i < to; i++) yield i;
}

/** Pages of the logical address space of a frozen process: 0 .. logicalBytes/pageSize. */
export function* allPages(frozen: Captured, pageSize: number): IterableIterator<number> {
  const n = Math.ceil(frozen.logicalBytes / pageSize);
  for (let i = 0; i < n; i++) yield i;
}
