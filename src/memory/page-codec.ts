// Compression of page batches on the wire (`ferry migrate --compress`).
//
//   deflate  node:zlib (raw deflate, level 1: the fast end; 200 MB/s on sparse pages,
//            8 MB/s on random data on this loaded 2-core machine)
//   lz4      lz4-napi (LZ4 block format, prebuilt binaries in the npm package; several
//            times faster than deflate, for links faster than deflate can feed)
//
// The source compresses each batch body off the main thread; a batch that does not
// shrink goes as it is (a per-batch header flag says which). Compression stays on
// while it pays: a batch that shrinks by less than a fifth turns it off for the
// next SKIP_AFTER_POOR batches, then it is tried again (random data, RMA's: it
// would only cost time). Timing each batch's compression against its wire time
// was tried and dropped: on a loaded machine one late thread-pool answer turned
// compression off for data it shrank 100-fold.
// The destination
// decompresses synchronously (so batches, the commit and MIG_DONE keep their order),
// after checking the claimed size: a malformed or oversized batch is refused whole
// before anything is written.
import { createRequire } from 'node:module';
import { deflateRaw, inflateRawSync, constants } from 'node:zlib';
import { FerryError } from '../errors.ts';

export const CODECS = ['none', 'deflate', 'lz4'] as const;
export type Codec = (typeof CODECS)[number];

/** Largest raw batch a compressed frame may claim (a batch is at most a frame). */
export const MAX_RAW_BATCH = 16 * 1024 * 1024;

interface Lz4 { compress(b: Buffer): Promise<Buffer>; uncompressSync(b: Buffer): Buffer }
let lz4: Lz4 | undefined;

export function isCodec(v: unknown): v is Codec { return typeof v === 'string' && (CODECS as readonly string[]).includes(v); }

/** Ready a codec (loads its library): call before compress/decompress. Throws if unavailable. */
export function loadCodec(codec: Codec): void {
  if (codec !== 'lz4' || lz4) return;
  try { lz4 = createRequire(import.meta.url)('lz4-napi') as Lz4; } catch (e) {
    throw new FerryError('unsupported', `compression lz4 is not available on this node (lz4-napi: ${(e as Error).message})`);
  }
}

/** A batch whose compressed size is above this share of its raw size is not worth it. */
export const POOR_RATIO = 0.8;
export const SKIP_AFTER_POOR = 15;

/** The source's side: compresses batches while that pays (see above). */
export class BatchCompressor {
  private skip = 0;
  /** Batches sent as they are because compression did not pay. */
  skipped = 0;
  constructor(readonly codec: Codec) {}

  /** The body compressed, or null: send it as it is. */
  async compress(body: Buffer): Promise<Buffer | null> {
    if (this.codec === 'none') return null;
    if (this.skip > 0) { this.skip--; this.skipped++; return null; }
    const z = await compressBatch(this.codec, body);
    if (!z || z.length > body.length * POOR_RATIO) this.skip = SKIP_AFTER_POOR;
    return z;
  }
}

/** The batch body compressed (null: it did not shrink; send it as it is). */
export async function compressBatch(codec: Codec, body: Buffer): Promise<Buffer | null> {
  let out: Buffer;
  if (codec === 'deflate') out = await new Promise<Buffer>((res, rej) => deflateRaw(body, { level: constants.Z_BEST_SPEED }, (e, r) => (e ? rej(e) : res(r))));
  else if (codec === 'lz4') { loadCodec('lz4'); out = await lz4!.compress(body); } else return null;
  return out.length < body.length ? out : null;
}

/** A compressed batch body back to `rawLength` bytes; a FerryError 'bad-frame' naming the problem otherwise. */
export function decompressBatch(codec: Codec, body: Uint8Array, rawLength: number): Buffer {
  const bad = (why: string) => new FerryError('bad-frame', `malformed compressed page batch (${codec}): ${why}`);
  if (!Number.isInteger(rawLength) || rawLength < 8 || rawLength > MAX_RAW_BATCH) throw bad(`claims ${rawLength} bytes (8 to ${MAX_RAW_BATCH})`);
  const b = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  let out: Buffer;
  try {
    if (codec === 'deflate') out = inflateRawSync(b, { maxOutputLength: rawLength });
    else if (codec === 'lz4') {
      // The block starts with its raw size (lz4_flex): check it before the library allocates it.
      if (b.length < 4 || b.readUInt32LE(0) !== rawLength) throw bad(`its size prefix does not match the ${rawLength} bytes announced`);
      loadCodec('lz4');
      out = lz4!.uncompressSync(b);
    } else throw bad('no such codec');
  } catch (e) {
    if (e instanceof FerryError) throw e;
    throw bad((e as Error).message);
  }
  if (out.length !== rawLength) throw bad(`${out.length} bytes, not the ${rawLength} announced`);
  return out;
}
