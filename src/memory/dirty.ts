// Dirty pages of a running process, for pre-copy rounds: the prepared module
// sets one byte per 4 KiB page in the dirty map (layout.ts) after every write;
// a round takes the marked pages and clears their marks. Clearing before the
// copy is what makes this safe while the process runs: a write after the clear
// marks the page again (resent next round); a write before it is in the copy.
import { DIRTY_MAP, TRACK_PAGE } from '../vm/layout.ts';

export class DirtyPages {
  private readonly perPage: number;

  constructor(private readonly memory: Uint8Array, private readonly pageSize: number) {
    this.perPage = pageSize / TRACK_PAGE;
  }

  private get map(): Uint8Array { return this.memory; }

  /** Forget every mark below `pages` (migration pages). */
  clear(pages: number): void {
    this.map.fill(0, DIRTY_MAP, DIRTY_MAP + pages * this.perPage);
  }

  /** How many migration pages below `pages` are marked (not cleared). */
  count(pages: number): number {
    const map = this.map;
    let n = 0;
    const per = this.perPage;
    let i = DIRTY_MAP;
    const end = DIRTY_MAP + pages * per;
    // Scan 8 tracking bytes at a time where they are all zero (most pages are clean).
    const dv = new DataView(map.buffer, map.byteOffset);
    while (i < end) {
      if (per === 1 && i + 8 <= end && dv.getBigUint64(i, true) === 0n) { i += 8; continue; }
      let marked = false;
      for (let k = 0; k < per; k++) if (map[i + k]) { marked = true; break; }
      if (marked) n++;
      i += per;
    }
    return n;
  }

  /** Whether migration page `page` is marked (its mark left as it is). */
  marked(page: number): boolean {
    const at = DIRTY_MAP + page * this.perPage;
    for (let k = 0; k < this.perPage; k++) if (this.map[at + k]) return true;
    return false;
  }

  /** The marked migration pages below `pages`, their marks cleared. */
  take(pages: number): number[] {
    const map = this.map;
    const out: number[] = [];
    const per = this.perPage;
    const dv = new DataView(map.buffer, map.byteOffset);
    for (let p = 0; p < pages; p++) {
      const at = DIRTY_MAP + p * per;
      if (per === 1 && (p & 7) === 0 && p + 8 <= pages && dv.getBigUint64(at, true) === 0n) { p += 7; continue; }
      let marked = false;
      for (let k = 0; k < per; k++) if (map[at + k]) { marked = true; map[at + k] = 0; }
      if (marked) out.push(p);
    }
    return out;
  }
}
