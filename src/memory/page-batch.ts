// A batch of pages on the wire (the body of a MIG_PAGES frame):
//
//   u32 n       pages carried with their bytes
//   u32 z       pages to zero (sent before, all zero now)
//   u32 × n     their indices
//   u32 × z     indices of the pages to zero
//   n × pageSize bytes, in the order of the indices
//
// Little-endian. The decoder checks every length and index before anything
// is written, so a malformed batch is refused whole.
import { FerryError } from '../errors.ts';
import { copyInto } from './copy.ts';

export const PAGE_BATCH_VERSION = 1;

export interface PageBatch {
  indices: Uint32Array;
  zero: Uint32Array;
  /** n × pageSize bytes. */
  data: Uint8Array;
}

/** The batch's head: counts and indices. */
function encodeHead(n: number, indices: readonly number[], zero: readonly number[], extra: number): Buffer {
  const z = zero.length;
  const out = Buffer.allocUnsafe(8 + 4 * (n + z) + extra);
  out.writeUInt32LE(n, 0);
  out.writeUInt32LE(z, 4);
  let o = 8;
  for (const i of indices) { out.writeUInt32LE(i, o); o += 4; }
  for (const i of zero) { out.writeUInt32LE(i, o); o += 4; }
  return out;
}

/** Calls fn(first, count) for each run of consecutive indices (pages adjacent in memory: one copy each). */
function forRuns(indices: ArrayLike<number>, fn: (k: number, first: number, count: number) => void): void {
  const n = indices.length;
  for (let k = 0; k < n;) {
    const first = indices[k]!;
    let c = 1;
    while (k + c < n && indices[k + c] === first + c) c++;
    fn(k, first, c);
    k += c;
  }
}

/** Encode pages read from `memory` (copied now: the memory may change after). */
export function encodePageBatch(memory: Uint8Array, pageSize: number, indices: readonly number[], zero: readonly number[] = []): Buffer {
  const n = indices.length;
  const out = encodeHead(n, indices, zero, n * pageSize);
  const base = 8 + 4 * (n + zero.length);
  forRuns(indices, (k, first, c) => { copyInto(out, base + k * pageSize, memory.subarray(first * pageSize, (first + c) * pageSize)); });
  return out;
}

/** The same batch as a list of parts whose page bytes are views of `memory`, not copies:
 *  only for a memory that does not change until the parts have been sent (a frozen process). */
export function encodePageBatchParts(memory: Uint8Array, pageSize: number, indices: readonly number[], zero: readonly number[] = []): Uint8Array[] {
  const parts: Uint8Array[] = [encodeHead(indices.length, indices, zero, 0)];
  forRuns(indices, (_k, first, c) => { parts.push(memory.subarray(first * pageSize, (first + c) * pageSize)); });
  return parts;
}

export function decodePageBatch(body: Uint8Array, pageSize: number, maxPages: number): PageBatch {
  const bad = (why: string) => new FerryError('bad-frame', `malformed page batch: ${why}`);
  if (body.length < 8) throw bad(`${body.length} bytes, shorter than its header`);
  const dv = new DataView(body.buffer, body.byteOffset, body.byteLength);
  const n = dv.getUint32(0, true), z = dv.getUint32(4, true);
  const head = 8 + 4 * (n + z);
  if (n > maxPages || z > maxPages || body.length !== head + n * pageSize)
    throw bad(`${n} pages and ${z} zero pages do not fit its ${body.length} bytes`);
  const indices = new Uint32Array(n), zero = new Uint32Array(z);
  for (let k = 0; k < n; k++) indices[k] = dv.getUint32(8 + 4 * k, true);
  for (let k = 0; k < z; k++) zero[k] = dv.getUint32(8 + 4 * (n + k), true);
  for (const i of indices) if (i >= maxPages) throw bad(`page ${i} is outside the address space (${maxPages} pages)`);
  for (const i of zero) if (i >= maxPages) throw bad(`page ${i} is outside the address space (${maxPages} pages)`);
  return { indices, zero, data: body.subarray(head) };
}

/** Write a decoded batch into memory. */
export function applyPageBatch(batch: PageBatch, memory: Uint8Array, pageSize: number): void {
  const data = batch.data;
  forRuns(batch.indices, (k, first, c) => { copyInto(memory, first * pageSize, data.subarray(k * pageSize, (k + c) * pageSize)); });
  for (const i of batch.zero) memory.fill(0, i * pageSize, (i + 1) * pageSize);
}

const ZERO = Buffer.alloc(65536);
/** Per memory: a Buffer over it, for compare() at offsets, and its words (null if not 4-aligned). */
const views = new WeakMap<Uint8Array, { buf: Buffer; words: Int32Array | null }>();

/** True if the page is all zero. A page's first or last word is almost always non-zero when
 *  the page is: read those first (a few ns), and memcmp against a zero page only when both
 *  are zero (a call into C++, ~200 ns a page: 3.5 ms of the down time per 64 MiB). */
export function isZeroPage(memory: Uint8Array, index: number, pageSize: number): boolean {
  let v = views.get(memory);
  if (!v) {
    // (Division, not shifts: a guest memory is 4 GiB, past what 32-bit shifts take.)
    const words = memory.byteOffset % 4 === 0 ? new Int32Array(memory.buffer, memory.byteOffset, Math.floor(memory.byteLength / 4)) : null;
    v = { buf: Buffer.from(memory.buffer, memory.byteOffset, memory.byteLength), words };
    views.set(memory, v);
  }
  const a = index * pageSize;
  if (v.words && (v.words[a / 4] !== 0 || v.words[(a + pageSize) / 4 - 1] !== 0)) return false;
  return ZERO.compare(v.buf, a, a + pageSize, 0, pageSize) === 0;
}

/**
 * A page batch applied as its bytes arrive (a transport body sink), without assembling
 * it first: the counts and every index are checked before any page is written, as by
 * decodePageBatch; page bytes then go straight to their place in memory. write() never
 * throws: a malformed batch stops writing and end() throws its error.
 */
export class PageBatchWriter {
  private head = new Uint8Array(8);
  private got = 0; // bytes of head, then of the index list, taken so far
  private list: Uint8Array | undefined;
  private indices: Uint32Array | undefined;
  private zero: Uint32Array | undefined;
  private run: Uint32Array | undefined; // run[k]: consecutive pages from the k-th on
  private k = 0; // the page being written
  private off = 0; // bytes of it written
  private error: FerryError | undefined;

  constructor(private readonly memory: Uint8Array, private readonly pageSize: number, private readonly maxPages: number, private readonly bodyLength: number) {}

  write(chunk: Uint8Array): void {
    if (this.error) return;
    try { this.take(chunk); } catch (e) {
      this.error = e instanceof FerryError ? e : new FerryError('bad-frame', `malformed page batch: ${(e as Error).message}`);
    }
  }

  /** The pages it carried and the pages it zeroed (after end()). */
  get carried(): { indices: Uint32Array; zero: Uint32Array } {
    return { indices: this.indices ?? new Uint32Array(0), zero: this.zero ?? new Uint32Array(0) };
  }

  /** The whole body has arrived: zero the pages to zero. Throws if the batch was malformed. */
  end(): void {
    if (!this.error && (!this.indices || this.k < this.indices.length)) this.error = new FerryError('bad-frame', 'malformed page batch: cut short');
    if (this.error) throw this.error;
    const ps = this.pageSize;
    for (const i of this.zero!) this.memory.fill(0, i * ps, (i + 1) * ps);
  }

  private take(chunk: Uint8Array): void {
    let o = 0;
    const bad = (why: string) => new FerryError('bad-frame', `malformed page batch: ${why}`);
    if (!this.list) {
      const k = Math.min(8 - this.got, chunk.length);
      this.head.set(chunk.subarray(0, k), this.got);
      this.got += k; o += k;
      if (this.got < 8) return;
      const dv = new DataView(this.head.buffer);
      const n = dv.getUint32(0, true), z = dv.getUint32(4, true);
      if (this.bodyLength < 8) throw bad(`${this.bodyLength} bytes, shorter than its header`);
      if (n > this.maxPages || z > this.maxPages || this.bodyLength !== 8 + 4 * (n + z) + n * this.pageSize)
        throw bad(`${n} pages and ${z} zero pages do not fit its ${this.bodyLength} bytes`);
      this.list = new Uint8Array(4 * (n + z));
      this.indices = new Uint32Array(n);
      this.zero = new Uint32Array(z);
      this.got = 0;
    }
    if (!this.run) {
      const k = Math.min(this.list.length - this.got, chunk.length - o);
      this.list.set(chunk.subarray(o, o + k), this.got);
      this.got += k; o += k;
      if (this.got < this.list.length) return;
      const dv = new DataView(this.list.buffer);
      const n = this.indices!.length, z = this.zero!.length;
      for (let i = 0; i < n; i++) this.indices![i] = dv.getUint32(4 * i, true);
      for (let i = 0; i < z; i++) this.zero![i] = dv.getUint32(4 * (n + i), true);
      for (const i of this.indices!) if (i >= this.maxPages) throw bad(`page ${i} is outside the address space (${this.maxPages} pages)`);
      for (const i of this.zero!) if (i >= this.maxPages) throw bad(`page ${i} is outside the address space (${this.maxPages} pages)`);
      const run = new Uint32Array(n);
      for (let i = n - 1; i >= 0; i--) run[i] = i + 1 < n && this.indices![i + 1] === this.indices![i]! + 1 ? run[i + 1]! + 1 : 1;
      this.run = run;
    }
    const ps = this.pageSize, idx = this.indices!, run = this.run!;
    while (o < chunk.length) {
      if (this.k >= idx.length) throw bad('longer than its pages');
      const n = Math.min(run[this.k]! * ps - this.off, chunk.length - o);
      copyInto(this.memory, idx[this.k]! * ps + this.off, chunk.subarray(o, o + n));
      o += n;
      this.advance(n);
    }
  }

  /** Where the batch's next bytes go, if they are page bytes: a view of the memory up to the
   *  end of the current run of consecutive pages (at most `max` bytes), for the socket to read
   *  into (socket-input.ts: no copy); null while the head and index list are still to come. */
  place(max: number): Uint8Array | null {
    if (this.error || !this.run || this.k >= this.indices!.length) return null;
    const ps = this.pageSize;
    const at = this.indices![this.k]! * ps + this.off;
    return this.memory.subarray(at, at + Math.min(this.run[this.k]! * ps - this.off, max));
  }

  /** `n` bytes arrived where place() said. */
  placed(n: number): void { this.advance(n); }

  private advance(n: number): void {
    this.off += n;
    this.k += Math.floor(this.off / this.pageSize);
    this.off %= this.pageSize;
  }
}
