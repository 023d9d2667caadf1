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

export const PAGE_BATCH_VERSION = 1;

export interface PageBatch {
  indices: Uint32Array;
  zero: Uint32Array;
  /** n × pageSize bytes. */
  data: Uint8Array;
}

/** Encode pages read from `memory` (copied now: the memory may change after). */
export function encodePageBatch(memory: Uint8Array, pageSize: number, indices: readonly number[], zero: readonly number[] = []): Buffer {
  const n = indices.length, z = zero.length;
  const head = 8 + 4 * (n + z);
  const out = Buffer.allocUnsafe(head + n * pageSize);
  out.writeUInt32LE(n, 0);
  out.writeUInt32LE(z, 4);
  let o = 8;
  for (const i of indices) { out.writeUInt32LE(i, o); o += 4; }
  for (const i of zero) { out.writeUInt32LE(i, o); o += 4; }
  for (const i of indices) {
    const a = i * pageSize;
    out.set(memory.subarray(a, a + pageSize), o);
    o += pageSize;
  }
  return out;
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
  for (let k = 0; k < batch.indices.length; k++) {
    const a = batch.indices[k]! * pageSize;
    memory.set(batch.data.subarray(k * pageSize, (k + 1) * pageSize), a);
  }
  for (const i of batch.zero) memory.fill(0, i * pageSize, (i + 1) * pageSize);
}

const ZERO = new Uint8Array(65536);

/** True if the page is all zero (memcmp against a zero page: fast). */
export function isZeroPage(memory: Uint8Array, index: number, pageSize: number): boolean {
  const a = index * pageSize;
  return Buffer.from(memory.buffer, memory.byteOffset + a, pageSize).equals(ZERO.subarray(0, pageSize));
}
