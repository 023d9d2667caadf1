// Prepared modules are cached on disk by the original module's content hash: the
// transform takes seconds (minutes for large programs) and its output never changes.
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { sha256, TRANSFORM_VERSION, type PreparedMeta, type PreparedModule, type Variant } from './module-meta.ts';
import { deserializeError, FerryError, type SerializedError } from '../errors.ts';

export function cacheDir(): string {
  return process.env.FERRY_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'ferry', 'modules');
}

export interface LoadedModule { module: WebAssembly.Module; meta: PreparedMeta; cached: boolean }

/** Transform in a worker thread (binaryen is heavy, and the caller stays responsive). */
export function transformInThread(original: Uint8Array, variant: Variant): Promise<PreparedModule> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL('./transform-entry.mjs', import.meta.url), { resourceLimits: { stackSizeMb: 64 } });
    w.once('message', (r: { ok: true; bytes: Uint8Array; meta: PreparedMeta } | { ok: false; error: SerializedError }) => {
      void w.terminate();
      if (r.ok) resolve({ bytes: r.bytes, meta: r.meta }); else reject(deserializeError(r.error));
    });
    w.once('error', reject);
    w.postMessage({ original, variant });
  });
}

/** The prepared module for these original bytes, from the cache or freshly transformed. */
export async function preparedBytes(original: Uint8Array, variant: Variant = 'tracked', hash = sha256(original), onTransform?: () => void): Promise<PreparedModule & { cached: boolean }> {
  const dir = cacheDir();
  // A native wasm-opt produces different (equally valid) bytes: its own cache entries.
  const base = join(dir, `${hash}-t${TRANSFORM_VERSION}-${variant}${process.env.FERRY_WASM_OPT ? '-native' : ''}`);
  if (existsSync(`${base}.json`) && existsSync(`${base}.wasm`)) {
    try {
      const meta = JSON.parse(readFileSync(`${base}.json`, 'utf8')) as PreparedMeta;
      if (meta.transformVersion === TRANSFORM_VERSION && meta.originalHash === hash)
        return { bytes: readFileSync(`${base}.wasm`), meta, cached: true };
    } catch { /* a damaged entry: rebuild it */ }
  }
  // Validate without generating code (ferry compiles eagerly); only an invalid module
  // is compiled, because V8 then names what is wrong and binaryen does not.
  if (!WebAssembly.validate(original as Uint8Array<ArrayBuffer>)) {
    try {
      await WebAssembly.compile(original as Uint8Array<ArrayBuffer>);
    } catch (e) {
      throw new FerryError('invalid-module', `not a valid WebAssembly module: ${(e as Error).message.replace(/^WebAssembly\.\w+\(\): /, '')}`);
    }
  }
  onTransform?.();
  const prepared = await transformInThread(original, variant);
  try {
    mkdirSync(dir, { recursive: true });
    const tmp = `${base}.${process.pid}.${Date.now()}.tmp`;
    writeFileSync(`${tmp}.wasm`, prepared.bytes);
    writeFileSync(`${tmp}.json`, JSON.stringify(prepared.meta));
    renameSync(`${tmp}.wasm`, `${base}.wasm`);
    renameSync(`${tmp}.json`, `${base}.json`); // json last: its presence marks a complete entry
  } catch { /* a read-only cache is not an error */ }
  return { ...prepared, cached: false };
}

/** Compiled modules of this OS process, by hash and variant: a node compiles each program once. */
const compiled = new Map<string, Promise<LoadedModule>>();
const COMPILED_KEEP = 48; // three variants of a node's programs: a cluster moving a dozen programs keeps them all

export async function loadPrepared(original: Uint8Array, variant: Variant = 'tracked', hash?: string, onTransform?: () => void): Promise<LoadedModule> {
  const h = hash ?? sha256(original);
  const key = `${h}-${variant}`;
  let p = compiled.get(key);
  if (!p) {
    p = (async () => {
      const prep = await preparedBytes(original, variant, h, onTransform);
      return { module: await WebAssembly.compile(prep.bytes as Uint8Array<ArrayBuffer>), meta: prep.meta, cached: prep.cached };
    })();
    compiled.set(key, p);
    p.catch(() => compiled.delete(key));
    if (compiled.size > COMPILED_KEEP) compiled.delete(compiled.keys().next().value!);
  } else {
    compiled.delete(key); // most recently used last
    compiled.set(key, p);
  }
  return p;
}
