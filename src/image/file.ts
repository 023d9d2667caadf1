// Image files: atomic write (temp file + fsync + rename), whole-file read.

import { constants as bufferConstants } from 'node:buffer';
import crypto from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { FerryError } from '../errors.ts';
import { decodeImage, encodeImage } from './codec.ts';
import { ImageError } from './format.ts';
import type { ProcessImage, ProcessImageInput } from './types.ts';

/** Most bytes handed to one writev call (stay well under the 2 GiB syscall limit). */
const MAX_WRITEV_BYTES = 512 * 1024 * 1024;
const MAX_WRITEV_CHUNKS = 1024;

/** Write all chunks to an open file, handling partial writes. */
export async function writeChunks(fh: fsp.FileHandle, chunks: readonly Uint8Array[]): Promise<number> {
  let total = 0;
  let i = 0;
  while (i < chunks.length) {
    const batch: Uint8Array[] = [];
    let bytes = 0;
    while (i < chunks.length && batch.length < MAX_WRITEV_CHUNKS
      && (batch.length === 0 || bytes + chunks[i]!.length <= MAX_WRITEV_BYTES)) {
      if (chunks[i]!.length > 0) { batch.push(chunks[i]!); bytes += chunks[i]!.length; }
      i++;
    }
    let pending = batch;
    let left = bytes;
    while (left > 0) {
      const { bytesWritten } = await fh.writev(pending);
      if (bytesWritten <= 0) throw new Error('writev wrote nothing');
      left -= bytesWritten;
      total += bytesWritten;
      // drop what was written
      let skip = bytesWritten;
      const rest: Uint8Array[] = [];
      for (const c of pending) {
        if (skip >= c.length) { skip -= c.length; continue; }
        rest.push(skip > 0 ? c.subarray(skip) : c);
        skip = 0;
      }
      pending = rest;
    }
  }
  return total;
}

/** Encode an image and write it atomically: a temp file beside `file`, fsync, rename. */
export async function writeImageFile(file: string, img: ProcessImageInput): Promise<number> {
  return writeImageChunks(file, encodeImage(img));
}

/** Refuse a path no image can be written to, with why, before one is made (a checkpoint
 *  would freeze its process for nothing). Says how the image will be written: a device, pipe
 *  or socket in place (/dev/stdout; a temp file and rename would replace the special file with
 *  a regular one, as root even in /dev), anything else atomically. */
export async function checkImageTarget(file: string): Promise<'in-place' | 'atomic'> {
  const st = await fsp.stat(file).catch(() => null);
  if (st?.isDirectory()) throw new FerryError('bad-argument', `cannot write image ${file}: it is a directory`);
  if (st && !st.isFile()) return 'in-place';
  const dir = path.dirname(file);
  const d = await fsp.stat(dir).catch(() => null);
  if (!d?.isDirectory()) throw new FerryError('not-found', `cannot write image ${file}: there is no directory ${dir}`);
  await fsp.access(dir, fsConstants.W_OK).catch(() => { throw new FerryError('io', `cannot write image ${file}: directory ${dir} is not writable`); });
  return 'atomic';
}

/** Write already-encoded chunks atomically (a device, pipe or socket in place). Returns the
 *  bytes written; an error names the file. */
export async function writeImageChunks(file: string, chunks: readonly Uint8Array[]): Promise<number> {
  const how = await checkImageTarget(file);
  try {
    return await (how === 'in-place' ? writeInPlace(file, chunks) : writeAtomically(file, chunks));
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new FerryError(err.code === 'ENOENT' ? 'not-found' : 'io', `cannot write image ${file}: ${err.message}`, { cause: e });
  }
}

async function writeInPlace(file: string, chunks: readonly Uint8Array[]): Promise<number> {
  const fh = await fsp.open(file, 'w');
  try { return await writeChunks(fh, chunks); } finally { await fh.close(); }
}

async function writeAtomically(file: string, chunks: readonly Uint8Array[]): Promise<number> {
  const dir = path.dirname(file);
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${crypto.randomBytes(6).toString('hex')}.tmp`);
  const fh = await fsp.open(tmp, 'wx', 0o644);
  let n: number;
  try {
    n = await writeChunks(fh, chunks);
    await fh.sync();
    await fh.close();
    await fsp.rename(tmp, file);
  } catch (e) {
    await fh.close().catch(() => {});
    await fsp.rm(tmp, { force: true }).catch(() => {});
    throw e;
  }
  // make the rename durable (best effort)
  try { const d = await fsp.open(dir, 'r'); try { await d.sync(); } finally { await d.close(); } } catch { /* ignore */ }
  return n;
}

/** Read a whole image file into one buffer. */
export async function readImageBytes(file: string): Promise<Buffer> {
  const fh = await fsp.open(file, 'r');
  try {
    const { size } = await fh.stat();
    if (size > bufferConstants.MAX_LENGTH) {
      throw new ImageError('too-large', `image ${file} is ${size} bytes, more than this node can hold in one buffer (${bufferConstants.MAX_LENGTH})`);
    }
    const buf = Buffer.allocUnsafe(size);
    let off = 0;
    while (off < size) {
      const { bytesRead } = await fh.read(buf, off, Math.min(size - off, 1 << 30), off);
      if (bytesRead === 0) break; // shrank under us: decode reports truncation
      off += bytesRead;
    }
    return off === size ? buf : buf.subarray(0, off);
  } finally {
    await fh.close();
  }
}

/** Read and decode an image file. Errors name the file. */
export async function readImageFile(file: string): Promise<ProcessImage> {
  return decodeImage(await readImageBytes(file), { source: file });
}
