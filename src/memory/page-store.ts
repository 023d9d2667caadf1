// A temporary page store: pages kept at the destination outside the process's
// memory until it is known whether they are still current (assisted post-copy,
// thesis 3.2 and 4.2.3: the "dataq" list the first pass fills).
//
// In memory, not on disk: the thesis's dataq is a list in kernel memory, and
// a "not modified" fault is answered from here while the process waits, so a
// disk read there would add to the execution delay of every such fault.
// The cost is a second copy of the address space for a while; it is held in
// slabs of SLAB_PAGES pages, each dropped as soon as its last page has moved
// into the process or has been found stale, so it shrinks as post-processing goes.
import { copyInto } from './copy.ts';

const SLAB_PAGES = 256;

interface Slab { bytes: Uint8Array; held: Uint8Array; count: number }

export class PageStore {
  private readonly slabs = new Map<number, Slab>();
  private pages = 0;

  constructor(readonly pageSize: number) {}

  /** Pages held now. */
  get size(): number { return this.pages; }

  /** Bytes held now (slabs allocated). */
  get bytes(): number { return this.slabs.size * SLAB_PAGES * this.pageSize; }

  /** Keep a copy of page `index` (replacing any older copy). */
  put(index: number, bytes: Uint8Array): void {
    const k = Math.floor(index / SLAB_PAGES), at = index % SLAB_PAGES, ps = this.pageSize;
    let s = this.slabs.get(k);
    if (!s) { s = { bytes: new Uint8Array(SLAB_PAGES * ps), held: new Uint8Array(SLAB_PAGES), count: 0 }; this.slabs.set(k, s); }
    s.bytes.set(bytes.subarray(0, ps), at * ps);
    if (!s.held[at]) { s.held[at] = 1; s.count++; this.pages++; }
  }

  has(index: number): boolean {
    const s = this.slabs.get(Math.floor(index / SLAB_PAGES));
    return s !== undefined && s.held[index % SLAB_PAGES] === 1;
  }

  /** Copy page `index` to `into` at `offset` and forget it. Returns false (nothing written)
   *  when the store does not hold it. */
  take(index: number, into: Uint8Array, offset: number): boolean {
    const k = Math.floor(index / SLAB_PAGES), at = index % SLAB_PAGES, ps = this.pageSize;
    const s = this.slabs.get(k);
    if (!s || !s.held[at]) return false;
    copyInto(into, offset, s.bytes.subarray(at * ps, (at + 1) * ps));
    this.forget(k, s, at);
    return true;
  }

  /** Forget page `index` (its copy is stale: a newer one came from the source). */
  drop(index: number): void {
    const k = Math.floor(index / SLAB_PAGES), at = index % SLAB_PAGES;
    const s = this.slabs.get(k);
    if (s && s.held[at]) this.forget(k, s, at);
  }

  /** Pages held, in order. */
  *indices(): IterableIterator<number> {
    for (const k of [...this.slabs.keys()].sort((a, b) => a - b)) {
      const s = this.slabs.get(k)!;
      for (let at = 0; at < SLAB_PAGES; at++) if (s.held[at]) yield k * SLAB_PAGES + at;
    }
  }

  clear(): void { this.slabs.clear(); this.pages = 0; }

  private forget(k: number, s: Slab, at: number): void {
    s.held[at] = 0;
    this.pages--;
    if (--s.count === 0) this.slabs.delete(k);
  }
}
