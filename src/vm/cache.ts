// Prepared modules are cached on disk by the original module's content hash: the
// transform takes seconds (minutes for large programs) and its output never changes.
import { existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { sha256, TRANSFORM_VERSION, type PreparedMeta, type PreparedModule, type Variant } from './module-meta.ts';
import { deserializeError, FerryError, type SerializedError } from '../errors.ts';
import { makeDir } from '../dirs.ts';

export function cacheDir(): string {
  return process.env.FERRY_CACHE_DIR ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'ferry', 'modules');
}

export interface LoadedModule { module: WebAssembly.Module; meta: PreparedMeta; cached: boolean }

/** Transform in a child process (binaryen is heavy, the caller stays responsive, and the
 *  child's V8 flags are its own: see transform-child.mjs). One child for every variant asked. */
export function transformInChild(original: Uint8Array, variants: readonly Variant[]): Promise<PreparedModule[]> {
  return new Promise((resolve, reject) => {
    const child = fork(fileURLToPath(new URL('./transform-child.mjs', import.meta.url)), [], {
      serialization: 'advanced', execArgv: [], stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    let answered = false;
    child.once('message', (r: { ok: true; modules: PreparedModule[] } | { ok: false; error: SerializedError }) => {
      answered = true;
      if (r.ok) resolve(r.modules.map((m) => ({ bytes: new Uint8Array(m.bytes), meta: m.meta }))); else reject(deserializeError(r.error));
    });
    child.once('error', (e) => reject(new FerryError('transform-failed', `module transform: ${e.message}`, { cause: e })));
    child.once('exit', (code, signal) => {
      if (!answered) reject(new FerryError('transform-failed', `the module transform's process ended (${signal ?? `code ${code}`}) before answering`));
    });
    child.send({ original, variants });
  });
}

const entryBase = (hash: string, variant: Variant) =>
  // A native wasm-opt produces different (equally valid) bytes: its own cache entries.
  join(cacheDir(), `${hash}-t${TRANSFORM_VERSION}-${variant}${process.env.FERRY_WASM_OPT ? '-native' : ''}${process.env.FERRY_NO_FAST_PATHS === '1' ? '-nofast' : ''}`);

function readEntry(hash: string, variant: Variant): PreparedModule | null {
  const base = entryBase(hash, variant);
  if (!existsSync(`${base}.json`) || !existsSync(`${base}.wasm`)) return null;
  try {
    const meta = JSON.parse(readFileSync(`${base}.json`, 'utf8')) as PreparedMeta;
    if (meta.transformVersion === TRANSFORM_VERSION && meta.originalHash === hash) return { bytes: readFileSync(`${base}.wasm`), meta };
  } catch { /* a damaged entry: rebuild it */ }
  return null;
}

/** Write a cache file whole or not at all (a temp file renamed into place); false if it could
 *  not be written. A read-only or full disk costs only the cache: no half-written temp file stays. */
export function putCacheFile(file: string, data: Uint8Array | string): boolean {
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`;
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, file);
    return true;
  } catch {
    try { rmSync(tmp, { force: true }); } catch { /* read-only */ }
    return false;
  }
}

function writeEntry(hash: string, variant: Variant, prepared: PreparedModule): void {
  const base = entryBase(hash, variant);
  try { makeDir(cacheDir(), 'compile cache'); } catch { return; }
  // json last: its presence marks a complete entry.
  if (putCacheFile(`${base}.wasm`, prepared.bytes)) putCacheFile(`${base}.json`, JSON.stringify(prepared.meta));
}

/** The prepared modules of these variants, from the cache or freshly transformed (the missing
 *  ones together: binaryen loads once). */
export async function prepareVariants(original: Uint8Array, variants: readonly Variant[], hash = sha256(original), onTransform?: () => void): Promise<(PreparedModule & { cached: boolean })[]> {
  const found = variants.map((v) => readEntry(hash, v));
  const missing = variants.filter((_, i) => !found[i]);
  if (!missing.length) return found.map((p) => ({ ...p!, cached: true }));
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
  const made = await transformInChild(original, missing);
  missing.forEach((v, i) => writeEntry(hash, v, made[i]!));
  let next = 0; // made is in the order of missing, which keeps the order of variants
  return found.map((p) => (p ? { ...p, cached: true } : { ...made[next++]!, cached: false }));
}

/** The prepared module for these original bytes, from the cache or freshly transformed. */
export async function preparedBytes(original: Uint8Array, variant: Variant = 'tracked', hash = sha256(original), onTransform?: () => void): Promise<PreparedModule & { cached: boolean }> {
  return (await prepareVariants(original, [variant], hash, onTransform))[0]!;
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
