// Between a frozen process and a process image: build an image from a capture, and
// resume a process from an image (in a fresh worker, a fresh instance, a fresh memory).
import { readFileSync } from 'node:fs';
import { ASYNCIFY_DATA, WASM_PAGE } from './layout.ts';
import { sha256, TRANSFORM_VERSION, type Variant } from './module-meta.ts';
import { loadPrepared, type LoadedModule } from './cache.ts';
import { newGuestMemory, WasmProcess, type Captured, type ProcessOptions } from './process.ts';
import type { Json, ProcessImage, ProcessImageInput } from '../image/types.ts';
import { FerryError } from '../errors.ts';
import { showHead } from '../image/index.ts';

/** Every WebAssembly module begins with these 4 bytes. */
const WASM_MAGIC = Buffer.from('\0asm', 'latin1');

/** The program a process runs: where it came from and its original bytes. */
export interface Program { path: string; bytes: Uint8Array; hash: string }

export function loadProgram(path: string): Program {
  let bytes: Uint8Array;
  try { bytes = readFileSync(path); } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FerryError('not-found', code === 'ENOENT' ? `program ${path} not found` : `cannot read program ${path}: ${(e as Error).message}`);
  }
  // The wrong file (a script, the C source, a native binary) is named here, by what it begins with.
  if (bytes.length === 0) throw new FerryError('invalid-module', `${path} is empty, not a WebAssembly module`);
  if (!WASM_MAGIC.equals(bytes.subarray(0, 4))) throw new FerryError('invalid-module', `${path} is not a WebAssembly module (it begins ${showHead(bytes)}; a module begins "\\0asm")`);
  return { path, bytes, hash: sha256(bytes) };
}

export interface ImageOptions {
  pid: string;
  node: string;
  reason: 'checkpoint' | 'migration';
  /** Carry the module bytes in the image (default true). */
  embedModule?: boolean;
  pageSize?: number;
  extra?: Record<string, Json>;
}

export function imageFromCapture(cap: Captured, program: Program, opts: ImageOptions): ProcessImageInput {
  return {
    meta: { pid: opts.pid, program: program.path, node: opts.node, reason: opts.reason, pageSize: opts.pageSize, extra: opts.extra },
    module: { sha256: program.hash, bytes: program.bytes, size: program.bytes.length, path: program.path, embedded: opts.embedModule ?? true },
    memory: { bytes: cap.memory, logicalBytes: cap.logicalBytes },
    execution: {
      globals: cap.exec.globals,
      asyncify: cap.exec.asyncify,
      asyncifyDataAddr: ASYNCIFY_DATA,
      extra: { transformVersion: TRANSFORM_VERSION },
    },
    wasi: cap.wasi,
  };
}

/** The program of an image: its embedded bytes, or the file it names (hash checked). */
export function programOfImage(img: ProcessImage, override?: string): Program {
  if (img.module.embedded && img.module.bytes && !override)
    return { path: img.meta.program, bytes: img.module.bytes, hash: img.module.sha256 };
  const path = override ?? img.module.path ?? img.meta.program;
  const p = loadProgram(path);
  if (p.hash !== img.module.sha256)
    throw new FerryError('bad-image', `image was made from a different module than ${path} (sha256 ${img.module.sha256.slice(0, 12)}..., file has ${p.hash.slice(0, 12)}...)`);
  return p;
}

export interface Resumed { proc: WasmProcess; loaded: LoadedModule; program: Program }

export async function resumeFromImage(img: ProcessImage, opts: ProcessOptions & { program?: string; variant?: Variant; loaded?: LoadedModule } = {}): Promise<Resumed> {
  checkResumable(img);
  const program = programOfImage(img, opts.program);
  const loaded = opts.loaded && opts.loaded.meta.originalHash === program.hash ? opts.loaded
    : await loadPrepared(program.bytes, opts.variant ?? 'plain', program.hash);
  const memory = newGuestMemory();
  img.memory.applyTo(new Uint8Array(memory.buffer), { zeroFill: false });
  return { proc: resumeInMemory(img, loaded, memory, opts), loaded, program };
}

/** Refuse an image this runtime cannot resume (before anything is loaded). */
export function checkResumable(img: ProcessImage): void {
  const tv = img.execution.extra.transformVersion;
  if (tv !== TRANSFORM_VERSION)
    throw new FerryError('bad-image', `image was captured by transform version ${String(tv)}; this ferry resumes version ${TRANSFORM_VERSION}`);
  if (img.execution.asyncifyDataAddr !== ASYNCIFY_DATA)
    throw new FerryError('bad-image', 'image uses a different runtime memory layout');
}

/** Resume an image's execution and WASI state over a memory that already holds its pages
 *  (a migration writes them as they arrive). */
export function resumeInMemory(img: ProcessImage, loaded: LoadedModule, memory: WebAssembly.Memory, opts: ProcessOptions = {}): WasmProcess {
  checkResumable(img);
  if (img.module.sha256 !== loaded.meta.originalHash)
    throw new FerryError('bad-image', `image is of module ${img.module.sha256.slice(0, 12)}..., not ${loaded.meta.originalHash.slice(0, 12)}...`);
  if (img.memory.logicalBytes > loaded.meta.maxPages * WASM_PAGE)
    throw new FerryError('bad-image', `image memory (${img.memory.logicalBytes} bytes) exceeds the module's maximum`);
  const names = new Set(img.execution.globals.map((g) => g.name));
  for (const g of loaded.meta.globals)
    if (!names.has(g.name)) throw new FerryError('bad-image', `image lacks global ${g.name} of the module`);
  const exec = { logicalPages: img.memory.logicalBytes / WASM_PAGE, asyncify: img.execution.asyncify, globals: img.execution.globals };
  return WasmProcess.resume(loaded, memory, exec, img.wasi, opts);
}
