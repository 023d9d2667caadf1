// Freeze Free (Choices; thesis 2.3.4): the down time ships a minimal process
// state plus the process's current stack and heap pages; the process resumes
// on the destination at once (every other page absent) while the source
// flushes every page to a file server in the background. A fault is served by
// the source while it still holds the pages (its page server, as in demand
// paging); once every page is on the file server the source tells the
// destination to fault there from now on (MIG_HANDOVER) and lets go: the
// source's post-processing ends, the residual dependency on the file server
// remains (until the process ends, has every page, or moves on).
//
// The current pages:
//   - code: a wasm module's code is not in its linear memory; the destination
//     compiled the module during setup, so no code page travels.
//   - stack: the shadow stack (clang's __stack_pointer global, read from the
//     captured globals) grows down from its top; the pages holding the
//     stack pointer and the one above it carry the innermost frames, the page
//     below takes the next calls. Modules without that global (AssemblyScript
//     strips its names) ship no stack page; their stack faults in.
//   - heap: the heuristic "most recently dirtied". Before the freeze the
//     source clears the dirty map and lets the process run SAMPLE_MS more (up to
//     SAMPLE_MAX_MS while it writes nothing): the
//     pages marked at the freeze were written in those last milliseconds (the
//     working set of the moment). Up to HEAP_PAGES of them go, lowest address
//     first. (Clearing the marks loses nothing: every page is flushed anyway,
//     and a later eager-dirty migration faults what it does not send.)
// All-zero pages among them go as 4-byte zero markers.
//
// Not here: Choices shipped the process's communication state separately,
// while messages kept arriving. Ferry's only IPC is stdio through the home
// node, which never freezes (output is numbered and reordered there, input is
// resent from an offset), so there is no communication state to separate yet.
import type { Captured } from '../vm/process.ts';
import { FerryError } from '../errors.ts';
import { dirtyPages } from './demand-paging.ts';
import { pageRange, type SourceContext, type Strategy } from './strategy.ts';

export const STACK_POINTER_GLOBAL = '__stack_pointer';
/** How long the heap heuristic watches the running process before the freeze. */
export const SAMPLE_MS = 20;
/** ... or longer, up to this, while the process has written nothing (a sleeping process writes nothing). */
export const SAMPLE_MAX_MS = 100;
/** Heap pages shipped during the down time, at most. */
export const HEAP_PAGES = 4;

export class FreezeFree implements Strategy {
  readonly algorithm = 'freeze-free';
  readonly faulting = true;
  readonly fileServer = 'after-source' as const;

  pending(): number { return 0; }

  async setup(ctx: SourceContext): Promise<void> {
    const pages = ctx.dirty.addressSpacePages();
    ctx.dirty.clear(pages);
    // On a loaded machine the worker may not have run yet: a little longer, until it wrote something.
    for (let waited = 0; waited < SAMPLE_MAX_MS && (waited === 0 || ctx.dirty.count(pages) === 0); waited += SAMPLE_MS)
      await new Promise((r) => setTimeout(r, SAMPLE_MS));
  }

  async complete(ctx: SourceContext, frozen: Captured): Promise<void> {
    await ctx.sendPages(currentPages(ctx.memory, frozen, ctx.pageSize), { zeroMarkers: true });
  }

  /** Flush every page to the file server, then hand the faults over to it. Returns the nodes
   *  the process still depends on: the file server, or (the file server failed) the source. */
  async postProcess(ctx: SourceContext): Promise<string[]> {
    const fs = ctx.fileServer;
    if (!fs) throw new FerryError('no-file-server', 'freeze-free needs a file server');
    const stop = new AbortController();
    void fs.sourceReleased.then(() => stop.abort());
    try {
      await fs.flush(pageRange(0, ctx.metrics.m.pages.addressSpace), stop.signal);
      if (stop.signal.aborted) { fs.drop('the process no longer needs its pages'); return []; }
      await fs.seal();
      if (await fs.handOver()) return [fs.node];
      fs.drop('the process no longer needs its pages');
      return [];
    } catch (e) {
      // The file server (or the hand-over) failed: the source keeps serving, as in demand paging.
      if (e instanceof FerryError && e.code === 'cancelled') throw e;
      fs.drop(`flush failed: ${(e as Error).message}`);
      return stop.signal.aborted ? [] : [fs.source];
    }
  }
}

/** The pages the down time carries: stack pages around the shadow-stack pointer, then the
 *  heap pages written last (see the header). Sorted, distinct, inside the address space. */
export function currentPages(memory: Uint8Array, frozen: Captured, pageSize: number): number[] {
  const n = Math.ceil(frozen.logicalBytes / pageSize);
  const out = new Set<number>(stackPages(frozen, pageSize));
  const stack = new Set(out);
  let heap = 0;
  for (const p of dirtyPages(memory, pageSize, n)) {
    if (heap >= HEAP_PAGES) break;
    if (!stack.has(p)) { out.add(p); heap++; }
  }
  return [...out].filter((p) => p >= 0 && p < n).sort((a, b) => a - b);
}

/** The page of the shadow-stack pointer, the one above and the one below (none without the global). */
export function stackPages(frozen: Captured, pageSize: number): number[] {
  const g = frozen.exec.globals.find((x) => x.name === STACK_POINTER_GLOBAL && x.type === 'i32');
  if (!g) return [];
  const sp = Number(BigInt.asUintN(32, BigInt(g.value)));
  if (sp >= frozen.logicalBytes) return [];
  const p = Math.floor(sp / pageSize);
  return [p - 1, p, p + 1];
}
