// Total Copy (freeze and copy: Charlotte, LOCUS; thesis 2.3.1): nothing moves
// while the process runs; once it is frozen every page (but zero pages) and
// its state are sent, and it resumes on the destination with no residual
// dependency. Down time grows with the address space; nothing is sent twice.
import { allPages, type SourceContext, type Strategy } from './strategy.ts';
import type { Captured } from '../vm/process.ts';

export class TotalCopy implements Strategy {
  readonly algorithm = 'total-copy';

  pending(): number { return 0; }

  async complete(ctx: SourceContext, frozen: Captured): Promise<void> {
    await ctx.sendPages(allPages(frozen, ctx.pageSize));
  }
}
