// Flushing (Sprite; thesis 2.3.3): stop the process at the source, flush its
// modified pages to a network file server, send the state to the destination
// and resume it there with every page absent; each page fault is resolved by
// the file server. The source keeps nothing: the residual dependency is on the
// file server, for the process's life (until it ends, has touched every page,
// or moves on: it then pulls every page from the file server first).
//
// "Modified pages": Sprite flushed the dirty pages and left clean ones in their
// backing files (the program file, the swap file). A wasm process has no clean
// backing file: its linear memory is anonymous (the module's data segments are
// only its initial contents), so every non-zero page is "modified" and goes to
// the file server. All-zero pages are not stored: the store reads as zero where
// nothing was written, like a sparse backing file.
//
// The flush is part of the down time (the thesis's point: the data sent to the
// file server is the overhead Flushing pays); the destination gets the state alone.
import type { Captured } from '../vm/process.ts';
import { allPages, type SourceContext, type Strategy } from './strategy.ts';
import { FerryError } from '../errors.ts';

export class Flushing implements Strategy {
  readonly algorithm = 'flushing';
  readonly faulting = true;
  readonly residual = true;
  readonly fileServer = 'only' as const;

  pending(): number { return 0; }

  async complete(ctx: SourceContext, frozen: Captured): Promise<void> {
    const fs = ctx.fileServer;
    if (!fs) throw new FerryError('no-file-server', 'flushing needs a file server');
    await fs.flush(allPages(frozen, ctx.pageSize));
    await fs.seal(); // answered once every page is stored: only then may the destination fault
  }
}
