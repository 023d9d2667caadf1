// Assisted post-copy (the thesis's own algorithm, 3.2 and 4.2.3): pre-copy's
// first round, then post-copy.
//
//   preparation   one pass of every page while the process runs; the destination
//                 keeps them in a temporary page store (src/memory/page-store.ts),
//                 not in the process's memory. The source tracks the pages written
//                 after the pass (the dirty map, cleared before it).
//   down time     the state alone; the destination resumes the process in the
//                 faulting variant with every page absent.
//   post-process  a fault asks the source, which answers with the page if it was
//                 modified since the pass, else "not modified" (no bytes): the
//                 destination then takes its stored copy. The source pushes the
//                 modified pages in the background; once they are all there the
//                 rest moves in from the store locally and no dependency remains.
//
// No page is sent more than twice: once in the pass, once more (pushed or
// served to a fault, never both) if it was modified since. A fault on a page
// already pushed is answered "in flight": the destination waits for the push.
// A broken link (post-copy's recovery): the push goes on over a new connection
// with the pushed pages the destination still lacks, and a fault asking again
// for a page it was served (the answer was lost) is served again; only then is
// a page sent a third time.
import type { Captured } from '../vm/process.ts';
import type { FaultPlan, SourceContext, Strategy } from './strategy.ts';

/** Per page after the freeze: modified since the pass, then pushed or served to a fault. */
const NOT_MODIFIED = 0, MODIFIED = 1, PUSHED = 2, SERVED = 3;

export class AssistedPostCopy implements Strategy {
  readonly algorithm = 'assisted-post-copy';
  readonly faulting = true;
  readonly temporaryStore = true;
  /** Migration pages the pass covers (the address space seen while running). */
  private covered = 0;
  private passed = false;
  /** NOT_MODIFIED, MODIFIED (not yet resent), PUSHED or SERVED, per page of the frozen address space. */
  private state = new Uint8Array(0);
  private modified: number[] = [];

  async setup(ctx: SourceContext): Promise<void> {
    this.covered = ctx.dirty.addressSpacePages();
    ctx.dirty.clear(this.covered); // from here a write marks its page: modified since the pass
  }

  pending(ctx: SourceContext): number { return this.passed ? 0 : Math.max(1, this.covered) * ctx.pageSize; }

  /** The pass: every page once (the engine copies each page as it batches it; a write
   *  after the clear marks the page, so a torn copy is always resent). */
  async iterate(ctx: SourceContext): Promise<void> {
    this.passed = true;
    await ctx.sendPages(range(0, this.covered), { round: 1 });
  }

  async complete(ctx: SourceContext, frozen: Captured): Promise<void> {
    const all = Math.ceil(frozen.logicalBytes / ctx.pageSize);
    this.state = new Uint8Array(all);
    // No pass (--max-rounds 0): every page is "modified", this is post-copy with an empty store.
    // Pages past `covered` were never written before the clear: marked if written since, else zero.
    const marked = this.passed ? ctx.dirty.take(Math.max(this.covered, all)) : range(0, all);
    for (const p of marked) if (p < all) { this.state[p] = MODIFIED; this.modified.push(p); }
    ctx.metrics.m.modifiedSincePass = this.modified.length;
    // The state alone: it travels with the commit.
  }

  async postProcess(ctx: SourceContext): Promise<void> {
    for (;;) {
      try {
        // Zero markers: the destination holds no page as present, a modified page now zero must be said.
        await ctx.sendPages(this.push(), { zeroMarkers: true });
        await ctx.finish();
        return;
      } catch (e) {
        // A broken link: pushed pages the destination still lacks were lost with it; push them again.
        for (const p of await ctx.recover(e)) if (this.state[p] === PUSHED) this.state[p] = MODIFIED;
      }
    }
  }

  /** Modified pages not yet resent, each taken as the engine batches it. */
  private *push(): IterableIterator<number> {
    for (const p of this.modified) if (this.state[p] === MODIFIED) { this.state[p] = PUSHED; yield p; }
  }

  planFault(pages: number[]): FaultPlan {
    const plan: FaultPlan = { send: [], notModified: [], inFlight: [] };
    for (const p of pages) {
      const s = p < this.state.length ? this.state[p] : MODIFIED; // past the address space: its (zero) bytes
      if (s === NOT_MODIFIED) plan.notModified.push(p);
      else if (s === PUSHED) plan.inFlight.push(p);
      else { if (p < this.state.length) this.state[p] = SERVED; plan.send.push(p); } // SERVED: asked again, the answer was lost
    }
    return plan;
  }

  cleanup(): void { this.modified = []; this.state = new Uint8Array(0); }
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}
