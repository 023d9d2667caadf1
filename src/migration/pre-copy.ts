// Pre-copy (the V kernel; thesis 2.3.2): while the process runs, send every
// page once, then in rounds the pages written since the round before; when
// what is left would fit the down-time limit at the link's measured bandwidth
// (or, with the thesis's limits, is under 30% of the address space), or the
// rounds run out, freeze and send the rest. No residual dependency.
//
// Ferry's pre-copy cannot "fail" the way the thesis's did on a heavy writer:
// when the rounds run out it simply freezes and sends what is dirty (a longer
// down time, reported), and auto-converge (convergence.ts) slows a writer that
// dirties faster than the link drains.
import type { Captured } from '../vm/process.ts';
import type { SourceContext, Strategy } from './strategy.ts';

export class PreCopy implements Strategy {
  readonly algorithm: string = 'pre-copy';
  private round = 0;
  /** Migration pages covered by the rounds so far (the address space seen while running). */
  private covered = 0;

  async setup(ctx: SourceContext): Promise<void> {
    this.covered = ctx.dirty.addressSpacePages();
    ctx.dirty.clear(this.covered); // round 1 sends everything: earlier marks mean nothing
  }

  pending(ctx: SourceContext): number {
    if (this.round === 0) return this.covered * ctx.pageSize;
    return ctx.dirty.count(Math.max(this.covered, ctx.dirty.addressSpacePages())) * ctx.pageSize;
  }

  async iterate(ctx: SourceContext): Promise<void> {
    const pages = this.round === 0 ? range(0, this.covered) : ctx.dirty.take(this.covered);
    const grown = ctx.dirty.addressSpacePages();
    if (this.round > 0 && grown > this.covered) { pages.push(...range(this.covered, grown)); this.covered = grown; }
    this.round++;
    await ctx.sendPages(pages, { round: this.round });
  }

  async complete(ctx: SourceContext, frozen: Captured): Promise<void> {
    await ctx.sendPages(this.remaining(ctx, frozen));
  }

  /** What the freeze sends: the pages dirty since the last round, and those grown since. */
  remaining(ctx: SourceContext, frozen: Captured): number[] {
    const all = Math.ceil(frozen.logicalBytes / ctx.pageSize);
    // No round ran (the whole process fitted the limit): this is a total copy.
    if (this.round === 0) return range(0, all);
    const pages = ctx.dirty.take(Math.min(this.covered, all));
    if (all > this.covered) pages.push(...range(this.covered, all));
    return pages;
  }
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i < to; i++) out.push(i);
  return out;
}
