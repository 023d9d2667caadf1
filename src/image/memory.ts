// The memory section: guest memory over [0, logicalBytes) cut into ferry pages,
// all-zero pages elided (a presence bitmap + the stored pages' bytes).

import {
  ImageError, PAGE_SIZES, WASM_PAGE, crc32,
} from './format.ts';
import type { MemoryInput } from './types.ts';
import { copyInto } from '../memory/copy.ts';

/** Memory header: pageSize u32, flags u32, logicalBytes u64, totalPages u32, storedPages u32. */
export const MEMORY_HEADER_SIZE = 24;
/** Largest single chunk handed out by the encoder (pages are referenced, not copied). */
const MAX_CHUNK = 256 * 1024 * 1024;
/** Wasm32 memories are at most 4 GiB. */
export const MAX_LOGICAL_BYTES = 2 ** 32;

const POPCOUNT = new Uint8Array(256);
for (let i = 1; i < 256; i++) POPCOUNT[i] = (i & 1) + POPCOUNT[i >> 1]!;

const zeroPages = new Map<number, Buffer>();
function zeroPage(size: number): Buffer {
  let z = zeroPages.get(size);
  if (!z) { z = Buffer.alloc(size); zeroPages.set(size, z); }
  return z;
}

export function isValidPageSize(n: unknown): n is number {
  return typeof n === 'number' && (PAGE_SIZES as readonly number[]).includes(n);
}

export interface MemoryPage {
  index: number;
  /** Guest address of the page's first byte. */
  offset: number;
  bytes: Uint8Array;
}

export interface MemoryRun {
  firstPage: number;
  pageCount: number;
  /** Guest address of the run's first byte. */
  offset: number;
  /** The run's bytes (pageCount * pageSize), a view, not a copy. */
  bytes: Uint8Array;
}

export interface PageCounts { total: number; zero: number; stored: number }

/** A decoded memory section. Stored pages are views into the image buffer (no copies). */
export class MemoryImage {
  readonly totalPages: number;
  readonly storedPages: number;
  private rank: Uint32Array | null = null;

  constructor(
    readonly pageSize: number,
    readonly logicalBytes: number,
    /** Presence bitmap, LSB first: bit i set = page i stored (non-zero). */
    readonly bitmap: Uint8Array,
    /** The stored pages' bytes, ascending page order, storedPages * pageSize bytes. */
    readonly data: Uint8Array,
  ) {
    this.totalPages = logicalBytes / pageSize;
    this.storedPages = data.length / pageSize;
  }

  get zeroPages(): number { return this.totalPages - this.storedPages; }
  get counts(): PageCounts {
    return { total: this.totalPages, zero: this.zeroPages, stored: this.storedPages };
  }
  /** Bytes of page data stored in the image. */
  get storedBytes(): number { return this.data.length; }

  isStored(index: number): boolean {
    if (!(index >= 0 && index < this.totalPages)) return false;
    return (this.bitmap[index >>> 3]! & (1 << (index & 7))) !== 0;
  }

  /** The page's bytes (a view), or null if it is an all-zero page. */
  page(index: number): Uint8Array | null {
    if (!(Number.isInteger(index) && index >= 0 && index < this.totalPages)) {
      throw new RangeError(`page ${index} is outside the image's ${this.totalPages} pages`);
    }
    if (!this.isStored(index)) return null;
    if (!this.rank) {
      const r = new Uint32Array(this.bitmap.length);
      let n = 0;
      for (let i = 0; i < this.bitmap.length; i++) { r[i] = n; n += POPCOUNT[this.bitmap[i]!]!; }
      this.rank = r;
    }
    const byte = index >>> 3;
    const slot = this.rank[byte]! + POPCOUNT[this.bitmap[byte]! & ((1 << (index & 7)) - 1)]!;
    return this.data.subarray(slot * this.pageSize, (slot + 1) * this.pageSize);
  }

  /** Stored (non-zero) pages, ascending. */
  *pages(): IterableIterator<MemoryPage> {
    const ps = this.pageSize;
    let slot = 0;
    for (let i = 0; i < this.totalPages; i++) {
      if ((this.bitmap[i >>> 3]! & (1 << (i & 7))) === 0) continue;
      yield { index: i, offset: i * ps, bytes: this.data.subarray(slot * ps, (slot + 1) * ps) };
      slot++;
    }
  }

  /** Maximal runs of consecutive stored pages, ascending (each one memcpy). */
  *runs(): IterableIterator<MemoryRun> {
    const ps = this.pageSize;
    const bm = this.bitmap;
    const total = this.totalPages;
    let slot = 0;
    let i = 0;
    while (i < total) {
      // skip zero pages, a byte at a time where possible
      if ((i & 7) === 0 && bm[i >>> 3] === 0) { i += 8; continue; }
      if ((bm[i >>> 3]! & (1 << (i & 7))) === 0) { i++; continue; }
      const first = i;
      while (i < total) {
        if ((i & 7) === 0 && bm[i >>> 3] === 0xff && i + 8 <= total) { i += 8; continue; }
        if ((bm[i >>> 3]! & (1 << (i & 7))) === 0) break;
        i++;
      }
      const n = i - first;
      yield {
        firstPage: first, pageCount: n, offset: first * ps,
        bytes: this.data.subarray(slot * ps, (slot + n) * ps),
      };
      slot += n;
    }
  }

  /**
   * Write the memory into target[0, logicalBytes). Zero pages are zero-filled unless
   * zeroFill is false (only safe if target is known to be all zero there: note that
   * instantiating a module writes its data segments).
   */
  applyTo(target: Uint8Array, opts: { zeroFill?: boolean } = {}): void {
    const zeroFill = opts.zeroFill ?? true;
    if (target.length < this.logicalBytes) {
      throw new RangeError(
        `target memory has ${target.length} bytes, the image needs ${this.logicalBytes}`);
    }
    let pos = 0;
    for (const run of this.runs()) {
      if (zeroFill && run.offset > pos) target.fill(0, pos, run.offset);
      copyInto(target, run.offset, run.bytes);
      pos = run.offset + run.bytes.length;
    }
    if (zeroFill && this.logicalBytes > pos) target.fill(0, pos, this.logicalBytes);
  }

  /** A full copy of [0, logicalBytes) (for tests and small memories). */
  toBytes(): Uint8Array {
    const out = new Uint8Array(this.logicalBytes);
    this.applyTo(out, { zeroFill: false });
    return out;
  }
}

export interface EncodedSection {
  chunks: Uint8Array[];
  length: number;
  crc: number;
}

function memoryHeader(pageSize: number, logicalBytes: number, total: number, stored: number): Buffer {
  const h = Buffer.alloc(MEMORY_HEADER_SIZE);
  h.writeUInt32LE(pageSize, 0);
  h.writeUInt32LE(0, 4);
  h.writeBigUInt64LE(BigInt(logicalBytes), 8);
  h.writeUInt32LE(total, 16);
  h.writeUInt32LE(stored, 20);
  return h;
}

function pushSplit(chunks: Uint8Array[], b: Uint8Array): void {
  for (let o = 0; o < b.length; o += MAX_CHUNK) {
    chunks.push(o === 0 && b.length <= MAX_CHUNK ? b : b.subarray(o, Math.min(b.length, o + MAX_CHUNK)));
  }
}

function finish(header: Buffer, bitmap: Uint8Array, pageChunks: Uint8Array[]): EncodedSection {
  const chunks: Uint8Array[] = [header, bitmap, ...pageChunks];
  let crc = 0;
  let length = 0;
  for (const c of chunks) { crc = crc32(c, crc); length += c.length; }
  return { chunks, length, crc };
}

/** Encode raw guest memory: zero pages detected with memcmp, stored pages referenced. */
export function encodeMemory(input: MemoryInput, pageSize: number): EncodedSection {
  const { bytes, logicalBytes } = input;
  if (!isValidPageSize(pageSize)) {
    throw new ImageError('invalid-input', `page size ${pageSize} is not one of ${PAGE_SIZES.join(', ')}`);
  }
  if (!(bytes instanceof Uint8Array)) {
    throw new ImageError('invalid-input', 'memory.bytes must be a Uint8Array');
  }
  if (!(Number.isInteger(logicalBytes) && logicalBytes >= 0 && logicalBytes % WASM_PAGE === 0
    && logicalBytes <= MAX_LOGICAL_BYTES)) {
    throw new ImageError('invalid-input',
      `memory logicalBytes ${logicalBytes} is not a multiple of 65536 in [0, 4 GiB]`);
  }
  if (logicalBytes > bytes.length) {
    throw new ImageError('invalid-input',
      `memory logicalBytes ${logicalBytes} exceeds the memory view's ${bytes.length} bytes`);
  }
  const total = logicalBytes / pageSize;
  const bitmap = Buffer.alloc(Math.ceil(total / 8));
  // one Buffer view over [0, logicalBytes): no copy; compare() takes offsets, so no
  // per-page objects either
  const mem = Buffer.from(bytes.buffer, bytes.byteOffset, logicalBytes);
  const zero = zeroPage(pageSize);
  const pageChunks: Uint8Array[] = [];
  let stored = 0;
  let runStart = -1;
  for (let i = 0, off = 0; i < total; i++, off += pageSize) {
    if (zero.compare(mem, off, off + pageSize) === 0) {
      if (runStart >= 0) { pushSplit(pageChunks, mem.subarray(runStart, off)); runStart = -1; }
    } else {
      bitmap[i >>> 3] |= 1 << (i & 7);
      stored++;
      if (runStart < 0) runStart = off;
    }
  }
  if (runStart >= 0) pushSplit(pageChunks, mem.subarray(runStart, logicalBytes));
  return finish(memoryHeader(pageSize, logicalBytes, total, stored), bitmap, pageChunks);
}

/** Re-encode a decoded memory image (no rescan). */
export function encodeMemoryImage(m: MemoryImage): EncodedSection {
  const pageChunks: Uint8Array[] = [];
  if (m.data.length > 0) pushSplit(pageChunks, m.data);
  return finish(memoryHeader(m.pageSize, m.logicalBytes, m.totalPages, m.storedPages), m.bitmap, pageChunks);
}

/** Decode a memory payload whose crc has already been checked. */
export function decodeMemory(payload: Uint8Array, where: string): MemoryImage {
  const bad = (why: string): never => {
    throw new ImageError('malformed', `${where} is malformed: ${why}`);
  };
  if (payload.length < MEMORY_HEADER_SIZE) bad(`${payload.length} bytes, the header alone needs ${MEMORY_HEADER_SIZE}`);
  const dv = new DataView(payload.buffer, payload.byteOffset, MEMORY_HEADER_SIZE);
  const pageSize = dv.getUint32(0, true);
  const flags = dv.getUint32(4, true);
  const logicalBig = dv.getBigUint64(8, true);
  const total = dv.getUint32(16, true);
  const stored = dv.getUint32(20, true);
  if (!isValidPageSize(pageSize)) bad(`page size ${pageSize} is not one of ${PAGE_SIZES.join(', ')}`);
  if (flags !== 0) bad(`unknown flags 0x${flags.toString(16)}`);
  if (logicalBig > BigInt(MAX_LOGICAL_BYTES) || logicalBig % BigInt(WASM_PAGE) !== 0n) {
    bad(`logical size ${logicalBig} is not a multiple of 65536 in [0, 4 GiB]`);
  }
  const logicalBytes = Number(logicalBig);
  if (total !== logicalBytes / pageSize) bad(`${total} pages do not cover ${logicalBytes} bytes of ${pageSize}-byte pages`);
  if (stored > total) bad(`${stored} stored pages out of ${total}`);
  const bitmapLen = Math.ceil(total / 8);
  const expected = MEMORY_HEADER_SIZE + bitmapLen + stored * pageSize;
  if (payload.length !== expected) {
    bad(`${payload.length} bytes where ${total} pages (${stored} stored) need ${expected}`);
  }
  const bitmap = payload.subarray(MEMORY_HEADER_SIZE, MEMORY_HEADER_SIZE + bitmapLen);
  let count = 0;
  for (let i = 0; i < bitmapLen; i++) count += POPCOUNT[bitmap[i]!]!;
  if (count !== stored) bad(`the bitmap marks ${count} pages stored, the header says ${stored}`);
  if (total % 8 !== 0 && (bitmap[bitmapLen - 1]! >>> (total % 8)) !== 0) bad('bitmap bits set past the last page');
  const data = payload.subarray(MEMORY_HEADER_SIZE + bitmapLen);
  return new MemoryImage(pageSize, logicalBytes, bitmap, data);
}
