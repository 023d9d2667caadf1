// Demand paging (thesis 2.3.2): freeze, send the minimal state (plus, in the
// eager-dirty variant, the dirty pages), resume on the destination at once in
// the faulting variant; every page not sent is fetched from the source on its
// first touch, for the life of the process. There is no background push: the
// source is a residual dependency until the process ends, has touched every
// page, or moves on (it then pulls its absent pages first: src/node/remote-pages.ts).
// The node holding the pages serves them on any connection from the node
// running the process (src/node/page-server.ts).
//
// Variants (`--variant`):
//   copy-on-reference (Accent): the state alone; every page comes on first touch.
//   eager-dirty (MOSIX): the state plus the dirty pages. "Dirty" is the dirty
//     map at the freeze: the pages the process has written since it started,
//     or since it arrived on the source node (each node's map starts empty
//     when the process arrives; a pre-copy round clears it). Those go during
//     the down time, the all-zero ones as 4-byte zero markers. Clean pages
//     that are all zero are MOSIX's zero-fill pages: never fetched, they go as
//     zero markers too. The other clean pages (the module's initial data
//     never written, pages brought by an earlier migration and only read
//     since) are what MOSIX paged in from the executable: here they are
//     faulted in from the source.
//     A process that ran in the plain variant (no dirty tracking: ferry's
//     steady state) has no such history: every page counts as dirty.
import type { Captured } from '../vm/process.ts';
import { DIRTY_MAP, TRACK_PAGE } from '../vm/layout.ts';
import { FerryError } from '../errors.ts';
import { isZeroPage } from '../memory/page-batch.ts';
import type { SourceContext, Strategy } from './strategy.ts';

export const DEMAND_PAGING_VARIANTS = ['copy-on-reference', 'eager-dirty'] as const;
export type DemandPagingVariant = (typeof DEMAND_PAGING_VARIANTS)[number];

export class DemandPaging implements Strategy {
  readonly algorithm = 'demand-paging';
  readonly faulting = true;
  readonly residual = true;
  readonly variant: DemandPagingVariant;

  constructor(variant: string = 'copy-on-reference') {
    if (!(DEMAND_PAGING_VARIANTS as readonly string[]).includes(variant))
      throw new FerryError('bad-argument', `demand-paging has no variant '${variant}' (known: ${DEMAND_PAGING_VARIANTS.join(', ')})`);
    this.variant = variant as DemandPagingVariant;
  }

  pending(): number { return 0; }

  async complete(ctx: SourceContext, frozen: Captured): Promise<void> {
    if (this.variant === 'copy-on-reference') return; // the state alone: it travels with the commit
    const n = Math.ceil(frozen.logicalBytes / ctx.pageSize);
    // Untracked (the plain variant): no dirty history, every page counts as dirty.
    if (!ctx.dirty.tracked()) { await ctx.sendPages(allPages(n), { zeroMarkers: true }); return; }
    const dirty = new Set(dirtyPages(ctx.memory, ctx.pageSize, n));
    const eager = function* () { for (let p = 0; p < n; p++) if (dirty.has(p) || isZeroPage(ctx.memory, p, ctx.pageSize)) yield p; };
    await ctx.sendPages(eager(), { zeroMarkers: true });
  }
}

/** Migration pages below `pages` whose dirty marks are set (read, not cleared: a failed
 *  migration leaves the process as it was). */
export function dirtyPages(memory: Uint8Array, pageSize: number, pages: number): number[] {
  const per = pageSize / TRACK_PAGE;
  const out: number[] = [];
  for (let p = 0; p < pages; p++) {
    const at = DIRTY_MAP + p * per;
    for (let k = 0; k < per; k++) if (memory[at + k]) { out.push(p); break; }
  }
  return out;
}

function* allPages(n: number): Generator<number> { for (let p = 0; p < n; p++) yield p; }
