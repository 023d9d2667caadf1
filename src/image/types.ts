// The content of a ferry process image (see format.ts for the binary layout).

import type { WasiState } from '../wasi/types.ts';
import type { MemoryImage } from './memory.ts';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type ImageReason = 'checkpoint' | 'migration' | (string & {});

export interface ImageMeta {
  /** Location-independent pid, `<origin-node>/<n>`. */
  pid: string;
  /** The program's path as given by the user. */
  program: string;
  /** ISO 8601 time the image was made. */
  createdAt: string;
  /** The node that made the image. */
  node: string;
  reason: ImageReason;
  ferryVersion: string;
  /** Ferry page size the memory is cut into: 4096, 16384 or 65536. */
  pageSize: number;
  /** Free-form, JSON-able. */
  extra: Record<string, Json>;
}

export type ImageMetaInput =
  Omit<ImageMeta, 'createdAt' | 'ferryVersion' | 'pageSize' | 'extra'> &
  Partial<Pick<ImageMeta, 'createdAt' | 'ferryVersion' | 'pageSize' | 'extra'>>;

export interface ModuleInfo {
  /** sha256 (lowercase hex) of the ORIGINAL, unprepared wasm bytes: the module's identity. */
  sha256: string;
  /** Length of the original wasm bytes, if known. */
  size: number | null;
  /** Where the module was loaded from on the node that made the image, if known. */
  path: string | null;
  /** Whether the image carries the module bytes. If not, the restorer finds the
   *  module by sha256 (a cache) or by path, and must check its hash. */
  embedded: boolean;
  /** The original wasm bytes (when embedded; the decoder has checked their sha256). */
  bytes: Uint8Array | null;
}

export interface ModuleInput {
  /** Required unless bytes are given (then computed; if both, they must agree). */
  sha256?: string;
  bytes?: Uint8Array | null;
  size?: number | null;
  path?: string | null;
  /** Store the bytes in the image (default false). Requires bytes. */
  embedded?: boolean;
}

export type GlobalType = 'i32' | 'i64' | 'f32' | 'f64';

/** One wasm global. value: decimal for i32/i64 (signed or unsigned range),
 *  exact bits for floats as `0x` + 8 (f32) or 16 (f64) lowercase hex digits,
 *  so NaN payloads and -0 survive. See globalValueToString / parseGlobalValue. */
export interface GlobalValue {
  name: string;
  type: GlobalType;
  value: string;
}

export interface ExecutionState {
  globals: GlobalValue[];
  /** The saved asyncify stack data (only the bytes in use). */
  asyncify: Uint8Array;
  /** Guest address of the asyncify data structure / buffer. */
  asyncifyDataAddr: number;
  /** Open to extension: more small JSON-able fields. */
  extra: Record<string, Json>;
}

export type ExecutionStateInput =
  Omit<ExecutionState, 'extra'> & Partial<Pick<ExecutionState, 'extra'>>;

/** A section this ferry does not know (decoder: kept raw if optional), or one to add (encoder). */
export interface RawSection {
  type: number;
  version: number;
  required: boolean;
  payload: Uint8Array;
}

export interface MemoryInput {
  /** A view of guest memory from address 0 (may be a view onto a 4 GiB SharedArrayBuffer).
   *  Its pages are referenced, not copied, by the encoder's chunks: keep the memory
   *  unchanged until the chunks are written. */
  bytes: Uint8Array;
  /** The program's logical memory size in bytes: a multiple of 65536, at most bytes.length. */
  logicalBytes: number;
}

export interface ProcessImageInput {
  meta: ImageMetaInput;
  module: ModuleInput;
  /** Raw memory, or a decoded MemoryImage (re-encoded without rescanning). Its page
   *  size must equal meta.pageSize. */
  memory: MemoryInput | MemoryImage;
  execution: ExecutionStateInput;
  wasi: WasiState;
  /** Extension sections to add; their types must not be known section types. */
  extraSections?: RawSection[];
}

export interface SectionInfo {
  index: number;
  type: number;
  name: string;
  version: number;
  required: boolean;
  /** Payload length in bytes. */
  length: number;
}

export interface ProcessImage {
  formatVersion: number;
  meta: ImageMeta;
  module: ModuleInfo;
  memory: MemoryImage;
  execution: ExecutionState;
  wasi: WasiState;
  /** Unknown optional sections, skipped but kept raw. */
  extraSections: RawSection[];
  /** The section table as read. */
  sections: SectionInfo[];
  /** Total image length in bytes. */
  totalBytes: number;
}
