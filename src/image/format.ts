/**
 * Ferry process image: binary layout (format version 1).
 *
 * Modeled on CRIU images: a magic number, a format version, typed sections each
 * with its own version, per-section checksums, and a trailer so that truncation
 * and corruption of the section table are detected. All integers little-endian.
 * Used for checkpoint files and for the migration wire.
 *
 *   file header (16 bytes)
 *     0  magic          8 bytes  "FERRYIMG"
 *     8  format version u16      FORMAT_VERSION (1). A newer version is refused.
 *    10  flags          u16      bits 0-7: incompatible features (a decoder refuses
 *                                any bit it does not know); bits 8-15: compatible
 *                                features (ignored if unknown). None defined in v1.
 *    12  section count  u32      number of sections that follow, END included
 *
 *   section (repeated `section count` times), header 20 bytes then payload
 *     0  type           u16      SectionType (1 meta, 2 module, 3 memory,
 *                                4 execution, 5 wasi, 0xFFFF end); others are
 *                                extensions
 *     2  version        u16      version of this section's payload layout; a
 *                                known section with a newer version is refused
 *     4  flags          u16      bit 0: required. An unknown section that is
 *                                required is refused; an unknown optional one
 *                                is skipped (and kept raw in `extraSections`).
 *     6  reserved       u16      0
 *     8  length         u64      payload length in bytes
 *    16  crc32          u32      zlib crc32 of the payload
 *    20  payload        `length` bytes
 *
 *   END section (must be the last one; type 0xFFFF, version 1, required), payload 12 bytes
 *     0  file length    u64      total image length in bytes, END included
 *     8  table crc32    u32      crc32 over: the file header (16 bytes), the 20-byte
 *                                headers of every section before END, and the first
 *                                16 bytes of END's own header (type..length).
 *   Nothing may follow END.
 *
 * Payloads (all section versions 1):
 *   meta (1)       UTF-8 JSON: ImageMeta
 *   module (2)     u32 n, n bytes UTF-8 JSON {sha256, size, path, embedded},
 *                  then the original (unprepared) wasm bytes if embedded
 *   execution (4)  u32 n, n bytes UTF-8 JSON {globals, asyncifyDataAddr, extra},
 *                  then the asyncify data bytes
 *   wasi (5)       UTF-8 JSON: WasiState (src/wasi/types.ts)
 *   memory (3)
 *     0  pageSize     u32   4096, 16384 or 65536 (ferry pages, not wasm pages)
 *     4  flags        u32   0 (reserved)
 *     8  logicalBytes u64   multiple of 65536; the memory covers [0, logicalBytes)
 *    16  totalPages   u32   logicalBytes / pageSize
 *    20  storedPages  u32   pages whose bytes follow (non-zero pages)
 *    24  bitmap       ceil(totalPages / 8) bytes, LSB first: page i is stored iff
 *                     bitmap[i >> 3] & (1 << (i & 7)); pages not stored are all zero
 *     .  pages        storedPages * pageSize bytes, stored pages in ascending index order
 *
 * Decoding order: magic, format version and flags, then a bounds-only walk of the
 * section table (truncation), then END (table crc, file length), then each section
 * (required/unknown, version, payload crc, contents).
 */

import zlib from 'node:zlib';

export const MAGIC = Buffer.from('FERRYIMG', 'latin1');
export const FORMAT_VERSION = 1;
export const FILE_HEADER_SIZE = 16;
export const SECTION_HEADER_SIZE = 20;
export const END_PAYLOAD_SIZE = 12;

/** Header flag bits 0-7 are incompatible features; none are defined in version 1. */
export const KNOWN_INCOMPAT_FLAGS = 0;
export const INCOMPAT_FLAGS_MASK = 0x00ff;

export const SECTION_FLAG_REQUIRED = 0x0001;

export const SectionType = {
  meta: 1,
  module: 2,
  memory: 3,
  execution: 4,
  wasi: 5,
  end: 0xffff,
} as const;
export type KnownSectionName = keyof typeof SectionType;

/** Highest payload version of each known section that this ferry understands. */
export const SECTION_VERSIONS: Record<number, number> = {
  [SectionType.meta]: 1,
  [SectionType.module]: 1,
  [SectionType.memory]: 1,
  [SectionType.execution]: 1,
  [SectionType.wasi]: 1,
  [SectionType.end]: 1,
};

const SECTION_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(SectionType).map(([name, type]) => [type, name]),
);

export function sectionName(type: number): string {
  return SECTION_NAMES[type] ?? `type ${type}`;
}

export type ImageErrorCode =
  | 'bad-magic'
  | 'truncated'
  | 'checksum'
  | 'version'
  | 'unknown-section'
  | 'missing-section'
  | 'malformed'
  | 'too-large'
  | 'invalid-input';

/** Any problem with an image: one line naming the problem. */
export class ImageError extends Error {
  override name = 'ImageError';
  constructor(readonly code: ImageErrorCode, message: string) {
    super(message);
  }
}

/** Page sizes ferry accepts (4, 16 and 64 KiB). */
export const PAGE_SIZES = [4096, 16384, 65536] as const;
export const DEFAULT_PAGE_SIZE = 4096;
export const WASM_PAGE = 65536;

export function crc32(data: Uint8Array, prev = 0): number {
  return zlib.crc32(data, prev) >>> 0;
}

export interface SectionHeader {
  index: number;
  type: number;
  version: number;
  flags: number;
  reserved: number;
  length: number;
  crc: number;
  /** Offset of the section header in the image. */
  headerOffset: number;
  /** Offset of the payload in the image. */
  payloadOffset: number;
}

export function writeFileHeader(sectionCount: number, flags = 0): Buffer {
  const b = Buffer.alloc(FILE_HEADER_SIZE);
  MAGIC.copy(b, 0);
  b.writeUInt16LE(FORMAT_VERSION, 8);
  b.writeUInt16LE(flags, 10);
  b.writeUInt32LE(sectionCount >>> 0, 12);
  return b;
}

export function writeSectionHeader(
  type: number, version: number, flags: number, length: number, crc: number,
): Buffer {
  const b = Buffer.alloc(SECTION_HEADER_SIZE);
  b.writeUInt16LE(type, 0);
  b.writeUInt16LE(version, 2);
  b.writeUInt16LE(flags, 4);
  b.writeUInt16LE(0, 6);
  b.writeBigUInt64LE(BigInt(length), 8);
  b.writeUInt32LE(crc >>> 0, 16);
  return b;
}
