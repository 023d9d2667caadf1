// Post-copy (thesis 2.3.4): the state moves first and the process resumes on
// the destination at once, every page absent; a first touch faults and the
// page is fetched from the source on the urgent class, while the source
// pushes every page in the background (only pages still absent are taken).
// Down time does not grow with the address space; the source is a residual
// dependency until the push ends. A link that breaks meanwhile is re-dialled and
// the push resumes with the pages the destination still lacks (QEMU's recover).
import { pageRange, type SourceContext, type Strategy } from './strategy.ts';

export class PostCopy implements Strategy {
  readonly algorithm = 'post-copy';
  readonly faulting = true;

  pending(): number { return 0; }

  async complete(): Promise<void> { /* the state alone: it travels with the commit */ }

  async postProcess(ctx: SourceContext): Promise<void> { await pushRest(ctx); }
}

/** Post-copy's background push: every page the destination still lacks, then done; a
 *  broken link is recovered (a new connection, the pages still absent). Also the push of
 *  a pre-copy that switched to post-copy (--postcopy-after-rounds). */
export async function pushRest(ctx: SourceContext): Promise<void> {
  for (;;) {
    try {
      await ctx.sendPages(pageRange(0, ctx.metrics.m.pages.addressSpace), { zeroMarkers: true, skipSent: true });
      await ctx.finish();
      return;
    } catch (e) {
      await ctx.recover(e); // a broken link: push what the destination still lacks over a new connection
    }
  }
}
