// What a prepared (migratable) module is, without the transform itself: the runtime
// and the image code need these, and must not load binaryen (14 MB) to get them.
import { createHash } from 'node:crypto';

/** Bump when the transform's output changes: it keys the on-disk cache. */
export const TRANSFORM_VERSION = 11;

/** 'plain': no dirty marks, no present checks (steady state); 'tracked': dirty marks
 *  (pre-copy); 'faulting': dirty marks and present checks (post-copy, demand paging).
 *  All three share their asyncify frames: a process captured in one resumes in another. */
export type Variant = 'plain' | 'tracked' | 'faulting';
/** Every variant a process may run in (see prepare.ts). */
export const VARIANT_NAMES: readonly Variant[] = ['plain', 'tracked', 'faulting'];
export type ValType = 'i32' | 'i64' | 'f32' | 'f64';

export interface PreparedMeta {
  transformVersion: number;
  originalHash: string;
  variant: Variant;
  /** Logical memory size at start and the most it may grow to, in wasm pages. */
  initialPages: number;
  maxPages: number;
  /** [start, end) of every data segment the original module wrote at instantiation; the
   *  prepared module writes them on a fresh start only (EXPORT_INIT_DATA). */
  dataRanges: [number, number][];
  /** Captured mutable globals, in export order. */
  globals: { export: string; name: string; type: ValType }[];
  hasStartFunction: boolean;
  stats: { functions: number; loopPolls: number; entryPolls: number; writes: number; reads: number; bulk: number; fastPaths?: number };
}

export interface PreparedModule { bytes: Uint8Array; meta: PreparedMeta }

export const WASI_MODULE = 'wasi_snapshot_preview1';

export function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
