// Queued Pre-Copy (the Nomadic OS's design; thesis 2.3.6, first built in 4.2.1):
// a pre-copy that sends a page only once it has stopped being written, so a
// page the process keeps writing is sent at the freeze, once, instead of in
// every round.
//
// Two sets of pages, as in the thesis:
//   W  the working set: pages written recently ("delayed"); not sent while running;
//   R  the queue of pages ready to send, "write-protected": each one's dirty mark
//      was clear when it was queued, and a write since (the mark set again: the
//      thesis's write fault on a read-only page) moves it back to W.
// A background sender (this node's event loop, while the process runs in its
// worker) takes R's head and sends it, checking its mark just before the copy.
// Each round (the thesis's "rerun"), at least QUEUE_INTERVAL_MS after the one
// before, a scan reads and clears every mark: a page sent and written since goes
// to W; a page of W written since stays there; a page of W not written for a
// whole interval is queued on R. So a page is sent at most once every two rounds
// while running (sent, written, seen dirty at the next scan, clean for a whole
// interval, queued at the scan after), against once a round for pre-copy.
//
// At the freeze the state and W go (with anything still queued, anything written
// since the last scan, and memory grown since): the thesis's final flush. The
// engine's convergence predicates decide when: what is left fits the down-time
// limit, the rounds run out, or W stopped shrinking (a round took less than a tenth
// off what it found pending: the thesis's step 6 gauges W). Unlike the thesis's, it cannot
// "fail" on a heavy writer, whose working set simply goes at the freeze, at once
// instead of after every rerun (or, with --postcopy-after-rounds, after the
// freeze: remaining() names the pages for that).
import { setTimeout as sleep } from 'node:timers/promises';
import type { Captured } from '../vm/process.ts';
import type { SourceContext, Strategy } from './strategy.ts';

/** The shortest time between two scans: a page of W must stay unwritten this long to be queued. */
export const QUEUE_INTERVAL_MS = 100;
/** Pages whose marks are checked together just before they are copied (256 KiB of 4 KiB pages). */
const SEND_CHUNK_BYTES = 256 * 1024;

/** Where a page is: sent (or not seen yet) and clean since, queued on R, or delayed in W. */
const SENT = 0, R = 1, W = 2;

export class QueuedPreCopy implements Strategy {
  readonly algorithm = 'queued-pre-copy';
  readonly gaugesWorkingSet = true;
  private round = 0;
  /** Migration pages the rounds know of (the address space seen while running). */
  private covered = 0;
  private where = new Uint8Array(0);
  /** R, in queue order (FIFO); drained by every round. */
  private queue: number[] = [];
  private lastScan = 0;

  async setup(ctx: SourceContext): Promise<void> {
    // Every page starts on R, its mark cleared (thesis: all of W queued, write-protected).
    this.covered = ctx.dirty.addressSpacePages();
    ctx.dirty.clear(this.covered);
    this.lastScan = performance.now();
    this.where = new Uint8Array(this.covered).fill(R);
    this.queue = range(0, this.covered);
  }

  /** What a freeze now would send: R, W, pages written since sent, memory grown since. */
  pending(ctx: SourceContext): number {
    let n = Math.max(0, ctx.dirty.addressSpacePages() - this.covered);
    for (let p = 0; p < this.covered; p++) if (this.where[p] !== SENT || ctx.dirty.marked(p)) n++;
    return n * ctx.pageSize;
  }

  async iterate(ctx: SourceContext): Promise<void> {
    if (this.round > 0) {
      const wait = this.lastScan + QUEUE_INTERVAL_MS - performance.now();
      if (wait > 0) await sleep(wait, undefined, { signal: ctx.signal }).catch(() => {});
      if (ctx.signal.aborted) return;
      this.scan(ctx);
    }
    this.round++;
    await this.drain(ctx);
  }

  /** The rerun: read and clear every mark; move pages between W and R. R is empty here. */
  private scan(ctx: SourceContext): void {
    const grown = ctx.dirty.addressSpacePages();
    if (grown > this.covered) {
      // Memory the process grew into is being written: it starts in W.
      const w = new Uint8Array(grown);
      w.set(this.where);
      w.fill(W, this.covered);
      this.where = w;
      this.covered = grown;
    }
    const written = new Uint8Array(this.covered);
    for (const p of ctx.dirty.take(this.covered)) {
      written[p] = 1;
      if (this.where[p] === SENT) this.where[p] = W; // sent, written since: delayed
    }
    this.lastScan = performance.now();
    this.queue = [];
    for (let p = 0; p < this.covered; p++) {
      // Clean for a whole interval: queued, write-protected (its mark is clear now).
      if (this.where[p] === W && !written[p]) { this.where[p] = R; this.queue.push(p); }
    }
  }

  /** The background sender: R's pages in queue order; one written since it was queued goes back to W. */
  private async drain(ctx: SourceContext): Promise<void> {
    const chunk = Math.max(1, Math.floor(SEND_CHUNK_BYTES / ctx.pageSize));
    let head = 0;
    while (head < this.queue.length) {
      const send: number[] = [];
      while (send.length < chunk && head < this.queue.length) {
        const p = this.queue[head++]!;
        // A write after this check sets the mark again: the next scan sees it.
        if (ctx.dirty.marked(p)) this.where[p] = W;
        else { this.where[p] = SENT; send.push(p); }
      }
      await ctx.sendPages(send, { round: this.round });
      if (ctx.signal.aborted) return;
    }
    this.queue = [];
  }

  async complete(ctx: SourceContext, frozen: Captured): Promise<void> {
    await ctx.sendPages(this.remaining(ctx, frozen));
  }

  /** The final flush (frozen): W, R, pages written since the last scan, memory grown since. */
  remaining(ctx: SourceContext, frozen: Captured): number[] {
    const all = Math.ceil(frozen.logicalBytes / ctx.pageSize);
    const known = Math.min(this.covered, all);
    const out = new Uint8Array(all);
    for (let p = 0; p < known; p++) if (this.where[p] !== SENT) out[p] = 1;
    for (const p of ctx.dirty.take(known)) out[p] = 1;
    out.fill(1, known);
    const pages: number[] = [];
    for (let p = 0; p < all; p++) if (out[p]) pages.push(p);
    return pages;
  }
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}
